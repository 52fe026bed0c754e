//! The container's cgroup v2 group: every container process joins it before
//! `execve`, and `pause`/`resume` freeze and thaw it, as Kata Containers'
//! agent does (the vCPUs keep running; only the container's processes stop).
//!
//! Interface files (Linux `Documentation/admin-guide/cgroup-v2.rst`, "Core
//! Interface Files"): a process joins by writing its pid, or `0` for the
//! writer, to `cgroup.procs`; writing `1`/`0` to `cgroup.freeze` asks the
//! kernel to freeze/thaw every process of the group and its descendants, and
//! `cgroup.events` shows `frozen 1` once all of them are frozen. A frozen
//! task still dies of SIGKILL (the cgroup v2 freezer lets fatal signals
//! through), so `kill -9` of a paused container works without thawing it.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::AgentError;

/// How long `pause` waits for `frozen 1` (a task in uninterruptible sleep
/// delays freezing); after that the group is thawed again and `pause` fails.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often `cgroup.events` is read while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Longest `cgroup.events` read (it holds two short lines).
const EVENTS_MAX_BYTES: u64 = 4096;

/// A cgroup v2 group, by its directory in a mounted cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// The group at `dir` (which must exist; nothing is checked here).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cgroup { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens `cgroup.procs` for writing (close-on-exec), for a child to
    /// join the group by writing `0` between `fork` and `execve`.
    pub fn open_procs(&self) -> Result<OwnedFd, AgentError> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| AgentError::from_io(format!("open {}", path.display()), &e))
    }

    /// Whether `cgroup.events` says `frozen 1`.
    pub fn is_frozen(&self) -> Result<bool, AgentError> {
        let path = self.dir.join("cgroup.events");
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(EVENTS_MAX_BYTES).read_to_string(&mut text))
            .map_err(|e| AgentError::from_io(format!("read {}", path.display()), &e))?;
        Ok(parse_frozen(&text))
    }

    fn write_freeze(&self, frozen: bool) -> Result<(), AgentError> {
        let path = self.dir.join("cgroup.freeze");
        std::fs::write(&path, if frozen { "1" } else { "0" })
            .map_err(|e| AgentError::from_io(format!("write {}", path.display()), &e))
    }

    /// Freezes (`true`) or thaws the group and waits until `cgroup.events`
    /// agrees, at most `timeout`. A freeze that does not complete in time is
    /// undone (the group is thawed) and fails with `ETIMEDOUT`.
    pub fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), AgentError> {
        self.write_freeze(frozen)?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if frozen {
                    let _ = self.write_freeze(false);
                }
                return Err(AgentError::Os {
                    what: format!(
                        "{} {} not {} within {timeout:?}",
                        if frozen { "freezing" } else { "thawing" },
                        self.dir.display(),
                        if frozen { "frozen" } else { "thawed" },
                    ),
                    errno: libc::ETIMEDOUT,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// The `frozen` key of a `cgroup.events` text (`populated 1\nfrozen 0\n`);
/// absent or malformed means not frozen.
pub fn parse_frozen(events: &str) -> bool {
    events
        .lines()
        .filter_map(|l| l.split_once(' '))
        .any(|(k, v)| k == "frozen" && v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_key_is_parsed() {
        assert!(parse_frozen("populated 1\nfrozen 1\n"));
        assert!(!parse_frozen("populated 1\nfrozen 0\n"));
        assert!(!parse_frozen(""));
        assert!(!parse_frozen("frozen\nfrozen 2\nxfrozen 1\n"));
    }

    #[test]
    fn missing_group_is_an_os_error() {
        let cg = Cgroup::new("/nonexistent/capsa-cgroup");
        assert!(matches!(cg.is_frozen(), Err(AgentError::Os { .. })));
        assert!(matches!(
            cg.set_frozen(true, Duration::from_millis(1)),
            Err(AgentError::Os { .. })
        ));
        assert!(cg.open_procs().is_err());
    }
}
