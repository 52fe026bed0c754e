//! The guest's [`Platform`]: the rootfs handlers (one per [`RootfsType`]),
//! OCI mounts, hostname and reboot.
//!
//! Layout under [`RUN_DIR`]: the device or share is mounted at `lower/`; when
//! it is read-only (erofs, `readonly`) or shared (virtio-fs), a tmpfs at
//! `rw/` holds the upper and work dirs of an overlay mounted at `rootfs/`,
//! so the container can write (writes live in guest RAM and are lost at
//! shutdown). A writable ext4 is mounted at `rootfs/` directly. cgroup2 is
//! mounted at `cgroup/` (outside the container's root), with the group
//! `cgroup/container` that holds the container's processes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{mount, mounts};
use crate::agent_log;
use crate::protocol::{MountSpec, RootfsSpec, RootfsType};
use crate::server::cgroup::Cgroup;
use crate::server::network::NetworkPlan;
use crate::server::{AgentError, Platform};

/// Where the agent mounts the container's filesystems.
pub const RUN_DIR: &str = "/run/capsa";

/// Real mounts in the guest.
#[derive(Default)]
pub struct GuestPlatform {
    mounted: Mutex<Vec<PathBuf>>,
}

/// How one rootfs type is mounted: `(source, fstype, needs overlay)`.
type RootfsHandler = fn(&RootfsSpec) -> Result<(String, &'static str, bool), AgentError>;

fn block(
    spec: &RootfsSpec,
    fstype: &'static str,
    always_ro: bool,
) -> Result<(String, &'static str, bool), AgentError> {
    let source = spec
        .source
        .clone()
        .ok_or_else(|| AgentError::InvalidParams("rootfs.source is required".into()))?;
    Ok((source, fstype, always_ro || spec.readonly))
}

/// The handler table: one entry per rootfs type.
const HANDLERS: &[(RootfsType, RootfsHandler)] = &[
    (RootfsType::Ext4, |s| block(s, "ext4", false)),
    (RootfsType::Erofs, |s| block(s, "erofs", true)),
    (RootfsType::Virtiofs, |s| {
        let tag = s.tag.clone().ok_or_else(|| {
            AgentError::InvalidParams("rootfs.tag is required for virtiofs".into())
        })?;
        Ok((tag, "virtiofs", true))
    }),
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

impl Platform for GuestPlatform {
    fn mount_rootfs(&self, spec: &RootfsSpec) -> Result<PathBuf, AgentError> {
        let handler = HANDLERS
            .iter()
            .find(|(t, _)| *t == spec.fstype)
            .map(|(_, h)| *h)
            .ok_or_else(|| AgentError::InvalidParams("unsupported rootfs type".into()))?;
        let (source, fstype, overlay) = handler(spec)?;
        let run = Path::new(RUN_DIR);
        let root = run.join("rootfs");
        if !overlay {
            self.mount_tracked(&source, &root, fstype, 0, "")?;
            return Ok(root);
        }
        let lower = run.join("lower");
        let ro = if spec.readonly || fstype == "erofs" {
            libc::MS_RDONLY
        } else {
            0
        };
        self.mount_tracked(&source, &lower, fstype, ro, "")?;
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

    fn apply_mounts(&self, root: &Path, specs: &[MountSpec]) -> Result<(), AgentError> {
        for spec in specs {
            if let Some(target) = mounts::apply(root, spec)? {
                self.track(target);
            }
        }
        Ok(())
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

    fn container_cgroup(&self) -> Option<Cgroup> {
        let mount_point = Path::new(RUN_DIR).join("cgroup");
        let group = mount_point.join("container");
        let made = mkdir(&mount_point)
            .and_then(|_| {
                mount(
                    "cgroup2",
                    &mount_point,
                    "cgroup2",
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    "",
                )
            })
            .and_then(|_| mkdir(&group));
        match made {
            Ok(()) => Some(Cgroup::new(group)),
            Err(e) => {
                agent_log!("no container cgroup (pause will fail): {e}");
                None
            }
        }
    }

    fn unmount_all(&self) {
        // SAFETY: sync has no arguments.
        unsafe { libc::sync() };
        let mounted = match self.mounted.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return,
        };
        for target in mounted.iter().rev() {
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

    fn power_off(&self) {
        // The kernel cmdline has `reboot=k`: the reboot goes through the
        // i8042 reset line, which the VMM turns into a clean exit.
        // SAFETY: reboot(2) with a valid command; returns only on failure.
        if unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) } != 0 {
            agent_log!("reboot: {}", std::io::Error::last_os_error());
        }
    }
}
