//! The host cgroup of a `vm` container (issue 14 item 10): the processes
//! `create` starts for it — the `capsa-jailer` supervisor (the pid engines
//! wait on), the VMM under it and the container's virtiofsd — live in one
//! cgroup, at the spec's `linux.cgroupsPath` itself, where runc puts the
//! container's processes and Kata Containers its sandbox
//! (`sandbox_cgroup_only`). So the engine's view of that cgroup
//! (`podman stats`, `docker stats`, containerd's OOM watch of
//! `memory.oom_control`/`memory.events`) is the VM's use of the host, and
//! its limits bound what a compromised VMM can take:
//!
//! - memory: the guest's RAM plus the VMM's and virtiofsd's own
//!   ([`memory_limit_bytes`], measured in docs/runtime.md): the guest's
//!   own OOM killer always acts first, so a container that runs out of
//!   memory is killed in the guest and reported `OOMKilled` as before;
//! - pids: [`PIDS_MAX`] tasks (threads count), far above what the
//!   processes need, far below a host's limit;
//! - CPU: the spec's `linux.resources.cpu.quota`/`period` (CFS), as runc
//!   applies it to a container's processes.
//!
//! Which hierarchies: every mounted one (v1: each controller hierarchy and
//! named ones such as `name=systemd`; on hybrid hosts also the unified
//! one), as runc joins them, so `/proc/PID/cgroup` shows the path on
//! every line. On a unified (v2) host it is one directory, with `memory`,
//! `pids` and `cpu` enabled in `cgroup.subtree_control` from the root
//! down to its parent.
//!
//! The path (`linux.cgroupsPath`, OCI runtime-spec `config-linux.md`
//! § "Cgroups Path"), as runc reads it:
//! - absolute (`/libpod_parent/libpod-ID`, podman and docker with
//!   `cgroupfs`; `/default/ID`, containerd): below each hierarchy's root;
//! - relative: below capsa's own cgroup in each hierarchy;
//! - `slice:prefix:name` (podman, docker, CRI-O with the systemd cgroup
//!   manager, which pass `--systemd-cgroup`): the path systemd gives that
//!   unit, `/<expanded slice>/<prefix>-<name>.scope` (`machine.slice:
//!   libpod:ID` → `/machine.slice/libpod-ID.scope`, `a-b.slice` →
//!   `/a.slice/a-b.slice`); capsa writes it directly, it does not ask
//!   systemd for a transient unit (runc does);
//! - absent: `/capsa/<id>` (runc: `<id>` below its own cgroup).
//!
//! The directories `create` made are recorded in the state directory
//! ([`RECORD_FILE`]) before they are made, and removed by `delete` and by
//! a failed `create` ([`remove_recorded`]), once the processes in them are
//! gone (also after a `kill -9` of the VMM). Only the leaf is removed:
//! parents (such as `/libpod_parent`) may be shared, as runc leaves them.
//!
//! This file is the policy; finding the hierarchies, making, joining and
//! removing the directories is `capsa-cgroup`'s (`cgroup/`), which the
//! jailer's `--cgroup` uses too.

use std::fmt::Display;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use capsa_cgroup::{Hierarchy, Mounts, Version, MOUNTINFO, OWN_CGROUP};
use serde::{Deserialize, Serialize};

use super::{Result, RuntimeError};

pub use capsa_cgroup::join_in_child;

/// The record of the cgroup directories `create` made, in the state
/// directory.
pub const RECORD_FILE: &str = "cgroup.json";

/// The parent of the cgroup of a container whose spec has no
/// `linux.cgroupsPath`.
pub const DEFAULT_PARENT: &str = "/capsa";

/// `pids.max` of a VM container's cgroup: tasks (threads count) of the
/// jailer, the VMM (main, controller, one per vCPU, stdio relays) and
/// virtiofsd (two processes and their threads). Seen: 12 with 1 vCPU
/// and a virtiofsd (docs/runtime.md); the limit leaves room for 32 vCPUs
/// and stops a runaway thread loop of a compromised VMM.
pub const PIDS_MAX: u64 = 256;

