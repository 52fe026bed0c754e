//! What differs between the guest and a host test: mounting, the
//! container's cgroup, power, and what makes a restored guest a new
//! machine (RNG, clock, devices).
//!
//! The guest's implementation is [`GuestPlatform`](crate::guest::GuestPlatform)
//! (real mounts, a cgroup2 mount of its own, `sethostname`, `reboot`, the
//! kernel's RNG ioctls, `clock_settime`, driver-core binds);
//! [`DirectoryPlatform`] uses a plain host directory as the rootfs, an
//! existing host cgroup v2 group if the test gives one, and only records
//! mounts, hostname, network, sysctls, `new_machine`'s steps and power-off,
//! so protocol tests run the real server without touching the host's
//! mounts, RNG, clock or devices.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::cgroup::Cgroup;
use super::error::AgentError;
use super::machine::bind_error;
use super::network::NetworkPlan;
use super::spawn::ChildMount;
use crate::protocol::{MountSpec, RootfsSpec, ShareSpec};

/// The machine-specific steps of the agent.
pub trait Platform: Send + Sync + 'static {
    /// Mounts the virtio-fs shares at their mount points
    /// ([`ShareSpec::mount_point`]), before the rootfs.
    fn mount_shares(&self, shares: &[ShareSpec]) -> Result<(), AgentError>;
    /// Mounts the container's rootfs and returns the directory its processes
    /// are chrooted into (`/` means no chroot).
    fn mount_rootfs(&self, rootfs: &RootfsSpec) -> Result<PathBuf, AgentError>;
    /// Applies the OCI mounts below `root`, in order. With
    /// `pid_namespace`, the `proc` mounts (and any mount below one) are not
    /// made but returned, for the container's init to make from inside its
    /// new PID namespace (a `proc` instance shows the namespace of the
    /// process that mounts it).
    fn apply_mounts(
        &self,
        root: &Path,
        mounts: &[MountSpec],
        pid_namespace: bool,
    ) -> Result<Vec<ChildMount>, AgentError>;
    /// Sets the hostname.
    fn set_hostname(&self, hostname: &str) -> Result<(), AgentError>;
    /// Brings `lo` up and configures the container's interfaces
    /// (`create`'s `network`, checked).
    fn configure_network(&self, plan: &NetworkPlan) -> Result<(), AgentError>;
    /// Writes `value` to the kernel parameter `/proc/sys/<path>` (`path`
    /// from [`sysctl_path`](crate::protocol::sysctl_path), checked).
    fn set_sysctl(&self, path: &str, value: &str) -> Result<(), AgentError>;
    /// Prepares the cgroup v2 group that every container process joins
    /// before `execve` and that `pause` freezes. `None` when the machine has
    /// none: processes then run outside any group and `pause`/`resume` fail
    /// with `EOPNOTSUPP`. Called once, by `create`; failures are the
    /// platform's to log.
    fn container_cgroup(&self) -> Option<Cgroup>;
    /// How many of the container's processes the OOM killer has killed
    /// (the guest: its group's `memory.events`).
    fn oom_kills(&self) -> u64;
    /// Mixes `entropy` into the kernel's entropy pool, credited as 8 bits
    /// per byte, then reseeds the kernel's CRNG (`new_machine`), so that a
    /// guest restored from a template does not draw the template's random
    /// numbers. The platform keeps no copy of the bytes.
    fn reseed_rng(&self, entropy: &[u8]) -> Result<(), AgentError>;
    /// Sets `CLOCK_REALTIME` to `realtime_ns`, in ns since the Unix epoch
    /// (`new_machine`).
    fn set_realtime_clock(&self, realtime_ns: u64) -> Result<(), AgentError>;
    /// Binds the platform device `device` (`virtio-mmio.<N>`, checked by
    /// [`virtio_mmio_slot`](crate::protocol::virtio_mmio_slot)) to the
    /// virtio-mmio driver and returns once the driver has probed it (its
    /// `/dev/vdX`, network interface or virtio-fs tag exists). Errors name
    /// the device ([`bind_error`]): `ENODEV` when the slot holds no device,
    /// `EBUSY` when it is bound already.
    fn bind_virtio_mmio(&self, device: &str) -> Result<(), AgentError>;
    /// Syncs and unmounts what `mount_rootfs`/`apply_mounts` mounted.
    fn unmount_all(&self);
    /// Before [`power_off`](Platform::power_off): syncs, and unmounts only
    /// what an unmount still writes to (a writable disk's file system);
    /// by default everything, as [`unmount_all`](Platform::unmount_all).
    fn unmount_for_power_off(&self) {
        self.unmount_all();
    }
    /// Powers the machine off (the guest reboots, which the VMM turns into
    /// its exit). May return, e.g. in tests.
    fn power_off(&self);
}

/// One step of `new_machine` as [`DirectoryPlatform`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineStep {
    /// `reseed_rng` with this many bytes (the bytes are not kept).
    Reseed {
        /// Length of the entropy, bytes.
        bytes: usize,
    },
    /// `set_realtime_clock`.
    Clock {
        /// The time set, ns since the Unix epoch.
        realtime_ns: u64,
    },
    /// `bind_virtio_mmio` of this device.
    Bind(String),
}

