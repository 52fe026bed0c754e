//! A cgroup's directory: making it, its limits, joining it, removing it.

use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Hierarchy};

/// Makes `dir` in hierarchy `h` and the missing levels between the
/// hierarchy's root and it; an existing level is used as it is. In a v2
/// hierarchy the controllers `enable` are enabled in
/// `cgroup.subtree_control` of every level above `dir` first (only
/// enabled, never disabled); a new level of a v1 hierarchy holding
/// `cpuset` gets its parent's `cpuset.cpus` and `cpuset.mems` when it has
/// none (no task can join an empty cpuset; with `clone_children` the
/// kernel copied them already). The levels it made are pushed to
/// `created`, parents first, also when it then fails.
pub fn create(
    h: &Hierarchy,
    dir: &Path,
    enable: &[&str],
    created: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    let relative = dir.strip_prefix(&h.mount).unwrap_or(dir);
    let mut current = h.mount.clone();
    for component in relative.components() {
        if h.v2 && !enable.is_empty() {
            enable_controllers(&current, enable)?;
        }
        let parent = current.clone();
        current.push(component);
        match std::fs::create_dir(&current) {
            Ok(()) => {
                created.push(current.clone());
                if h.has("cpuset") {
                    inherit_cpuset(&parent, &current)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create", &current)(e)),
        }
    }
    Ok(())
}

/// v2: `+<controller>` for each of `controllers` not enabled yet into
/// `<dir>/cgroup.subtree_control`, after checking `cgroup.controllers`.
fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<(), Error> {
    let available_file = dir.join("cgroup.controllers");
    let available =
        std::fs::read_to_string(&available_file).map_err(Error::io("read", &available_file))?;
    let file = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&file).unwrap_or_default();
    for &c in controllers {
        if enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        if !available.split_whitespace().any(|a| a == c) {
            return Err(Error::Unavailable {
                controller: c.to_owned(),
                dir: dir.to_owned(),
                available: available.trim().to_owned(),
            });
        }
        std::fs::write(&file, format!("+{c}")).map_err(Error::io("write", &file))?;
    }
    Ok(())
}

/// v1 cpuset: copies `cpuset.cpus` and `cpuset.mems` from `parent` into
/// the new `dir` when it has none.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), Error> {
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        let current = std::fs::read_to_string(&file).unwrap_or_default();
        if current.trim().is_empty() {
            let from = parent.join(name);
            let value = std::fs::read_to_string(&from).map_err(Error::io("read", &from))?;
            std::fs::write(&file, value.trim()).map_err(Error::io("write", &file))?;
        }
    }
    Ok(())
}

/// Writes `value` into the interface file `file` (`pids.max`, …) of the
/// cgroup `dir`.
pub fn set(dir: &Path, file: &str, value: &str) -> Result<(), Error> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(Error::io("write", path))
}

/// Moves the calling process into the cgroup `dir` (`0` into
/// `cgroup.procs`).
pub fn join(dir: &Path) -> Result<(), Error> {
    set(dir, "cgroup.procs", "0")
}

/// Opens `cgroup.procs` of `dir` for writing (close-on-exec), for
/// [`join_in_child`].
pub fn open_procs(dir: &Path) -> Result<OwnedFd, Error> {
    let path = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(Error::io("open", path))
}

/// In a child between fork and exec: moves the calling process into the
/// cgroups whose `cgroup.procs` descriptors are `fds` ([`open_procs`]).
/// Only `write(2)`: async-signal-safe.
pub fn join_in_child(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: writes one byte from a static buffer to a descriptor
        // this process owns.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `rmdir` of the (empty) cgroup `dir`; a cgroup whose last task just
/// exited may still be busy for a moment, so `EBUSY` is retried for up to
/// `timeout`. A missing directory is fine.
pub fn remove(dir: &Path, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => return other,
        }
    }
}

/// Whether the cgroup `dir` holds any process.
pub fn has_processes(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A directory tree standing in for a hierarchy (cgroupfs itself
    /// needs root and would make real cgroups).
    fn fake(v2: bool, controllers: &[&str]) -> (tempfile::TempDir, Hierarchy) {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            mount: root.path().to_owned(),
            controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
            v2,
        };
        (root, h)
    }

    #[test]
    fn v2_enables_controllers_on_the_way_down_and_records_new_levels() {
        let (root, h) = fake(true, &[]);
        let top = root.path();
        std::fs::write(top.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(top.join("cgroup.subtree_control"), "memory\n").unwrap();
        std::fs::create_dir(top.join("a")).unwrap();
        std::fs::write(top.join("a/cgroup.controllers"), "cpu memory pids\n").unwrap();
        let mut created = Vec::new();
        create(&h, &top.join("a/b"), &["memory", "pids"], &mut created).unwrap();
        assert_eq!(created, [top.join("a/b")]);
        // A plain file takes the last write: only `+pids` was needed.
        assert_eq!(
            std::fs::read_to_string(top.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        let e = create(&h, &top.join("c/d"), &["io"], &mut created).unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("\"io\" is not available"), "{e}");
    }

    #[test]
    fn v1_cpuset_level_inherits_cpus_and_mems() {
        let (root, h) = fake(false, &["cpuset"]);
        let top = root.path();
        std::fs::write(top.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(top.join("cpuset.mems"), "0\n").unwrap();
        let mut created = Vec::new();
        create(&h, &top.join("x"), &[], &mut created).unwrap();
        assert_eq!(
            std::fs::read_to_string(top.join("x/cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            std::fs::read_to_string(top.join("x/cpuset.mems")).unwrap(),
            "0"
        );
        // Existing levels are used as they are, and not recorded.
        created.clear();
        create(&h, &top.join("x"), &[], &mut created).unwrap();
        assert!(created.is_empty());
    }

    #[test]
    fn set_join_remove() {
        let (root, _) = fake(true, &[]);
        let dir = root.path().join("g");
        std::fs::create_dir(&dir).unwrap();
        set(&dir, "pids.max", "64").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
        assert!(!has_processes(&dir));
        join(&dir).unwrap();
        assert!(has_processes(&dir));
        let fd = open_procs(&dir).unwrap();
        join_in_child(&[fd.as_raw_fd()]).unwrap();
        let e = set(&root.path().join("none"), "pids.max", "1").unwrap_err();
        assert!(e.to_string().starts_with("cannot write "), "{e}");
        for f in ["pids.max", "cgroup.procs"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        remove(&dir, Duration::ZERO).unwrap();
        remove(&dir, Duration::ZERO).unwrap();
        assert!(!dir.exists());
    }
}
