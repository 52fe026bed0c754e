//! The container's lifecycle (OCI runtime spec, `runtime.md` § "State"):
//! `Empty` → `create` → `Created` → `start` → `Started` → `shutdown`. Owns the
//! [`Platform`] that mounts the rootfs and the mounts, the container's
//! [`Cgroup`], whether it is paused (frozen), and whether `new_machine`
//! (allowed once, in `Empty`) has run.
//!
//! Lock order: the freezer lock may be held while taking the phase lock
//! briefly (`pause`); the phase lock is never held while taking the freezer
//! lock.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::cgroup::Cgroup;
use super::platform::Platform;
use crate::protocol::ProcessId;

/// Where the container is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No `create` yet.
    Empty,
    /// Created; the init process waits for `start`.
    Created {
        /// Directory the processes are chrooted into.
        root: PathBuf,
        /// The init process.
        init: ProcessId,
    },
    /// The init process was started.
    Started {
        /// Directory the processes are chrooted into.
        root: PathBuf,
        /// The init process.
        init: ProcessId,
    },
    /// `shutdown` was called.
    ShuttingDown,
}

/// Owner of the container's phase and platform.
pub struct Lifecycle {
    phase: Mutex<Phase>,
    /// Mounting and power.
    pub platform: Arc<dyn Platform>,
    powered_off: AtomicBool,
    /// Whether `new_machine` went past its checks (read and set under the
    /// phase lock).
    machine_renewed: AtomicBool,
    cgroup: Mutex<Option<Cgroup>>,
    /// `true` while paused. `exec` holds it for reading across its fork, so
    /// no process is forked into a group that is being frozen; `pause` and
    /// `resume` hold it for writing.
    frozen: RwLock<bool>,
    /// The container's own PID namespace (`/proc/PID/ns/pid` of its init),
    /// which `exec`'d processes join; `None` when it shares the guest's.
    pid_ns: Mutex<Option<Arc<OwnedFd>>>,
}

impl Lifecycle {
    /// A container in [`Phase::Empty`].
    pub fn new(platform: Arc<dyn Platform>) -> Self {
        Lifecycle {
            phase: Mutex::new(Phase::Empty),
            platform,
            powered_off: AtomicBool::new(false),
            machine_renewed: AtomicBool::new(false),
            cgroup: Mutex::new(None),
            frozen: RwLock::new(false),
            pid_ns: Mutex::new(None),
        }
    }

    /// Records the group the container's processes join (set by `create`).
    pub fn set_cgroup(&self, cgroup: Option<Cgroup>) {
        *self.cgroup.lock().unwrap_or_else(|p| p.into_inner()) = cgroup;
    }

    /// The group the container's processes join, if the platform has one.
    pub fn cgroup(&self) -> Option<Cgroup> {
        self.cgroup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the container's PID namespace (set by `create`).
    pub fn set_pid_ns(&self, ns: Option<OwnedFd>) {
        *self.pid_ns.lock().unwrap_or_else(|p| p.into_inner()) = ns.map(Arc::new);
    }

    /// The container's PID namespace, if it has one of its own.
    pub fn pid_ns(&self) -> Option<Arc<OwnedFd>> {
        self.pid_ns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the container is paused, held for reading (see `frozen`).
    pub fn frozen(&self) -> RwLockReadGuard<'_, bool> {
        self.frozen.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the container is paused, held for writing (see `frozen`).
    pub fn frozen_mut(&self) -> RwLockWriteGuard<'_, bool> {
        self.frozen.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the phase (held across `create` and `start`, which serializes them).
    pub fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rootfs directory once created.
    pub fn root(&self) -> Option<PathBuf> {
        match &*self.lock() {
            Phase::Created { root, .. } | Phase::Started { root, .. } => Some(root.clone()),
            _ => None,
        }
    }

    /// Whether `new_machine` has run (past its checks, whatever its
    /// outcome). Read with the phase lock held.
    pub fn machine_renewed(&self) -> bool {
        self.machine_renewed.load(Ordering::SeqCst)
    }

    /// Records that `new_machine` runs. Called with the phase lock held.
    pub fn mark_machine_renewed(&self) {
        self.machine_renewed.store(true, Ordering::SeqCst);
    }

    /// Returns true exactly once, for the caller that should power off.
    pub fn claim_power_off(&self) -> bool {
        matches!(*self.lock(), Phase::ShuttingDown)
            && !self.powered_off.swap(true, Ordering::SeqCst)
    }
}
