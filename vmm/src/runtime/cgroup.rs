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

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Result, RuntimeError};

/// The record of the cgroup directories `create` made, in the state
/// directory.
pub const RECORD_FILE: &str = "cgroup.json";

/// The kernel's list of this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// This process's cgroups.
const OWN_CGROUP: &str = "/proc/self/cgroup";

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

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point.
    pub mount: PathBuf,
    /// v1: its controllers (and a `name=` option); empty for v2.
    pub controllers: Vec<String>,
    /// Whether it is the unified (v2) hierarchy.
    pub v2: bool,
    /// A v2 hierarchy beside v1 controllers (a hybrid host): the
    /// controllers are on v1, this one only holds the processes.
    pub membership_only: bool,
    /// v1 `clone_children` (a new cpuset cgroup copies its parent's).
    pub clone_children: bool,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The hierarchies of `mountinfo` (proc(5)) that a container's cgroup
/// goes into: every v1 hierarchy (with controllers, or named) and the v2
/// one; only the v2 one when it is mounted at `/sys/fs/cgroup` or no v1
/// controller is mounted (a unified host).
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mount = PathBuf::from(unescape_octal(mount));
        let mut right = right.split(' ');
        match right.next() {
            Some("cgroup2") if !out.iter().any(|h| h.v2) => out.push(Hierarchy {
                mount,
                controllers: Vec::new(),
                v2: true,
                membership_only: false,
                clone_children: false,
            }),
            Some("cgroup") => {
                let options: Vec<&str> = right.nth(1).unwrap_or_default().split(',').collect();
                let controllers: Vec<String> = options
                    .iter()
                    .filter(|o| {
                        o.starts_with("name=")
                            || !(o.contains('=')
                                || matches!(
                                    **o,
                                    "rw" | "ro"
                                        | "noprefix"
                                        | "clone_children"
                                        | "xattr"
                                        | "cpuset_v2_mode"
                                        | "favordynmods"
                                ))
                    })
                    .map(|o| (*o).to_owned())
                    .collect();
                if controllers.is_empty() || out.iter().any(|h| h.controllers == controllers) {
                    continue;
                }
                out.push(Hierarchy {
                    mount,
                    controllers,
                    v2: false,
                    membership_only: false,
                    clone_children: options.contains(&"clone_children"),
                });
            }
            _ => {}
        }
    }
    let unified = out
        .iter()
        .any(|h| h.v2 && h.mount == Path::new("/sys/fs/cgroup"))
        || !out
            .iter()
            .any(|h| !h.v2 && !h.controllers[0].starts_with("name="));
    if unified {
        out.retain(|h| h.v2);
    } else {
        for h in out.iter_mut().filter(|h| h.v2) {
            h.membership_only = true;
        }
    }
    out
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

