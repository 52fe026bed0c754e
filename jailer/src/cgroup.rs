//! Cgroups of the VMM: which hierarchy (v1 or v2) and where it is mounted
//! (read from `/proc/self/mountinfo`), the VMM's cgroup directories, the
//! values written into them, and joining them.
//!
//! - v1 (Documentation/admin-guide/cgroup-v1/): one directory per mounted
//!   hierarchy that holds a controller named by `--cgroup`:
//!   `<mount>/<parent>/<id>` (e.g. `/sys/fs/cgroup/pids/capsa/vm-1`);
//!   controllers mounted together (`cpu,cpuacct`) share one directory.
//! - v2 (Documentation/admin-guide/cgroup-v2.rst): one directory
//!   `<mount>/<parent>/<id>`; the controllers named by `--cgroup` are
//!   enabled in `cgroup.subtree_control` of every level above it.
//!
//! The VMM joins by writing `0` (the writing process) to `cgroup.procs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::rollback::Rollback;

/// Where the kernel lists the calling process's mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchies, one or more controllers each.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// Interface file, `<controller>.<name>` (e.g. `pids.max`).
    pub file: String,
    /// What is written into it (no newline).
    pub value: String,
}

impl CgroupSetting {
    /// Validates `file` (`<controller>.<name>`, one path component, not a
    /// `cgroup.*` core file, not `tasks`) and `value` (no newline or NUL).
    pub fn new(file: &str, value: &str) -> Result<Self, String> {
        let Some((controller, name)) = file.split_once('.') else {
            return Err(format!(
                "{file:?} is not a controller file (<controller>.<name>, e.g. pids.max)"
            ));
        };
        let ok_chars = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        if !ok_chars(controller) || !ok_chars(name) || file.contains("..") {
            return Err(format!("{file:?} is not a controller file name"));
        }
        if controller == "cgroup" {
            return Err(format!(
                "{file:?} is a core cgroup file that the jailer manages itself"
            ));
        }
        if value.contains(['\n', '\0']) {
            return Err(format!("{file}: the value must be one line"));
        }
        Ok(Self {
            file: file.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The controller: what precedes the first `.` of the file name.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// The cgroup mounts of this process's mount namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupMounts {
    /// v1 hierarchies: mount point and the controllers it holds.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    /// The v2 hierarchy's mount point.
    pub v2: Option<PathBuf>,
}

/// Super-block options of a v1 mount that are not controllers.
const V1_NON_CONTROLLER_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
    "favordynmods",
];

impl CgroupMounts {
    /// Reads [`MOUNTINFO`].
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string(MOUNTINFO)
            .with_context(|| format!("cannot read {MOUNTINFO}"))?;
        Ok(Self::parse(&text))
    }

    /// Parses mountinfo lines (proc(5)): the mount point is field 5; after
    /// the ` - ` separator come the fs type, the source and the super-block
    /// options (for v1, the controllers; named hierarchies such as
    /// `name=systemd` are skipped).
    pub fn parse(mountinfo: &str) -> Self {
        let mut out = Self::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_octal(mount_point));
            let mut right = right.split(' ');
            match right.next() {
                Some("cgroup2") => {
                    // The first one wins (a later one is usually a bind).
                    out.v2.get_or_insert(mount_point);
                }
                Some("cgroup") => {
                    let options = right.nth(1).unwrap_or_default();
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|o| !o.contains('=') && !V1_NON_CONTROLLER_OPTIONS.contains(o))
                        .map(str::to_owned)
                        .collect();
                    if !controllers.is_empty() && !out.v1.iter().any(|(_, c)| *c == controllers) {
                        out.v1.push((mount_point, controllers));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The version in use: v2 when the unified hierarchy is mounted at
    /// `/sys/fs/cgroup` or no v1 controller is mounted; v1 when any v1
    /// controller is mounted (also on "hybrid" hosts, whose v2 mount holds
    /// no controllers).
    pub fn detect_version(&self) -> Result<CgroupVersion> {
        match (&self.v2, self.v1.is_empty()) {
            (Some(p), _) if p == Path::new("/sys/fs/cgroup") => Ok(CgroupVersion::V2),
            (_, false) => Ok(CgroupVersion::V1),
            (Some(_), true) => Ok(CgroupVersion::V2),
            (None, true) => bail!("no cgroup hierarchy is mounted (see {MOUNTINFO})"),
        }
    }

    /// The v1 mount point holding `controller`.
    pub fn v1_mount_of(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, c)| c.iter().any(|c| c == controller))
            .map(|(p, _)| p.as_path())
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cgroup directory of the VMM and what is written into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The hierarchy's mount point.
    pub mount: PathBuf,
    /// `<mount>/<parent>/<id>`.
    pub path: PathBuf,
    /// Controllers this directory serves (v1: those of `--cgroup` in this
    /// hierarchy; v2: all of `--cgroup`).
    pub controllers: BTreeSet<String>,
    /// The `--cgroup` values for this directory, in command-line order.
    pub settings: Vec<CgroupSetting>,
}

/// The VMM's cgroups: one directory per v1 hierarchy used, or one v2
/// directory; empty when no `--cgroup` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    /// The version.
    pub version: CgroupVersion,
    /// The directories.
    pub dirs: Vec<CgroupDir>,
}

impl CgroupPlan {
    /// Computes the directories for `settings`. Errors name the `--cgroup`
    /// whose controller is not mounted.
    pub fn new(
        version: CgroupVersion,
        mounts: &CgroupMounts,
        parent: &str,
        id: &str,
        settings: &[CgroupSetting],
    ) -> Result<Self> {
        let mut dirs: Vec<CgroupDir> = Vec::new();
        for s in settings {
            let mount = match version {
                CgroupVersion::V1 => mounts.v1_mount_of(s.controller()).with_context(|| {
                    format!(
                        "--cgroup {}: controller {:?} is not mounted as a cgroup v1 hierarchy",
                        s.file,
                        s.controller()
                    )
                })?,
                CgroupVersion::V2 => mounts.v2.as_deref().with_context(|| {
                    format!("--cgroup {}: no cgroup v2 hierarchy is mounted", s.file)
                })?,
            };
            let dir = match dirs.iter_mut().find(|d| d.mount == mount) {
                Some(d) => d,
                None => {
                    dirs.push(CgroupDir {
                        mount: mount.to_owned(),
                        path: mount.join(parent).join(id),
                        controllers: BTreeSet::new(),
                        settings: Vec::new(),
                    });
                    dirs.last_mut().expect("just pushed")
                }
            };
            dir.controllers.insert(s.controller().to_owned());
            dir.settings.push(s.clone());
        }
        Ok(Self { version, dirs })
    }

