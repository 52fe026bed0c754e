//! OCI mounts inside the guest (OCI runtime spec, `config.md` § "Mounts";
//! options as in mount(8)). Supported: tmpfs, proc, sysfs, devpts, mqueue,
//! cgroup2 and bind mounts of guest paths; a tmpfs on `/dev` gets the
//! standard device nodes and symlinks (OCI `config-linux.md` § "Default
//! Devices"). Missing kernel support for mqueue and cgroup mounts is logged,
//! not fatal.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use super::mount;
use crate::agent_log;
use crate::protocol::MountSpec;
use crate::server::spawn::ChildMount;
use crate::server::AgentError;

/// Splits fstab-style options into mount flags and the data string; the
/// second value says whether `bind`/`rbind` was present.
pub fn parse_options(options: &[String]) -> (libc::c_ulong, String, bool) {
    let mut flags = 0;
    let mut data = Vec::new();
    let mut bind = false;
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= libc::MS_REC;
            }
            // Propagation: the guest has one mount namespace; nothing to do.
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","), bind)
}

/// `destination` below `root`, refusing `..`.
fn target_in(root: &Path, destination: &str) -> Result<PathBuf, AgentError> {
    let rel = Path::new(destination);
    if !rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
        return Err(AgentError::InvalidParams(format!(
            "mount destination {destination:?} must be absolute without .."
        )));
    }
    Ok(root.join(rel.strip_prefix("/").unwrap_or(rel)))
}

/// Creates the mount point of a bind mount of `source` (a file or a
/// directory) at `target`, or of another mount (a directory).
fn make_mount_point(target: &Path, bind_source: Option<&str>) {
    let is_file = bind_source
        .and_then(|s| std::fs::metadata(s).ok())
        .is_some_and(|m| !m.is_dir());
    if is_file {
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(target);
    } else {
        let _ = std::fs::create_dir_all(target);
    }
}

/// A `cgroup` or `cgroup2` mount of the spec (engines ask for one at
/// `/sys/fs/cgroup`) as a bind mount of the container's own cgroup v2
/// group `group`, with the spec's flags: the container sees its group as
/// the root of its hierarchy, as with runc and a private cgroup namespace
/// on a cgroup v2 host. A fresh cgroup v1 mount would instead bind the
/// guest's controllers to a v1 hierarchy (the memory controller among
/// them, whose v2 `memory.events` counts the container's OOM kills).
/// `None` for any other mount.
pub fn cgroup_as_group_bind(spec: &MountSpec, group: &Path) -> Option<MountSpec> {
    if !matches!(spec.kind.as_deref(), Some("cgroup" | "cgroup2")) {
        return None;
    }
    let mut options: Vec<String> = spec
        .options
        .iter()
        .filter(|o| !matches!(o.as_str(), "bind" | "rbind"))
        .cloned()
        .collect();
    options.push("bind".into());
    Some(MountSpec {
        destination: spec.destination.clone(),
        kind: Some("bind".into()),
        source: Some(group.to_string_lossy().into_owned()),
        options,
    })
}

/// Whether the container's init must make `spec` itself, from inside its
/// new PID namespace: a `proc` mount, or any mount below the destination
/// of an earlier one (`deferred`: the destinations deferred so far).
pub fn is_deferred(spec: &MountSpec, deferred: &[PathBuf]) -> bool {
    spec.kind.as_deref() == Some("proc")
        || deferred
            .iter()
            .any(|d| Path::new(&spec.destination).starts_with(d))
}

/// The mount(2) calls that make `spec` below `root`, for the container's
/// init to run (see `Platform::apply_mounts`). The mount point is created
/// here when `create_target` (it is not inside a mount that does not exist
/// yet). Returns the calls and the target.
pub fn child_mounts(
    root: &Path,
    spec: &MountSpec,
    create_target: bool,
) -> Result<(Vec<ChildMount>, PathBuf), AgentError> {
    let target = target_in(root, &spec.destination)?;
    let (flags, data, bind_opt) = parse_options(&spec.options);
    let kind = spec.kind.as_deref().unwrap_or("none");
    let bind = bind_opt || kind == "bind";
    let source = spec.source.as_deref().unwrap_or(kind);
    if create_target {
        make_mount_point(&target, bind.then_some(source));
    }
    let mut calls = Vec::new();
    if bind {
        calls.push(ChildMount::new(
            source,
            &target,
            "",
            libc::MS_BIND | (flags & libc::MS_REC),
            "",
        )?);
        if flags & !libc::MS_REC != 0 {
            calls.push(ChildMount::new(
                "",
                &target,
                "",
                libc::MS_REMOUNT | libc::MS_BIND | (flags & !libc::MS_REC),
                "",
            )?);
        }
    } else {
        calls.push(ChildMount::new(source, &target, kind, flags, &data)?);
    }
    Ok((calls, target))
}

