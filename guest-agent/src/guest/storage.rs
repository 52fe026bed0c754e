//! The guest's [`Platform`]: the virtio-fs shares, the rootfs handlers
//! (one per [`RootfsType`]), OCI mounts, hostname and reboot; `new_machine`'s
//! steps are in [`machine`](super::machine).
//!
//! Layout under [`RUN_DIR`]: virtio-fs shares are mounted at
//! `fs/<tag>` ([`SHARES_DIR`](crate::protocol::SHARES_DIR)), outside the container's root. A block
//! device is mounted at `lower/`; when it is read-only (erofs,
//! `readonly`), a tmpfs at `rw/` holds the upper and work dirs of an
//! overlay mounted at `rootfs/`, so the container can write (writes live
//! in guest RAM and are lost at shutdown). A writable ext4 is mounted at
//! `rootfs/` directly. A virtiofs rootfs is a bind of its directory in the
//! share at `rootfs/`: writes go to the host directory at once; with
//! `readonly` (the host shares it read-only) it is bound read-only at
//! `lower/` under the same RAM overlay, so that mount points can be made. cgroup2 is mounted at `cgroup/` (outside the
//! container's root), with the group `cgroup/container` that holds the
//! container's processes.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use super::{mount, mounts};
use crate::agent_log;
use crate::protocol::{MountSpec, RootfsSpec, RootfsType, ShareSpec};
use crate::server::cgroup::Cgroup;
use crate::server::network::NetworkPlan;
use crate::server::spawn::ChildMount;
use crate::server::{AgentError, Platform};

/// Where the agent mounts the container's filesystems.
pub const RUN_DIR: &str = "/run/capsa";

/// Real mounts in the guest.
#[derive(Default)]
pub struct GuestPlatform {
    mounted: Mutex<Vec<PathBuf>>,
}

/// How one rootfs type is mounted.
enum RootfsMount {
    /// A block device: `(source, fstype, needs overlay)`.
    Block(String, &'static str, bool),
    /// A directory of a virtio-fs share.
    Share {
        /// The share's tag.
        tag: String,
        /// The directory below the share's mount point.
        dir: PathBuf,
    },
}

/// How one rootfs type is mounted, from its spec.
type RootfsHandler = fn(&RootfsSpec) -> Result<RootfsMount, AgentError>;

fn block(
    spec: &RootfsSpec,
    fstype: &'static str,
    always_ro: bool,
) -> Result<RootfsMount, AgentError> {
    let source = spec
        .source
        .clone()
        .ok_or_else(|| AgentError::InvalidParams("rootfs.source is required".into()))?;
    Ok(RootfsMount::Block(
        source,
        fstype,
        always_ro || spec.readonly,
    ))
}

fn share(spec: &RootfsSpec) -> Result<RootfsMount, AgentError> {
    let tag = spec
        .tag
        .clone()
        .ok_or_else(|| AgentError::InvalidParams("rootfs.tag is required for virtiofs".into()))?;
    let dir = PathBuf::from(spec.source.as_deref().unwrap_or(""));
    if !dir.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(AgentError::InvalidParams(format!(
            "rootfs.source {dir:?}: a virtiofs root must be a relative path without `..`"
        )));
    }
    Ok(RootfsMount::Share { tag, dir })
}

/// The handler table: one entry per rootfs type.
const HANDLERS: &[(RootfsType, RootfsHandler)] = &[
    (RootfsType::Ext4, |s| block(s, "ext4", false)),
    (RootfsType::Erofs, |s| block(s, "erofs", true)),
    (RootfsType::Virtiofs, share),
];

fn mkdir(path: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(path)
        .map_err(|e| AgentError::from_io(format!("mkdir {}", path.display()), &e))
}

impl GuestPlatform {
    fn track(&self, path: PathBuf) {
        if let Ok(mut m) = self.mounted.lock() {
            m.push(path);
        }
    }