/// The cgroup of this process in `h`, from `/proc/self/cgroup` text
/// (cgroups(7): `ID:CONTROLLERS:PATH`; v2 is `0::PATH`).
fn own_path(own: &str, h: &Hierarchy) -> PathBuf {
    let mut wanted = h.controllers.clone();
    wanted.sort();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(list), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mut listed: Vec<String> = list
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        listed.sort();
        if listed == wanted {
            return PathBuf::from(path);
        }
    }
    PathBuf::from("/")
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
    fn files(&self, h: &Hierarchy) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if h.membership_only {
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
        let mountinfo = std::fs::read_to_string(MOUNTINFO)
            .map_err(|e| RuntimeError::io(format!("read {MOUNTINFO}"), e))?;
        let own = std::fs::read_to_string(OWN_CGROUP)
            .map_err(|e| RuntimeError::io(format!("read {OWN_CGROUP}"), e))?;
        let hierarchies = hierarchies(&mountinfo);
        if hierarchies.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "linux.cgroupsPath: no cgroup hierarchy is mounted (see {MOUNTINFO})"
            )));
        }
        let result = Self::create_in(&hierarchies, &own, path, limits, state_dir);
        if result.is_err() {
            remove_recorded(state_dir);
        }
        result
    }

    fn create_in(
        hierarchies: &[Hierarchy],
        own: &str,
        path: &CgroupsPath,
        limits: &Limits,
        state_dir: &Path,
    ) -> Result<VmCgroup> {
        let dir_of = |h: &Hierarchy| match path {
            CgroupsPath::Absolute(p) => h.mount.join(p.strip_prefix("/").unwrap_or(p)),
            CgroupsPath::Relative(p) => {
                let base = own_path(own, h);
                h.mount
                    .join(base.strip_prefix("/").unwrap_or(&base))
                    .join(p)
            }
        };
        let dirs: Vec<PathBuf> = hierarchies.iter().map(dir_of).collect();
        let record = CgroupRecord {
            created: dirs.iter().filter(|d| !d.exists()).cloned().collect(),
        };
        super::state::write_atomic(
            &state_dir.join(RECORD_FILE),
            &serde_json::to_vec(&record).unwrap_or_default(),
        )?;
        let mut procs = Vec::new();
        for (h, dir) in hierarchies.iter().zip(&dirs) {
            make_dir(h, dir)?;
            for (file, value) in limits.files(h) {
                let p = dir.join(file);
                std::fs::write(&p, &value).map_err(|e| {
                    RuntimeError::io(
                        format!(
                            "linux.cgroupsPath: cannot set the VM's limit {file}={value} in {}",
                            dir.display()
                        ),
                        e,
                    )
                })?;
            }
            let p = dir.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| RuntimeError::io(format!("open {}", p.display()), e))?;
            procs.push(OwnedFd::from(f));
        }
        Ok(VmCgroup { dirs, procs })
    }

    /// The descriptors of `cgroup.procs` that a child writes `0` into
    /// before it execs ([`join_in_child`]).
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Creates `dir` in hierarchy `h` and the missing levels above it: v2
/// enables the controllers of the limits in `cgroup.subtree_control` of
/// every level above; a v1 cpuset level gets its parent's CPUs and memory
/// nodes (a task cannot join an empty cpuset).
fn make_dir(h: &Hierarchy, dir: &Path) -> Result<()> {
    let relative = dir.strip_prefix(&h.mount).unwrap_or(dir);
    let mut current = h.mount.clone();
    for component in relative.components() {
        if h.v2 && !h.membership_only {
            enable_v2_controllers(&current)?;
        }
        let parent = current.clone();
        current.push(component);
        match std::fs::create_dir(&current) {
            Ok(()) => {
                if h.has("cpuset") && !h.clone_children {
                    inherit_cpuset(&parent, &current)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("linux.cgroupsPath: cannot create {}", current.display()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// v2: enables `memory`, `pids` and `cpu` for the children of `dir`.
fn enable_v2_controllers(dir: &Path) -> Result<()> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ["memory", "pids", "cpu"] {
        if enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        if !available.split_whitespace().any(|a| a == c) {
            return Err(RuntimeError::Failed(format!(
                "linux.cgroupsPath: the cgroup v2 controller {c:?} is not available in {} \
                 (it lists: {})",
                dir.display(),
                available.trim()
            )));
        }
        let file = dir.join("cgroup.subtree_control");
        std::fs::write(&file, format!("+{c}")).map_err(|e| {
            RuntimeError::io(
                format!("linux.cgroupsPath: cannot enable {c} in {}", file.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// v1 cpuset: copies `cpuset.cpus` and `cpuset.mems` from `parent` when
/// the new `dir` has none.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        if std::fs::read_to_string(&file)
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            let value = std::fs::read_to_string(parent.join(name))
                .map_err(|e| RuntimeError::io(format!("read {}", parent.display()), e))?;
            std::fs::write(&file, value.trim())
                .map_err(|e| RuntimeError::io(format!("write {}", file.display()), e))?;
        }
    }
    Ok(())
}

/// In a child between fork and exec: moves the calling process into the
/// cgroup whose `cgroup.procs` descriptors are `fds` ([`VmCgroup::procs_fds`]).
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
        if let Err(e) = remove_dir(&dir, Duration::from_secs(2)) {
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

/// `rmdir` of a cgroup directory, retrying `EBUSY` up to `timeout`; a
/// missing one is fine.
fn remove_dir(dir: &Path, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => return other,
        }
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
        let h = hierarchies(HYBRID);
        let mounts: Vec<&str> = h.iter().map(|h| h.mount.to_str().unwrap()).collect();
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
        let u = hierarchies(UNIFIED);
        assert_eq!(u.len(), 1);
        assert!(u[0].v2 && !u[0].membership_only);
        // The own cgroup of each, for relative paths.
        let own = "4:memory:/process_api/x\n9:name=systemd:/\n3:net_prio,net_cls:/n\n0::/u\n";
        assert_eq!(own_path(own, &h[3]), Path::new("/process_api/x"));
        assert_eq!(own_path(own, &h[7]), Path::new("/n"));
        assert_eq!(own_path(own, &h[6]), Path::new("/u"));
        assert_eq!(own_path(own, &h[0]), Path::new("/"));
    }

    #[test]
    fn vmm_cgroup_limits_per_hierarchy() {
        let l = Limits::for_vm(512, (Some(150_000), Some(100_000)));
        assert_eq!(l.memory_bytes, memory_limit_bytes(512));
        assert!(l.memory_bytes > 512 << 20);
        let h = hierarchies(HYBRID);
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
        assert!(h[6].v2 && h[6].membership_only && files(6).is_empty());
        let v2 = hierarchies(UNIFIED);
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