    /// The directories that `cleanup` looks at: `<parent>/<id>` in every
    /// mounted hierarchy of `version`.
    pub fn all_dirs(
        version: CgroupVersion,
        mounts: &CgroupMounts,
        parent: &str,
        id: &str,
    ) -> Vec<PathBuf> {
        match version {
            CgroupVersion::V1 => mounts
                .v1
                .iter()
                .map(|(m, _)| m.join(parent).join(id))
                .collect(),
            CgroupVersion::V2 => mounts.v2.iter().map(|m| m.join(parent).join(id)).collect(),
        }
    }

    /// Creates the directories (recording what it created in `rollback`),
    /// enables the v2 controllers, and writes the values. The VMM's
    /// directory must not exist yet.
    pub fn create(&self, rollback: &mut Rollback) -> Result<()> {
        for dir in &self.dirs {
            if dir.path.exists() {
                bail!(
                    "cgroup {} already exists: is a VMM with this --id running? (remove it with \
                     `capsa-jailer cleanup`)",
                    dir.path.display()
                );
            }
            let relative = dir
                .path
                .strip_prefix(&dir.mount)
                .expect("path is under its mount");
            let mut current = dir.mount.clone();
            for component in relative.components() {
                if self.version == CgroupVersion::V2 {
                    enable_controllers(&current, &dir.controllers)?;
                }
                let parent = current.clone();
                current.push(component);
                if !current.exists() {
                    std::fs::create_dir(&current)
                        .with_context(|| format!("cannot create cgroup {}", current.display()))?;
                    rollback.cgroup_dir(current.clone());
                    if self.version == CgroupVersion::V1 && dir.controllers.contains("cpuset") {
                        inherit_cpuset(&parent, &current)?;
                    }
                }
            }
            for s in &dir.settings {
                let file = dir.path.join(&s.file);
                std::fs::write(&file, &s.value).with_context(|| {
                    format!(
                        "--cgroup {}={}: cannot write {}",
                        s.file,
                        s.value,
                        file.display()
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Moves the calling process into every directory (`0` into
    /// `cgroup.procs`).
    pub fn join(&self) -> Result<()> {
        for dir in &self.dirs {
            let procs = dir.path.join("cgroup.procs");
            std::fs::write(&procs, "0")
                .with_context(|| format!("cannot join cgroup: writing {}", procs.display()))?;
        }
        Ok(())
    }
}

/// v2: `+controller` for each of `controllers` into
/// `<dir>/cgroup.subtree_control`, after checking `cgroup.controllers`.
fn enable_controllers(dir: &Path, controllers: &BTreeSet<String>) -> Result<()> {
    let available_file = dir.join("cgroup.controllers");
    let available = std::fs::read_to_string(&available_file)
        .with_context(|| format!("cannot read {}", available_file.display()))?;
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in controllers {
        if enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        if !available.split_whitespace().any(|a| a == c) {
            bail!(
                "--cgroup: controller {c:?} is not available in {} (it lists: {})",
                available_file.display(),
                available.trim()
            );
        }
        let file = dir.join("cgroup.subtree_control");
        std::fs::write(&file, format!("+{c}"))
            .with_context(|| format!("cannot enable controller {c}: writing {}", file.display()))?;
    }
    Ok(())
}

/// v1 cpuset: a new cgroup starts with empty `cpuset.cpus` and
/// `cpuset.mems`, and no task can join it until they are set; copy the
/// parent's (unless the hierarchy has `clone_children`, then they are set).
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        let current = std::fs::read_to_string(&file).unwrap_or_default();
        if current.trim().is_empty() {
            let from = parent.join(name);
            let value = std::fs::read_to_string(&from)
                .with_context(|| format!("cannot read {}", from.display()))?;
            std::fs::write(&file, value.trim())
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
    }
    Ok(())
}

/// Removes an (empty) cgroup directory; a cgroup whose last process just
/// exited may still be busy for a moment, so EBUSY is retried for up to
/// one second.
pub fn remove_dir(path: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::fs::remove_dir(path) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => return other,
        }
    }
}

/// Whether the cgroup at `path` holds any process.
pub fn has_processes(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
38 30 0:34 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset,clone_children
";

    const V2_MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn setting(s: &str) -> CgroupSetting {
        let (f, v) = s.split_once('=').unwrap();
        CgroupSetting::new(f, v).unwrap()
    }

    #[test]
    fn parses_v1_mounts_and_detects_v1_on_hybrid_hosts() {
        let m = CgroupMounts::parse(V1_MOUNTINFO);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.v1_mount_of("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            m.v1_mount_of("cpuset"),
            Some(Path::new("/sys/fs/cgroup/cpuset"))
        );
        assert_eq!(m.v1_mount_of("systemd"), None);
        assert_eq!(m.v1_mount_of("devices"), None);
        assert_eq!(m.detect_version().unwrap(), CgroupVersion::V1);
    }

    #[test]
    fn detects_v2() {
        let m = CgroupMounts::parse(V2_MOUNTINFO);
        assert_eq!(m.detect_version().unwrap(), CgroupVersion::V2);
        assert!(CgroupMounts::parse("").detect_version().is_err());
    }

    #[test]
    fn v1_paths_one_dir_per_hierarchy() {
        let m = CgroupMounts::parse(V1_MOUNTINFO);
        let settings = [
            setting("cpu.shares=512"),
            setting("pids.max=64"),
            setting("cpuacct.usage=0"),
            setting("memory.limit_in_bytes=256M"),
        ];
        let plan = CgroupPlan::new(CgroupVersion::V1, &m, "capsa/vms", "vm-1", &settings).unwrap();
        let paths: Vec<_> = plan.dirs.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/capsa/vms/vm-1"),
                PathBuf::from("/sys/fs/cgroup/pids/capsa/vms/vm-1"),
                PathBuf::from("/sys/fs/cgroup/memory/capsa/vms/vm-1"),
            ]
        );
        assert_eq!(plan.dirs[0].settings.len(), 2);
        assert_eq!(
            plan.dirs[0].controllers.iter().collect::<Vec<_>>(),
            ["cpu", "cpuacct"]
        );
        let e = CgroupPlan::new(
            CgroupVersion::V1,
            &m,
            "capsa",
            "x",
            &[setting("hugetlb.x=1")],
        )
        .unwrap_err();
        assert!(format!("{e}").contains("--cgroup hugetlb.x"), "{e}");
    }

    #[test]
    fn v2_paths_one_dir() {
        let m = CgroupMounts::parse(V2_MOUNTINFO);
        let settings = [setting("memory.max=268435456"), setting("cpu.weight=50")];
        let plan = CgroupPlan::new(CgroupVersion::V2, &m, "capsa", "vm-1", &settings).unwrap();
        assert_eq!(plan.dirs.len(), 1);
        assert_eq!(plan.dirs[0].path, Path::new("/sys/fs/cgroup/capsa/vm-1"));
        assert_eq!(
            plan.dirs[0].controllers.iter().collect::<Vec<_>>(),
            ["cpu", "memory"]
        );
        assert_eq!(
            CgroupPlan::all_dirs(CgroupVersion::V2, &m, "capsa", "vm-1"),
            [PathBuf::from("/sys/fs/cgroup/capsa/vm-1")]
        );
        let none = CgroupPlan::new(CgroupVersion::V2, &m, "capsa", "vm-1", &[]).unwrap();
        assert!(none.dirs.is_empty());
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(setting("pids.max=64").controller(), "pids");
        assert!(CgroupSetting::new("tasks", "1").is_err());
        assert!(CgroupSetting::new("cgroup.procs", "1").is_err());
        assert!(CgroupSetting::new("../pids.max", "1").is_err());
        assert!(CgroupSetting::new("pids/max", "1").is_err());
        assert!(CgroupSetting::new("pids.max", "1\n2").is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal(r"/a\\"), r"/a\\");
    }
}