/// Mounts one spec below `root`; returns the target when something was mounted.
pub fn apply(root: &Path, spec: &MountSpec) -> Result<Option<PathBuf>, AgentError> {
    let target = target_in(root, &spec.destination)?;
    let (flags, data, bind_opt) = parse_options(&spec.options);
    let kind = spec.kind.as_deref().unwrap_or("none");
    let bind = bind_opt || kind == "bind";
    let source = spec.source.as_deref().unwrap_or(kind);
    if bind {
        make_mount_point(&target, Some(source));
        mount(
            source,
            &target,
            "",
            libc::MS_BIND | (flags & libc::MS_REC),
            "",
        )?;
        if flags & !libc::MS_REC != 0 {
            // Flags of a bind mount apply only on a remount.
            mount(
                "",
                &target,
                "",
                libc::MS_REMOUNT | libc::MS_BIND | (flags & !libc::MS_REC),
                "",
            )?;
        }
        return Ok(Some(target));
    }
    let _ = std::fs::create_dir_all(&target);
    let result = mount(source, &target, kind, flags, &data);
    match (result, kind) {
        (Ok(()), "tmpfs") if spec.destination == "/dev" => {
            populate_dev(&target);
            Ok(Some(target))
        }
        (Ok(()), _) => Ok(Some(target)),
        (Err(e), "mqueue" | "cgroup" | "cgroup2") => {
            agent_log!("optional mount skipped: {e}");
            Ok(None)
        }
        (Err(e), _) => Err(e),
    }
}

/// Creates the OCI default devices and symlinks in a fresh /dev tmpfs.
fn populate_dev(dev: &Path) {
    let nodes: [(&str, u32, u32); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        let Ok(path) = CString::new(dev.join(name).to_string_lossy().as_bytes()) else {
            continue;
        };
        // SAFETY: valid C string; mknod has no other memory effects.
        let rc = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if rc == 0 {
            // SAFETY: as above; mknod's mode is reduced by the umask.
            unsafe { libc::chmod(path.as_ptr(), 0o666) };
        }
    }
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, dev.join(name));
    }
    let _ = std::fs::create_dir_all(dev.join("pts"));
    let _ = std::fs::create_dir_all(dev.join("shm"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_mount_binds_the_container_group_with_its_flags() {
        let spec = |kind: &str| MountSpec {
            destination: "/sys/fs/cgroup".into(),
            kind: Some(kind.into()),
            source: Some("cgroup".into()),
            options: ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let group = Path::new("/run/capsa/cgroup/container");
        for kind in ["cgroup", "cgroup2"] {
            let bind = cgroup_as_group_bind(&spec(kind), group).unwrap();
            assert_eq!(bind.kind.as_deref(), Some("bind"));
            assert_eq!(bind.source.as_deref(), Some("/run/capsa/cgroup/container"));
            assert_eq!(bind.destination, "/sys/fs/cgroup");
            let (flags, _, is_bind) = parse_options(&bind.options);
            assert!(is_bind);
            let wanted = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
            assert_eq!(flags & wanted, wanted);
        }
        assert!(cgroup_as_group_bind(&spec("sysfs"), group).is_none());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rbind",
            "rprivate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data, bind) = parse_options(&opts);
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_STRICTATIME | libc::MS_REC);
        assert_eq!(data, "mode=755,size=65536k");
        assert!(bind);
    }

    fn spec(kind: &str, destination: &str, options: &[&str]) -> MountSpec {
        MountSpec {
            destination: destination.into(),
            kind: Some(kind.into()),
            source: Some(kind.into()),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn proc_and_what_lies_below_it_are_deferred() {
        let proc_ = spec("proc", "/proc", &[]);
        assert!(is_deferred(&proc_, &[]));
        let below = spec("bind", "/proc/sys", &["rbind", "ro"]);
        assert!(!is_deferred(&below, &[]));
        assert!(is_deferred(&below, &[PathBuf::from("/proc")]));
        assert!(!is_deferred(
            &spec("tmpfs", "/procfoo", &[]),
            &[PathBuf::from("/proc")]
        ));
        let (calls, target) = child_mounts(Path::new("/r"), &below, false).unwrap();
        assert_eq!(target, PathBuf::from("/r/proc/sys"));
        // A bind with flags is a bind, then a remount.
        assert_eq!(calls.len(), 2);
        let (calls, _) = child_mounts(Path::new("/r"), &proc_, false).unwrap();
        assert_eq!(calls.len(), 1);
    }

    #[test]
    fn destinations_stay_below_root() {
        assert!(target_in(Path::new("/r"), "/../etc").is_err());
        assert!(target_in(Path::new("/r"), "proc").is_err());
        assert_eq!(
            target_in(Path::new("/r"), "/dev/shm").unwrap(),
            PathBuf::from("/r/dev/shm")
        );
    }
}