/// What the VMM's cgroup allows beyond the guest's RAM (MiB), for the
/// processes' own memory: the VMM's heap, stacks, its static binary's
/// pages and KVM's kernel memory, virtiofsd's, and the logs the VMM writes
/// to a tmpfs state root (`console.log` and `vmm.log`, 16 MiB each at
/// most, charged to the writer). Measured in docs/runtime.md.
pub const OVERHEAD_MIB: u64 = 96;

/// The cgroup's memory limit for a guest of `guest_mib` MiB:
/// guest RAM + [`OVERHEAD_MIB`] + 1/32 of the guest RAM (the page tables
/// and KVM's shadow or extended page tables that grow with it).
pub fn memory_limit_bytes(guest_mib: u32) -> u64 {
    let guest = u64::from(guest_mib);
    (guest + OVERHEAD_MIB + guest.div_ceil(32)) << 20
}

/// Where the container's cgroup is, as read from `linux.cgroupsPath`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupsPath {
    /// Below each hierarchy's root (`/a/b`).
    Absolute(PathBuf),
    /// Below capsa's own cgroup in each hierarchy (`a/b`).
    Relative(PathBuf),
}

/// Reads `linux.cgroupsPath` (`value`) of container `id`; `systemd` when
/// the engine passed `--systemd-cgroup`. The `slice:prefix:name` form is
/// also recognised without the flag (a relative path with exactly two
/// `:` and no `/`). Errors name the field.
pub fn parse_cgroups_path(value: Option<&str>, id: &str, systemd: bool) -> Result<CgroupsPath> {
    let bad = |why: String| RuntimeError::Failed(format!("linux.cgroupsPath: {why}"));
    let value = value.unwrap_or_default();
    if value.contains(['\0', '\n']) {
        return Err(bad(format!("{value:?} contains a NUL or a newline")));
    }
    let systemd_form = !value.is_empty() && !value.contains('/') && value.matches(':').count() == 2;
    if systemd || systemd_form {
        if value.is_empty() {
            return Ok(CgroupsPath::Absolute(PathBuf::from(format!(
                "/system.slice/capsa-{id}.scope"
            ))));
        }
        let parts: Vec<&str> = value.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad(format!(
                "{value:?}: with --systemd-cgroup it must be slice:prefix:name"
            )));
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let mut path = PathBuf::from("/");
        path.push(expand_slice(slice).map_err(|e| bad(format!("{value:?}: {e}")))?);
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(bad(format!("{value:?}: bad unit name")));
        }
        path.push(if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        });
        return Ok(CgroupsPath::Absolute(path));
    }
    if value.is_empty() {
        return Ok(CgroupsPath::Absolute(Path::new(DEFAULT_PARENT).join(id)));
    }
    let mut clean = PathBuf::new();
    for c in Path::new(value).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad(format!("{value:?}: \"..\" is not allowed")))
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(bad(format!(
            "{value:?} names the root cgroup, which cannot take the container's limits"
        )));
    }
    Ok(if value.starts_with('/') {
        CgroupsPath::Absolute(Path::new("/").join(clean))
    } else {
        CgroupsPath::Relative(clean)
    })
}

/// systemd's path of a slice unit (systemd.slice(5)): `a-b-c.slice` →
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> std::result::Result<PathBuf, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("{slice:?} is not a slice (*.slice)"));
    };
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    if stem.is_empty()
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
        || stem.contains('/')
    {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// A hierarchy that a container's cgroup goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The hierarchy.
    pub hierarchy: Hierarchy,
    /// A v2 hierarchy beside v1 controllers (a hybrid host): the
    /// controllers are on v1, this one only holds the processes.
    pub membership_only: bool,
}