    fn mount_tracked(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> Result<(), AgentError> {
        mkdir(target)?;
        mount(source, target, fstype, flags, data)?;
        self.track(target.to_path_buf());
        Ok(())
    }
}

/// The container's cgroup v2 group (see `container_cgroup`).
impl GuestPlatform {
    /// Syncs, unmounts (lazily, innermost first) the recorded mounts for
    /// which `unmount` says so, and syncs again; forgets them all.
    fn unmount_where(&self, unmount: impl Fn(&Path) -> bool) {
        // SAFETY: sync has no arguments.
        unsafe { libc::sync() };
        let mounted = match self.mounted.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return,
        };
        for target in mounted.iter().rev().filter(|t| unmount(t)) {
            let Ok(c) = std::ffi::CString::new(target.to_string_lossy().as_bytes()) else {
                continue;
            };
            // SAFETY: valid C string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                agent_log!(
                    "umount {}: {}",
                    target.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        // SAFETY: as above.
        unsafe { libc::sync() };
    }
}

/// `mqueue`'s magic (not in `libc`).
const MQUEUE_MAGIC: libc::c_long = 0x1980_0202;

/// Whether unmounting `target`, after a `sync`, writes nothing anywhere:
/// it is mounted read-only, or its file system lives in guest RAM (tmpfs,
/// proc, sysfs, ...) or only stacks on others (overlay, whose upper layer
/// is synced and unmounted on its own). Tearing such a mount down before
/// the power-off only costs guest time: evicting a read-only ext4 rootfs's
/// inodes and page cache took ~1 s of an emulated guest's shutdown.
/// `false` when `statfs` fails (then it is unmounted, as before).
fn keeps_nothing(target: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(target.to_string_lossy().as_bytes()) else {
        return false;
    };
    // SAFETY: plain C structs, for which all zeroes is a valid value.
    let (mut st, mut vst): (libc::statfs, libc::statvfs) = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string; the calls fill the structs.
    let failed = unsafe {
        libc::statfs(c.as_ptr(), &mut st) != 0 || libc::statvfs(c.as_ptr(), &mut vst) != 0
    };
    if failed {
        return false;
    }
    let read_only = vst.f_flag & libc::ST_RDONLY != 0;
    let in_memory = [
        libc::TMPFS_MAGIC,
        libc::PROC_SUPER_MAGIC,
        libc::SYSFS_MAGIC,
        libc::DEVPTS_SUPER_MAGIC,
        libc::CGROUP_SUPER_MAGIC,
        libc::CGROUP2_SUPER_MAGIC,
        libc::OVERLAYFS_SUPER_MAGIC,
        MQUEUE_MAGIC,
    ]
    .contains(&st.f_type);
    read_only || in_memory
}

fn container_group() -> PathBuf {
    Path::new(RUN_DIR).join("cgroup").join("container")
}

/// The `oom_kill` count of the container group's `memory.events`
/// (cgroup-v2.rst; Linux 4.13): processes of the container the OOM killer
/// killed, whether the guest ran out of memory or the group hit a limit.
/// The guest kernel has no `/proc/vmstat` counters (`VM_EVENT_COUNTERS`
/// is off), so this is the one place that counts them.
fn container_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string(container_group().join("memory.events")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

impl GuestPlatform {
    /// Mounts share `tag` at its mount point unless it is mounted already;
    /// returns the mount point.
    fn mount_share(&self, tag: &str) -> Result<PathBuf, AgentError> {
        let target = ShareSpec::mount_point(tag)
            .map(PathBuf::from)
            .ok_or_else(|| AgentError::InvalidParams(format!("bad virtio-fs tag {tag:?}")))?;
        let known = self
            .mounted
            .lock()
            .map(|m| m.contains(&target))
            .unwrap_or(false);
        if !known {
            // No nosuid/nodev: the container's root may be in the share
            // (binds inherit the flags of their source); bind mounts of
            // volumes get their own flags.
            self.mount_tracked(tag, &target, "virtiofs", 0, "")?;
        }
        Ok(target)
    }
}

impl Platform for GuestPlatform {
    fn mount_shares(&self, shares: &[ShareSpec]) -> Result<(), AgentError> {
        for s in shares {
            self.mount_share(&s.tag)?;
        }
        Ok(())
    }

    fn mount_rootfs(&self, spec: &RootfsSpec) -> Result<PathBuf, AgentError> {
        let handler = HANDLERS
            .iter()
            .find(|(t, _)| *t == spec.fstype)
            .map(|(_, h)| *h)
            .ok_or_else(|| AgentError::InvalidParams("unsupported rootfs type".into()))?;
        let run = Path::new(RUN_DIR);
        let root = run.join("rootfs");
        let lower = run.join("lower");
        match handler(spec)? {
            RootfsMount::Block(source, fstype, overlay) => {
                if !overlay {
                    self.mount_tracked(&source, &root, fstype, 0, "")?;
                    return Ok(root);
                }
                let ro = if spec.readonly || fstype == "erofs" {
                    libc::MS_RDONLY
                } else {
                    0
                };
                self.mount_tracked(&source, &lower, fstype, ro, "")?;
            }
            RootfsMount::Share { tag, dir } => {
                let source = self.mount_share(&tag)?.join(dir);
                let source = source.to_string_lossy();
                if !spec.readonly {
                    // Write-through: the container's writes reach the host.
                    self.mount_tracked(&source, &root, "", libc::MS_BIND, "")?;
                    return Ok(root);
                }
                // Read-only (the host shares it read-only too): the lower
                // layer of an overlay, so that mount points can still be
                // made (in RAM); the caller makes `/` read-only last.
                self.mount_tracked(&source, &lower, "", libc::MS_BIND, "")?;
                mount(
                    "",
                    &lower,
                    "",
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    "",
                )?;
            }
        }
        let rw = run.join("rw");
        self.mount_tracked("tmpfs", &rw, "tmpfs", 0, "mode=0755")?;
        mkdir(&rw.join("upper"))?;
        mkdir(&rw.join("work"))?;
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            rw.join("upper").display(),
            rw.join("work").display()
        );
        self.mount_tracked("overlay", &root, "overlay", 0, &data)?;
        Ok(root)
    }

    fn apply_mounts(
        &self,
        root: &Path,
        specs: &[MountSpec],
        pid_namespace: bool,
    ) -> Result<Vec<ChildMount>, AgentError> {
        let mut deferred_at: Vec<PathBuf> = Vec::new();
        let mut deferred = Vec::new();
        let group = container_group();
        for spec in specs {
            let as_bind = group
                .is_dir()
                .then(|| mounts::cgroup_as_group_bind(spec, &group))
                .flatten();
            let spec = as_bind.as_ref().unwrap_or(spec);
            if pid_namespace && mounts::is_deferred(spec, &deferred_at) {
                let inside = deferred_at
                    .iter()
                    .any(|d| Path::new(&spec.destination).starts_with(d));
                let (calls, target) = mounts::child_mounts(root, spec, !inside)?;
                deferred.extend(calls);
                deferred_at.push(PathBuf::from(&spec.destination));
                // Made by the init; unmounted with the rest at shutdown.
                self.track(target);
                continue;
            }
            if let Some(target) = mounts::apply(root, spec)? {
                self.track(target);
            }
        }
        Ok(deferred)
    }

    fn oom_kills(&self) -> u64 {
        container_oom_kills().unwrap_or(0)
    }

    fn set_hostname(&self, hostname: &str) -> Result<(), AgentError> {
        // SAFETY: pointer and length of a valid byte slice.
        if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
            return Err(AgentError::last_os("sethostname"));
        }
        Ok(())
    }

