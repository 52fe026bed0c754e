//! The container's lifecycle (OCI runtime spec, `runtime.md` § "State"):
//! `Empty` → `create` → `Created` → `start` → `Started` → `shutdown`. Owns the
//! [`Platform`] that mounts the rootfs and the mounts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
pub struct Container {
    phase: Mutex<Phase>,
    /// Mounting and power.
    pub platform: Arc<dyn Platform>,
    powered_off: AtomicBool,
}

impl Container {
    /// A container in [`Phase::Empty`].
    pub fn new(platform: Arc<dyn Platform>) -> Self {
        Container {
            phase: Mutex::new(Phase::Empty),
            platform,
            powered_off: AtomicBool::new(false),
        }
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

    /// Returns true exactly once, for the caller that should power off.
    pub fn claim_power_off(&self) -> bool {
        matches!(*self.lock(), Phase::ShuttingDown)
            && !self.powered_off.swap(true, Ordering::SeqCst)
    }
}
