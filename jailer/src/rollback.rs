//! What the jailer created on the host, so that a failure before the VMM
//! runs leaves nothing behind.
//!
//! Undoing happens in the supervising jailer process, which never leaves
//! the host's mount namespace: the jail's bind mounts exist only in the
//! VMM's namespace, so removing the jail directory here cannot reach into
//! a bind-mounted host directory.

use std::path::PathBuf;

use crate::cgroup;

/// One thing to undo.
#[derive(Debug)]
enum Undo {
    /// A directory tree created by the jailer: removed whole.
    Tree(PathBuf),
    /// A file or empty directory created inside a directory that existed.
    Entry(PathBuf),
    /// A cgroup directory (removed with `rmdir`, retried while busy).
    CgroupDir(PathBuf),
    /// The owner of an existing path, to restore.
    Owner(PathBuf, u32, u32),
}

/// Things created so far, undone in reverse order.
#[derive(Debug, Default)]
pub struct Rollback {
    undo: Vec<Undo>,
}

impl Rollback {
    /// A directory tree that did not exist before.
    pub fn tree(&mut self, path: PathBuf) {
        self.undo.push(Undo::Tree(path));
    }

    /// A file, device node or empty directory that did not exist before.
    pub fn entry(&mut self, path: PathBuf) {
        self.undo.push(Undo::Entry(path));
    }

    /// A cgroup directory that did not exist before.
    pub fn cgroup_dir(&mut self, path: PathBuf) {
        self.undo.push(Undo::CgroupDir(path));
    }

    /// The previous owner of `path`, before the jailer changed it.
    pub fn owner(&mut self, path: PathBuf, uid: u32, gid: u32) {
        self.undo.push(Undo::Owner(path, uid, gid));
    }

    /// Forgets everything: the VMM runs, what was created is now its jail.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// Undoes everything, newest first; failures are reported on stderr
    /// (the original error is what the caller gets).
    pub fn undo(&mut self) {
        while let Some(u) = self.undo.pop() {
            let (path, result) = match &u {
                Undo::Tree(p) => (p, std::fs::remove_dir_all(p)),
                Undo::Entry(p) => (
                    p,
                    match std::fs::symlink_metadata(p) {
                        Ok(m) if m.is_dir() => std::fs::remove_dir(p),
                        Ok(_) => std::fs::remove_file(p),
                        Err(e) => Err(e),
                    },
                ),
                Undo::CgroupDir(p) => (p, cgroup::remove_dir(p)),
                Undo::Owner(p, uid, gid) => {
                    (p, std::os::unix::fs::lchown(p, Some(*uid), Some(*gid)))
                }
            };
            match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    eprintln!("capsa-jailer: warning: cannot undo {}: {e}", path.display());
                }
                _ => {}
            }
        }
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        self.undo();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoes_in_reverse_and_commit_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("a");
        std::fs::create_dir_all(tree.join("b/c")).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        {
            let mut r = Rollback::default();
            r.tree(tree.clone());
            r.entry(file.clone());
        }
        assert!(!tree.exists() && !file.exists());

        std::fs::write(&file, "x").unwrap();
        let mut r = Rollback::default();
        r.entry(file.clone());
        r.commit();
        drop(r);
        assert!(file.exists());
    }
}