    fn configure_network(&self, plan: &NetworkPlan) -> Result<(), AgentError> {
        super::network::configure(plan)
    }

    fn set_sysctl(&self, path: &str, value: &str) -> Result<(), AgentError> {
        let file = Path::new("/proc/sys").join(path);
        // procfs takes a parameter in one write, as sysctl(8) does it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|e| AgentError::from_io(format!("sysctl {}", file.display()), &e))
    }

    fn container_cgroup(&self) -> Option<Cgroup> {
        let group = container_group();
        let mount_point = group.parent()?;
        let made = mkdir(mount_point)
            .and_then(|_| {
                mount(
                    "cgroup2",
                    mount_point,
                    "cgroup2",
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    "",
                )
            })
            .and_then(|_| {
                // The memory controller in the group: its `memory.events`
                // counts the container's OOM kills.
                let control = mount_point.join("cgroup.subtree_control");
                if let Err(e) = std::fs::write(&control, "+memory") {
                    agent_log!("no memory controller for the container (OOM kills not seen): {e}");
                }
                mkdir(&group)
            });
        match made {
            Ok(()) => Some(Cgroup::new(group)),
            Err(e) => {
                agent_log!("no container cgroup (pause will fail): {e}");
                None
            }
        }
    }

    fn reseed_rng(&self, entropy: &[u8]) -> Result<(), AgentError> {
        super::machine::reseed_rng(entropy)
    }

    fn set_realtime_clock(&self, realtime_ns: u64) -> Result<(), AgentError> {
        super::machine::set_realtime_clock(realtime_ns)
    }

    fn bind_virtio_mmio(&self, device: &str) -> Result<(), AgentError> {
        super::machine::bind_virtio_mmio(device)
    }

    fn unmount_all(&self) {
        self.unmount_where(|_| true);
    }

    fn unmount_for_power_off(&self) {
        self.unmount_where(|target| !keeps_nothing(target));
    }

    fn power_off(&self) {
        // The kernel cmdline has `reboot=k`: the reboot goes through the
        // i8042 reset line, which the VMM turns into a clean exit.
        // SAFETY: reboot(2) with a valid command; returns only on failure.
        if unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) } != 0 {
            agent_log!("reboot: {}", std::io::Error::last_os_error());
        }
    }
}