/// The hierarchies a container's cgroup goes into: on a v1 (or hybrid)
/// host every mounted one — each v1 hierarchy, with controllers or named,
/// and the v2 one for membership only; on a unified host the v2 one.
pub fn targets(mounts: &Mounts) -> Vec<Target> {
    let target = |h: &Hierarchy, membership_only| Target {
        hierarchy: h.clone(),
        membership_only,
    };
    match mounts.version() {
        Some(Version::V1) => mounts.hierarchies.iter().map(|h| target(h, h.v2)).collect(),
        Some(Version::V2) => mounts.v2().map(|h| target(h, false)).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The v2 controllers that the limits use, enabled from the root down.
const V2_CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

/// A `capsa-cgroup` error while doing `what`, as the runtime's (naming the
/// spec's field).
fn failed(what: impl Display) -> impl FnOnce(capsa_cgroup::Error) -> RuntimeError {
    move |e| {
        let context = format!("linux.cgroupsPath: {what}: {e}");
        match e {
            capsa_cgroup::Error::Io { source, .. } => RuntimeError::io(context, source),
            capsa_cgroup::Error::Unavailable { .. } => RuntimeError::Failed(context),
        }
    }
}

/// The limits of a container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit, bytes ([`memory_limit_bytes`]).
    pub memory_bytes: u64,
    /// `pids.max`.
    pub pids: u64,
    /// CFS quota and period (µs) from `linux.resources.cpu`, when the
    /// spec has a positive quota.
    pub cpu: Option<(i64, u64)>,
}

impl Limits {
    /// The limits of a VM of `guest_mib` MiB whose spec's CPU resources
    /// are `cpu` (`quota`, `period`).
    pub fn for_vm(guest_mib: u32, cpu: (Option<i64>, Option<u64>)) -> Limits {
        Limits {
            memory_bytes: memory_limit_bytes(guest_mib),
            pids: PIDS_MAX,
            cpu: match cpu {
                (Some(q), p) if q > 0 => Some((q, p.filter(|p| *p > 0).unwrap_or(100_000))),
                _ => None,
            },
        }
    }

    /// The `(file, value)` pairs for hierarchy `h`, in the order they
    /// must be written (the CFS period before the quota).
    fn files(&self, t: &Target) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let h = &t.hierarchy;
        if t.membership_only {
            return out;
        }
        if h.v2 {
            out.push(("memory.max", self.memory_bytes.to_string()));
            out.push(("pids.max", self.pids.to_string()));
            if let Some((q, p)) = self.cpu {
                out.push(("cpu.max", format!("{q} {p}")));
            }
            return out;
        }
        if h.has("memory") {
            out.push(("memory.limit_in_bytes", self.memory_bytes.to_string()));
        }
        if h.has("pids") {
            out.push(("pids.max", self.pids.to_string()));
        }
        if let (true, Some((q, p))) = (h.has("cpu"), self.cpu) {
            out.push(("cpu.cfs_period_us", p.to_string()));
            out.push(("cpu.cfs_quota_us", q.to_string()));
        }
        out
    }
}

/// What [`RECORD_FILE`] holds: the leaf directories `create` made (one
/// per hierarchy), which `delete` removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    /// Host paths (`/sys/fs/cgroup/memory/libpod_parent/libpod-ID`, …).
    pub created: Vec<PathBuf>,
}

/// A container's cgroup, made by [`VmCgroup::create`].
#[derive(Debug)]
pub struct VmCgroup {
    /// Its directory in each hierarchy.
    pub dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, open for writing: what a process writes
    /// `0` into to join ([`join_in_child`]).
    procs: Vec<OwnedFd>,
}

