//! `create` and `delete` of one container id, one at a time, and the
//! processes of a `create` recorded before they report ready (issue 14
//! item 8).
//!
//! - [`IdLock`]: an exclusive `flock(2)` on `<root>/.locks/<id>`, held by
//!   `create` from before its state directory exists until it returns, and
//!   by `delete`. A `delete` while a `create` of the id runs either fails
//!   (without `--force`) or, with `--force`, kills what the `create`
//!   started and waits for it to clean up; it never removes the state
//!   directory from under a `create` that then records a VM nobody knows.
//! - [`LaunchRecord`]: `<state dir>/launch.json`, written by `create` as
//!   soon as it has started the VMM process (through its jailer), long
//!   before readiness and `state.json`. A `create` killed in between leaves
//!   a state directory without `state.json`; `delete --force` of it kills
//!   the recorded processes (by pid and start time) before removing it.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::host_process::{kill_and_wait, HostProcess};
use super::state::{write_atomic, Root};
use super::{Result, RuntimeError};

/// Name of the launch record in a state directory.
pub const LAUNCH_FILE: &str = "launch.json";

/// How long `delete --force` waits for the killed processes of a
/// `create` to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The exclusive lock on one container id (see the module docs); released
/// when dropped.
#[derive(Debug)]
pub struct IdLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// Whether to wait for a lock another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Block until it is free.
    Block,
    /// Return `None` at once.
    Try,
}

impl IdLock {
    /// Locks id `id` of `root` (creating `<root>/.locks/`); `None` when
    /// another process holds it and `wait` is [`Wait::Try`]. The caller
    /// validated the id.
    pub fn acquire(root: &Root, id: &str, wait: Wait) -> Result<Option<IdLock>> {
        let dir = root.path.join(".locks");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("mkdir {}", dir.display()), e))?;
        let path = dir.join(id);
        let arg = match wait {
            Wait::Block => FlockArg::LockExclusive,
            Wait::Try => FlockArg::LockExclusiveNonblock,
        };
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| RuntimeError::io(format!("open {}", path.display()), e))?;
            let lock = match Flock::lock(file, arg) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => {
                    return Err(RuntimeError::io(
                        format!("flock {}", path.display()),
                        e.into(),
                    ))
                }
            };
            // A holder that finished removed the file after we opened it:
            // lock the one at the path now.
            let ours = lock
                .metadata()
                .map_err(|e| RuntimeError::io(format!("stat {}", path.display()), e))?;
            match std::fs::symlink_metadata(&path) {
                Ok(md) if (md.dev(), md.ino()) == (ours.dev(), ours.ino()) => {
                    return Ok(Some(IdLock { _lock: lock, path }))
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file (the id is gone); the lock is released when
    /// `self` drops. A process waiting on the removed file retries on a
    /// new one.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `create` started, recorded before the VMM process reports ready
/// (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchRecord {
    /// The process `create` started (the jailer, or the unjailed VMM
    /// process).
    pub launcher: Option<HostProcess>,
    /// The jailer's pid file of the jailed VMM process (host path), which
    /// the jailer writes just after the VMM's exec.
    pub jail_pid_file: Option<PathBuf>,
}

impl LaunchRecord {
    /// Writes it into state directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(
            &dir.join(LAUNCH_FILE),
            &serde_json::to_vec(self).unwrap_or_default(),
        )
    }

    /// The record in state directory `dir`, if any.
    pub fn read(dir: &Path) -> Option<LaunchRecord> {
        let bytes = super::state::read_small_untrusted(&dir.join(LAUNCH_FILE), 64 << 10)?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The recorded processes that are still the ones started.
    fn processes(&self) -> Vec<HostProcess> {
        let vmm = self.jail_pid_file.as_ref().and_then(|p| {
            let pid = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
            HostProcess::of(pid)
        });
        self.launcher.into_iter().chain(vmm).collect()
    }

    /// SIGKILLs the processes recorded in state directory `dir` (each only
    /// if it is still the process started) and waits for them to be gone.
    pub fn kill_recorded(dir: &Path) {
        if let Some(record) = LaunchRecord::read(dir) {
            kill_and_wait(&record.processes(), KILL_WAIT);
        }
    }
}
