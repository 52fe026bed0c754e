//! The container's root directory as a virtio-blk disk (the `block`
//! rootfs transport, annotation `io.capsa.rootfs=block`; by default the
//! directory is shared through virtio-fs instead, see [`super::virtiofsd`]).
//!
//! The bundle's root directory becomes an ext4 image made by the real tool
//! (`mkfs.ext4 -d`), cached under `<cache>/rootfs/<key>.ext4`. The key is a
//! SHA-256 over every entry of the tree (not following symlinks): its
//! relative path, type, mode, owner, size, modification time, symlink
//! target and, for a regular file, the SHA-256 of its bytes. So an
//! unchanged tree is not rebuilt, and two trees that differ in any byte
//! never share an image, even with equal names, sizes and mtimes (issue 14
//! item 4: the key used to be metadata only, hashed with a
//! non-cryptographic hash). The price is a read of the tree at every block
//! `create` (docs/security.md has the numbers). The disk is offered
//! read-only and shared by every container of the same tree; the guest
//! writes into a tmpfs overlay (see docs/runtime.md).

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{Result, RuntimeError};

/// What a walk of a tree found.
#[derive(Debug, Default)]
struct TreeSummary {
    /// SHA-256 of the tree, in hex.
    key: String,
    data_bytes: u64,
    entries: u64,
}

/// Feeds `bytes` to `h` with its length first, so that no two sequences
/// of fields hash alike.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// SHA-256 of the regular file at `path` (opened without following a
/// symlink, and not blocking should it have become a FIFO).
fn file_digest(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut h = Sha256::new();
    if file.metadata()?.is_file() {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => h.update(&buf[..n]),
            }
        }
    }
    Ok(h.finalize().into())
}

fn walk(root: &Path) -> Result<TreeSummary> {
    let mut h = Sha256::new();
    let mut sum = TreeSummary::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path)
            .map_err(|e| RuntimeError::io(format!("rootfs: stat {}", path.display()), e))?;
        field(&mut h, rel.as_os_str().as_bytes());
        for n in [
            md.mode().into(),
            md.uid().into(),
            md.gid().into(),
            md.size(),
            md.rdev(),
        ] {
            h.update(u64::to_le_bytes(n));
        }
        h.update(md.mtime().to_le_bytes());
        h.update(md.mtime_nsec().to_le_bytes());
        sum.entries += 1;
        sum.data_bytes += md.size().div_ceil(4096) * 4096;
        if md.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&path) {
                field(&mut h, t.as_os_str().as_bytes());
            }
        } else if md.is_file() {
            let digest = file_digest(&path)
                .map_err(|e| RuntimeError::io(format!("rootfs: read {}", path.display()), e))?;
            h.update(digest);
        } else if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(|e| RuntimeError::io(format!("rootfs: read {}", path.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            // Reverse, so that the stack pops them in order.
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        }
    }
    sum.key = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(sum)
}

/// Runs `mkfs.ext4 -d dir out` with a size that fits the tree.
pub fn build_ext4(dir: &Path, out: &Path) -> Result<()> {
    let sum = walk(dir)?;
    build_ext4_sized(dir, out, &sum)
}

fn build_ext4_sized(dir: &Path, out: &Path, sum: &TreeSummary) -> Result<()> {
    // Data plus a block per entry (directories, inline data, extents) plus
    // a fifth for ext4's own metadata, at least 16 MiB. The file is sparse.
    let bytes = (sum.data_bytes + sum.entries * 4096) * 6 / 5 + (16 << 20);
    let size_kib = bytes.div_ceil(1024);
    let inodes = sum.entries + 1024;
    let _ = std::fs::remove_file(out);
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-N",
        ])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(dir)
        .arg(out)
        .arg(format!("{size_kib}k"))
        .output()
        .map_err(|e| {
            RuntimeError::Image(format!(
                "cannot run mkfs.ext4 ({e}); install e2fsprogs (scripts/setup.sh)"
            ))
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        return Err(RuntimeError::Image(format!(
            "mkfs.ext4 -d {} failed ({}): {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// The cached ext4 image of the tree at `rootfs`, built when missing.
pub fn rootfs_image(rootfs: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let sum = walk(rootfs)?;
    let dir = cache_dir.join("rootfs");
    let image = dir.join(format!("{}.ext4", sum.key));
    if image.is_file() {
        tracing::debug!(image = %image.display(), "rootfs image cached");
        return Ok(image);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| RuntimeError::io(format!("mkdir {}", dir.display()), e))?;
    let tmp = image.with_extension(format!("tmp{}", std::process::id()));
    build_ext4_sized(rootfs, &tmp, &sum)?;
    std::fs::rename(&tmp, &image)
        .map_err(|e| RuntimeError::io(format!("rename to {}", image.display()), e))?;
    tracing::info!(image = %image.display(), "rootfs image built");
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/a"), "1").unwrap();
        let k1 = walk(d.path()).unwrap().key;
        assert_eq!(k1, walk(d.path()).unwrap().key);
        std::fs::write(d.path().join("etc/a"), "22").unwrap();
        assert_ne!(k1, walk(d.path()).unwrap().key);
    }

    /// Issue 14 item 4: a file rewritten with other bytes of the same size
    /// and its mtime put back (names, sizes and mtimes all equal) used to
    /// keep the key, so the new tree booted the old tree's cached image.
    #[test]
    fn rootfs_cache_key_covers_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        let file = d.path().join("etc/a");
        std::fs::write(&file, "aaaa").unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let before = walk(d.path()).unwrap().key;
        std::fs::write(&file, "bbbb").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!((md.len(), md.modified().unwrap()), (4, mtime));
        assert_ne!(before, walk(d.path()).unwrap().key);
    }

    #[test]
    fn image_is_built_once() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/x"), "x").unwrap();
        let cache = d.path().join("cache");
        let a = rootfs_image(&tree, &cache).unwrap();
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = rootfs_image(&tree, &cache).unwrap();
        assert_eq!(a, b);
        assert_eq!(mtime, std::fs::metadata(&b).unwrap().modified().unwrap());
    }
}