impl VmCgroup {
    /// Makes the cgroup `path` in every hierarchy of this host with
    /// `limits`, recording what it creates in `state_dir` first. On error,
    /// what it made is removed again.
    pub fn create(path: &CgroupsPath, limits: &Limits, state_dir: &Path) -> Result<VmCgroup> {
        let mounts = Mounts::read().map_err(failed("the mounted hierarchies"))?;
        let own = std::fs::read_to_string(OWN_CGROUP)
            .map_err(|e| RuntimeError::io(format!("read {OWN_CGROUP}"), e))?;
        let targets = targets(&mounts);
        if targets.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "linux.cgroupsPath: no cgroup hierarchy is mounted (see {MOUNTINFO})"
            )));
        }
        let result = Self::create_in(&targets, &own, path, limits, state_dir);
        if result.is_err() {
            remove_recorded(state_dir);
        }
        result
    }

    fn create_in(
        targets: &[Target],
        own: &str,
        path: &CgroupsPath,
        limits: &Limits,
        state_dir: &Path,
    ) -> Result<VmCgroup> {
        let dirs: Vec<PathBuf> = targets
            .iter()
            .map(|t| dir_in(&t.hierarchy, own, path))
            .collect();
        let record = CgroupRecord {
            created: dirs.iter().filter(|d| !d.exists()).cloned().collect(),
        };
        super::state::write_atomic(
            &state_dir.join(RECORD_FILE),
            &serde_json::to_vec(&record).unwrap_or_default(),
        )?;
        let mut procs = Vec::new();
        for (t, dir) in targets.iter().zip(&dirs) {
            let enable = if t.membership_only {
                &[]
            } else {
                V2_CONTROLLERS
            };
            capsa_cgroup::create(&t.hierarchy, dir, enable, &mut Vec::new())
                .map_err(failed(format_args!("cannot make {}", dir.display())))?;
            for (file, value) in limits.files(t) {
                capsa_cgroup::set(dir, file, &value).map_err(failed(format_args!(
                    "cannot set the VM's limit {file}={value}"
                )))?;
            }
            procs.push(capsa_cgroup::open_procs(dir).map_err(failed("cannot join"))?);
        }
        Ok(VmCgroup { dirs, procs })
    }

    /// The descriptors of `cgroup.procs` that a child writes `0` into
    /// before it execs ([`join_in_child`]).
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// The directory of the container's cgroup `path` in hierarchy `h`; a
/// relative path is below this process's own cgroup there (`own`: the
/// text of `/proc/self/cgroup`).
fn dir_in(h: &Hierarchy, own: &str, path: &CgroupsPath) -> PathBuf {
    match path {
        CgroupsPath::Absolute(p) => h.dir(p),
        CgroupsPath::Relative(p) => h.dir(&h.own_cgroup(own).join(p)),
    }
}