/// A rootfs that is a directory on the local machine (`rootfs.source`);
/// mounts, hostname, `new_machine`'s steps and power-off are recorded, not
/// performed.
#[derive(Default)]
pub struct DirectoryPlatform {
    /// An existing cgroup v2 directory (e.g. made by a test under the
    /// host's cgroup2 mount) for the container's processes; `None`: no
    /// cgroup, `pause`/`resume` fail with `EOPNOTSUPP`.
    pub cgroup: Option<PathBuf>,
    /// Mounts received by `create`.
    pub mounts: Mutex<Vec<MountSpec>>,
    /// Shares received by `create`.
    pub shares: Mutex<Vec<ShareSpec>>,
    /// Hostname received by `create`.
    pub hostname: Mutex<Option<String>>,
    /// Network plan received by `create`.
    pub network: Mutex<Option<NetworkPlan>>,
    /// Kernel parameters written, `(path below /proc/sys, value)`, in order.
    pub sysctls: Mutex<Vec<(String, String)>>,
    /// A path whose `set_sysctl` fails with `ENOENT` (as a key that names
    /// no parameter does in the guest).
    pub missing_sysctl: Option<String>,
    /// `new_machine`'s steps, in order.
    pub machine: Mutex<Vec<MachineStep>>,
    /// A device whose bind fails with `ENODEV` (as an empty slot does in
    /// the guest). Binding a device twice fails with `EBUSY`.
    pub missing_device: Option<String>,
    /// Whether `power_off` was called.
    pub powered_off: AtomicBool,
    /// What `oom_kills` returns.
    pub oom_kills: AtomicU64,
}

impl Platform for DirectoryPlatform {
    fn mount_shares(&self, shares: &[ShareSpec]) -> Result<(), AgentError> {
        if let Ok(mut s) = self.shares.lock() {
            s.extend_from_slice(shares);
        }
        Ok(())
    }

    fn mount_rootfs(&self, rootfs: &RootfsSpec) -> Result<PathBuf, AgentError> {
        let source = rootfs
            .source
            .as_deref()
            .ok_or_else(|| AgentError::InvalidParams("rootfs.source is required".into()))?;
        let path = Path::new(source);
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(path.to_path_buf()),
            Ok(_) => Err(AgentError::MountFailed {
                path: source.to_string(),
                errno: libc::ENOTDIR,
            }),
            Err(e) => Err(AgentError::MountFailed {
                path: source.to_string(),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            }),
        }
    }

    fn apply_mounts(
        &self,
        _root: &Path,
        mounts: &[MountSpec],
        _pid_namespace: bool,
    ) -> Result<Vec<ChildMount>, AgentError> {
        if let Ok(mut m) = self.mounts.lock() {
            m.extend_from_slice(mounts);
        }
        Ok(Vec::new())
    }

    fn oom_kills(&self) -> u64 {
        self.oom_kills.load(Ordering::SeqCst)
    }

    fn set_hostname(&self, hostname: &str) -> Result<(), AgentError> {
        if let Ok(mut h) = self.hostname.lock() {
            *h = Some(hostname.to_string());
        }
        Ok(())
    }

    fn configure_network(&self, plan: &NetworkPlan) -> Result<(), AgentError> {
        if let Ok(mut n) = self.network.lock() {
            *n = Some(plan.clone());
        }
        Ok(())
    }

    fn set_sysctl(&self, path: &str, value: &str) -> Result<(), AgentError> {
        if self.missing_sysctl.as_deref() == Some(path) {
            return Err(AgentError::Os {
                what: format!("sysctl /proc/sys/{path}"),
                errno: libc::ENOENT,
            });
        }
        if let Ok(mut s) = self.sysctls.lock() {
            s.push((path.to_string(), value.to_string()));
        }
        Ok(())
    }

    fn container_cgroup(&self) -> Option<Cgroup> {
        self.cgroup.clone().map(Cgroup::new)
    }

    fn reseed_rng(&self, entropy: &[u8]) -> Result<(), AgentError> {
        self.record(MachineStep::Reseed {
            bytes: entropy.len(),
        });
        Ok(())
    }

    fn set_realtime_clock(&self, realtime_ns: u64) -> Result<(), AgentError> {
        self.record(MachineStep::Clock { realtime_ns });
        Ok(())
    }

    fn bind_virtio_mmio(&self, device: &str) -> Result<(), AgentError> {
        if self.missing_device.as_deref() == Some(device) {
            return Err(bind_error(device, libc::ENODEV));
        }
        let mut steps = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let step = MachineStep::Bind(device.to_string());
        if steps.contains(&step) {
            return Err(bind_error(device, libc::EBUSY));
        }
        steps.push(step);
        Ok(())
    }

    fn unmount_all(&self) {}

    fn power_off(&self) {
        self.powered_off.store(true, Ordering::SeqCst);
    }
}

impl DirectoryPlatform {
    fn record(&self, step: MachineStep) {
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(step);
    }
}
