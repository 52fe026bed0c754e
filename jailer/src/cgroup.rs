//! The VMM's cgroups as `--cgroup` asks for them: which hierarchies
//! (those holding a controller named by `--cgroup`, of the version in
//! use), the VMM's directory in each, the values written into them.
//! Finding the hierarchies, making, joining and removing the directories
//! is `capsa-cgroup`'s (`cgroup/`), which `capsa create` uses too.
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
use std::time::Duration;

use anyhow::{bail, Context, Result};
use capsa_cgroup::{Hierarchy, Mounts, Version, MOUNTINFO};

use crate::rollback::Rollback;

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

/// The version in use on this host (see [`Mounts::version`]).
pub fn detect_version(mounts: &Mounts) -> Result<Version> {
    mounts
        .version()
        .with_context(|| format!("no cgroup hierarchy is mounted (see {MOUNTINFO})"))
}

/// One cgroup directory of the VMM and what is written into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The hierarchy it is in.
    pub hierarchy: Hierarchy,
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
    pub version: Version,
    /// The directories.
    pub dirs: Vec<CgroupDir>,
}

impl CgroupPlan {
    /// Computes the directories for `settings`. Errors name the `--cgroup`
    /// whose controller is not mounted.
    pub fn new(
        version: Version,
        mounts: &Mounts,
        parent: &str,
        id: &str,
        settings: &[CgroupSetting],
    ) -> Result<Self> {
        let mut dirs: Vec<CgroupDir> = Vec::new();
        for s in settings {
            let hierarchy = match version {
                Version::V1 => mounts.v1_with(s.controller()).with_context(|| {
                    format!(
                        "--cgroup {}: controller {:?} is not mounted as a cgroup v1 hierarchy",
                        s.file,
                        s.controller()
                    )
                })?,
                Version::V2 => mounts.v2().with_context(|| {
                    format!("--cgroup {}: no cgroup v2 hierarchy is mounted", s.file)
                })?,
            };
            let dir = match dirs.iter_mut().position(|d| d.hierarchy == *hierarchy) {
                Some(i) => &mut dirs[i],
                None => {
                    dirs.push(CgroupDir {
                        hierarchy: hierarchy.clone(),
                        path: hierarchy.dir(&Path::new(parent).join(id)),
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
    /// mounted hierarchy of `version` (v1: those holding controllers).
    pub fn all_dirs(version: Version, mounts: &Mounts, parent: &str, id: &str) -> Vec<PathBuf> {
        let cgroup = Path::new(parent).join(id);
        match version {
            Version::V1 => mounts.v1().map(|h| h.dir(&cgroup)).collect(),
            Version::V2 => mounts.v2().iter().map(|h| h.dir(&cgroup)).collect(),
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
            let enable: Vec<&str> = dir.controllers.iter().map(String::as_str).collect();
            let mut created = Vec::new();
            let made = capsa_cgroup::create(&dir.hierarchy, &dir.path, &enable, &mut created);
            for c in created {
                rollback.cgroup_dir(c);
            }
            made.context("--cgroup")?;
            for s in &dir.settings {
                capsa_cgroup::set(&dir.path, &s.file, &s.value)
                    .with_context(|| format!("--cgroup {}={}", s.file, s.value))?;
            }
        }
        Ok(())
    }

    /// Moves the calling process into every directory (`0` into
    /// `cgroup.procs`).
    pub fn join(&self) -> Result<()> {
        for dir in &self.dirs {
            capsa_cgroup::join(&dir.path).context("cannot join cgroup")?;
        }
        Ok(())
    }
}

/// Removes an (empty) cgroup directory; a cgroup whose last process just
/// exited may still be busy for a moment, so EBUSY is retried for up to
/// one second.
pub fn remove_dir(path: &Path) -> std::io::Result<()> {
    capsa_cgroup::remove(path, Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_cgroup::test_utils::{HYBRID as V1_MOUNTINFO, UNIFIED as V2_MOUNTINFO};

    fn setting(s: &str) -> CgroupSetting {
        let (f, v) = s.split_once('=').unwrap();
        CgroupSetting::new(f, v).unwrap()
    }

    #[test]
    fn v1_paths_one_dir_per_hierarchy() {
        let m = Mounts::parse(V1_MOUNTINFO);
        let settings = [
            setting("cpu.shares=512"),
            setting("pids.max=64"),
            setting("cpuacct.usage=0"),
            setting("memory.limit_in_bytes=256M"),
        ];
        let plan = CgroupPlan::new(Version::V1, &m, "capsa/vms", "vm-1", &settings).unwrap();
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
        let e =
            CgroupPlan::new(Version::V1, &m, "capsa", "x", &[setting("hugetlb.x=1")]).unwrap_err();
        assert!(format!("{e}").contains("--cgroup hugetlb.x"), "{e}");
        // cleanup looks in the controllers' hierarchies, not the named one.
        assert_eq!(
            CgroupPlan::all_dirs(Version::V1, &m, "capsa", "vm-1").len(),
            4
        );
    }

    #[test]
    fn v2_paths_one_dir() {
        let m = Mounts::parse(V2_MOUNTINFO);
        assert_eq!(detect_version(&m).unwrap(), Version::V2);
        assert_eq!(
            detect_version(&Mounts::parse(V1_MOUNTINFO)).unwrap(),
            Version::V1
        );
        assert!(detect_version(&Mounts::parse("")).is_err());
        let settings = [setting("memory.max=268435456"), setting("cpu.weight=50")];
        let plan = CgroupPlan::new(Version::V2, &m, "capsa", "vm-1", &settings).unwrap();
        assert_eq!(plan.dirs.len(), 1);
        assert_eq!(plan.dirs[0].path, Path::new("/sys/fs/cgroup/capsa/vm-1"));
        assert_eq!(
            plan.dirs[0].controllers.iter().collect::<Vec<_>>(),
            ["cpu", "memory"]
        );
        assert_eq!(
            CgroupPlan::all_dirs(Version::V2, &m, "capsa", "vm-1"),
            [PathBuf::from("/sys/fs/cgroup/capsa/vm-1")]
        );
        let none = CgroupPlan::new(Version::V2, &m, "capsa", "vm-1", &[]).unwrap();
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
}