/// The cgroup's directories `create` recorded in `state_dir`.
pub fn recorded(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read(state_dir.join(RECORD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<CgroupRecord>(&b).ok())
        .map(|r| r.created)
        .unwrap_or_default()
}

/// Removes the directories recorded in `state_dir` (once the processes
/// in them are gone; a directory whose last task is still exiting is
/// `EBUSY` for a moment, so that is retried for up to 2 s) and then the
/// record. A directory that still holds a process is left, with a
/// warning in the log.
pub fn remove_recorded(state_dir: &Path) {
    let mut left = false;
    for dir in recorded(state_dir) {
        if let Err(e) = capsa_cgroup::remove(&dir, Duration::from_secs(2)) {
            tracing::warn!(
                "cannot remove the container's cgroup {}: {e}",
                dir.display()
            );
            left = true;
        }
    }
    if !left {
        let _ = std::fs::remove_file(state_dir.join(RECORD_FILE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
";

    const UNIFIED: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";

    fn abs(p: &str) -> CgroupsPath {
        CgroupsPath::Absolute(p.into())
    }

    #[test]
    fn vmm_cgroup_path_forms_as_runc_reads_them() {
        let p = |v: Option<&str>, sd| parse_cgroups_path(v, "c1", sd);
        assert_eq!(
            p(Some("/libpod_parent/libpod-c1"), false).unwrap(),
            abs("/libpod_parent/libpod-c1")
        );
        assert_eq!(p(Some("//a/./b/"), false).unwrap(), abs("/a/b"));
        assert_eq!(
            p(Some("a/b"), false).unwrap(),
            CgroupsPath::Relative("a/b".into())
        );
        assert_eq!(p(None, false).unwrap(), abs("/capsa/c1"));
        assert_eq!(p(Some(""), false).unwrap(), abs("/capsa/c1"));
        // systemd's slice:prefix:name, with or without --systemd-cgroup.
        for sd in [false, true] {
            assert_eq!(
                p(Some("machine.slice:libpod:c1"), sd).unwrap(),
                abs("/machine.slice/libpod-c1.scope")
            );
            assert_eq!(
                p(Some("user-1000.slice:docker:c1"), sd).unwrap(),
                abs("/user.slice/user-1000.slice/docker-c1.scope")
            );
            assert_eq!(
                p(Some(":crio:c1"), sd).unwrap(),
                abs("/system.slice/crio-c1.scope")
            );
            assert_eq!(p(Some("-.slice::c1"), sd).unwrap(), abs("/c1.scope"));
        }
        assert_eq!(p(None, true).unwrap(), abs("/system.slice/capsa-c1.scope"));
        for bad in ["/a/../b", "..", "/", "a\nb"] {
            let e = p(Some(bad), false).unwrap_err().to_string();
            assert!(e.starts_with("linux.cgroupsPath: "), "{bad}: {e}");
        }
        for bad in ["/a/b", "x.slice:p", "notaslice:p:c1", "a--b.slice:p:c1"] {
            let e = p(Some(bad), true).unwrap_err().to_string();
            assert!(e.starts_with("linux.cgroupsPath: "), "{bad}: {e}");
        }
    }

    #[test]
    fn vmm_cgroup_goes_into_every_hierarchy_of_a_hybrid_host() {
        let h = targets(&Mounts::parse(HYBRID));
        let mounts: Vec<&str> = h
            .iter()
            .map(|t| t.hierarchy.mount.to_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/net_cls,net_prio",
            ]
        );
        let u = targets(&Mounts::parse(UNIFIED));
        assert_eq!(u.len(), 1);
        assert!(u[0].hierarchy.v2 && !u[0].membership_only);
        // Absolute paths below each hierarchy's root, relative ones below
        // the own cgroup of each.
        let own = "4:memory:/process_api/x\n9:name=systemd:/\n3:net_prio,net_cls:/n\n0::/u\n";
        let dir = |i: usize, p: CgroupsPath| dir_in(&h[i].hierarchy, own, &p);
        let rel = || CgroupsPath::Relative("c".into());
        assert_eq!(dir(3, abs("/a/b")), Path::new("/sys/fs/cgroup/memory/a/b"));
        assert_eq!(
            dir(3, rel()),
            Path::new("/sys/fs/cgroup/memory/process_api/x/c")
        );
        assert_eq!(
            dir(7, rel()),
            Path::new("/sys/fs/cgroup/net_cls,net_prio/n/c")
        );
        assert_eq!(dir(6, rel()), Path::new("/sys/fs/cgroup/unified/u/c"));
        assert_eq!(dir(0, rel()), Path::new("/sys/fs/cgroup/cpu/c"));
    }

    #[test]
    fn vmm_cgroup_limits_per_hierarchy() {
        let l = Limits::for_vm(512, (Some(150_000), Some(100_000)));
        assert_eq!(l.memory_bytes, memory_limit_bytes(512));
        assert!(l.memory_bytes > 512 << 20);
        let h = targets(&Mounts::parse(HYBRID));
        let files = |i: usize| l.files(&h[i]);
        assert_eq!(
            files(0),
            [
                ("cpu.cfs_period_us", "100000".to_owned()),
                ("cpu.cfs_quota_us", "150000".to_owned())
            ]
        );
        assert_eq!(
            files(3),
            [("memory.limit_in_bytes", l.memory_bytes.to_string())]
        );
        assert_eq!(files(4), [("pids.max", PIDS_MAX.to_string())]);
        assert!(files(1).is_empty() && files(5).is_empty());
        assert!(h[6].hierarchy.v2 && h[6].membership_only && files(6).is_empty());
        let v2 = targets(&Mounts::parse(UNIFIED));
        assert_eq!(
            l.files(&v2[0]),
            [
                ("memory.max", l.memory_bytes.to_string()),
                ("pids.max", PIDS_MAX.to_string()),
                ("cpu.max", "150000 100000".to_owned())
            ]
        );
        // No quota (or -1): no CPU limit; a quota without a period: 100 ms.
        assert_eq!(Limits::for_vm(128, (None, Some(100_000))).cpu, None);
        assert_eq!(Limits::for_vm(128, (Some(-1), None)).cpu, None);
        assert_eq!(
            Limits::for_vm(128, (Some(50_000), None)).cpu,
            Some((50_000, 100_000))
        );
    }
}
