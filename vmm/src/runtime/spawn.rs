//! Helper processes: `capsa` re-executes itself (`/proc/self/exe`, or
//! through `capsa-jailer`) with a hidden subcommand, hands it the write end
//! of a pipe (its number in [`READY_FD_ENV`]) and waits for one JSON line
//! on it, a [`Report`]: `{"ready":R}` once the helper is ready, where `R`
//! is the helper's own typed report (the VMM process's
//! [`VmmReady`](super::vmm_process::VmmReady), an exec'd process's
//! [`ExecReady`](super::exec::ExecReady)), or `{"failed":"..."}`. Both ends
//! are the same build of capsa and use the same type. EOF without a line
//! means the helper died.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Result, RuntimeError};

/// The one line a helper writes on its readiness pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Report<R> {
    /// The helper is ready; `R` is what it tells its parent.
    Ready(R),
    /// The helper failed; the message says why.
    Failed(String),
}

/// Environment variable with the number of the readiness pipe's fd.
pub const READY_FD_ENV: &str = "_CAPSA_READY_FD";

/// The helper's end of the readiness pipe.
pub struct Ready {
    file: Option<File>,
}

impl Ready {
    /// Takes the pipe named by [`READY_FD_ENV`] (and removes the variable,
    /// so that the container does not see it).
    pub fn from_env() -> Ready {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        std::env::remove_var(READY_FD_ENV);
        // SAFETY: the parent passed this fd to us for this purpose only; it
        // is owned by nobody else in this process.
        let file = fd.map(|fd| unsafe { File::from_raw_fd(fd) });
        if let Some(f) = &file {
            // Not inherited by what this process starts.
            let _ = nix::fcntl::fcntl(
                f,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        Ready { file }
    }

    /// Whether the process waiting for the report is still there (a
    /// `create` killed by an engine's timeout: the helper should give up
    /// rather than leave a VM nobody knows about). Told by the pipe, not
    /// by the parent pid: a jailed helper's parent is the jailer. A pipe's
    /// write end polls `POLLERR` once no reader is left (pipe(7)).
    pub fn parent_alive(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let Some(f) = &self.file else {
            return true;
        };
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
            Err(_) => true,
        }
    }

    fn send<R: Serialize>(&mut self, report: &Report<R>) -> bool {
        match self.file.take() {
            Some(mut f) => {
                let Ok(mut line) = serde_json::to_vec(report) else {
                    return false;
                };
                line.push(b'\n');
                f.write_all(&line).is_ok()
            }
            None => true,
        }
    }

    /// Reports readiness with `report`; false when the parent is gone (then
    /// nobody knows about this helper: it should end).
    pub fn ready<R: Serialize>(&mut self, report: R) -> bool {
        self.send(&Report::Ready(report))
    }

    /// Reports failure.
    pub fn fail(&mut self, error: &str) {
        self.send(&Report::<()>::Failed(error.to_string()));
    }

    /// Whether the report is still to be sent.
    pub fn pending(&self) -> bool {
        self.file.is_some()
    }
}

/// A started helper that has not reported yet.
pub struct Helper {
    /// The helper.
    pub child: Child,
    /// The read end of its readiness pipe.
    pub report: ReportReader,
}

/// The read end of a helper's readiness pipe.
pub struct ReportReader {
    file: File,
}

/// Starts `capsa ARGS` with the caller's stdio and a readiness pipe;
/// `new_session` puts it in its own session (so that a terminal's signals
/// for the caller do not reach it).
pub fn spawn(args: &[OsString], new_session: bool) -> Result<Helper> {
    spawn_program(
        Path::new("/proc/self/exe"),
        |_| args.to_vec(),
        new_session,
        &[],
        &[],
    )
}

/// Starts `program` with the arguments `args(ready_fd)` (the readiness
/// pipe's number, for a program that passes it on, as `capsa-jailer
/// --keep-fd`), the caller's stdio, and the descriptors `keep_fds`
/// inherited, in the cgroup whose `cgroup.procs` descriptors are
/// `cgroup` (none: the caller's; see
/// [`super::cgroup::VmCgroup::procs_fds`]); otherwise as [`spawn`].
pub fn spawn_program(
    program: &Path,
    args: impl FnOnce(RawFd) -> Vec<OsString>,
    new_session: bool,
    keep_fds: &[RawFd],
    cgroup: &[RawFd],
) -> Result<Helper> {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::io("pipe", e.into()))?;
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args(write_fd))
        .env(READY_FD_ENV, write_fd.to_string());
    let mut inherit = keep_fds.to_vec();
    inherit.push(write_fd);
    let cgroup = cgroup.to_vec();
    // SAFETY: only async-signal-safe calls (write, fcntl, setsid) between
    // fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            super::cgroup::join_in_child(&cgroup)?;
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if new_session {
                libc::setsid();
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        RuntimeError::io(
            format!(
                "cannot start a capsa helper process ({})",
                program.display()
            ),
            e,
        )
    })?;
    drop(write);
    Ok(Helper {
        child,
        report: ReportReader {
            file: File::from(read),
        },
    })
}

impl Helper {
    /// Waits for the helper's report, at most `timeout`. On failure or
    /// timeout the helper is killed and reaped, and the error returned.
    pub fn wait_ready<R: DeserializeOwned>(mut self, timeout: Duration) -> Result<(Child, R)> {
        match self.report.wait(&mut self.child, timeout) {
            Ok(r) => Ok((self.child, r)),
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(e)
            }
        }
    }
}

impl ReportReader {
    /// Waits for the report of `helper`, at most `timeout`; an error when
    /// it failed, ended without a report (then it is reaped) or did not
    /// report in time. Does not kill it.
    pub fn wait<R: DeserializeOwned>(self, helper: &mut Child, timeout: Duration) -> Result<R> {
        let (tx, rx) = std::sync::mpsc::channel();
        let file = self.file;
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(file).take_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(timeout) else {
            return Err(RuntimeError::Failed(format!(
                "the helper process did not report within {timeout:?}"
            )));
        };
        match serde_json::from_str::<Report<R>>(line.trim()) {
            Ok(Report::Ready(r)) => Ok(r),
            Ok(Report::Failed(e)) => Err(RuntimeError::Failed(e)),
            Err(_) => {
                let status = helper.wait().ok();
                // A VMM killed by its seccomp filter: say so (SIGSYS).
                let why = status
                    .as_ref()
                    .and_then(crate::seccomp::describe_sigsys)
                    .map(|w| format!("; {w}"))
                    .unwrap_or_default();
                Err(RuntimeError::Failed(format!(
                    "the helper process ended without reporting ({}){why}",
                    status.map(|s| s.to_string()).unwrap_or_default()
                )))
            }
        }
    }
}

trait TakeLine {
    fn take_line(&mut self, line: &mut String) -> std::io::Result<usize>;
}

impl<R: std::io::Read> TakeLine for BufReader<R> {
    /// One line of at most 64 KiB.
    fn take_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        let mut limited = std::io::Read::take(self, 64 << 10);
        BufReader::new(&mut limited).read_line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_alive_follows_the_reader_of_the_pipe() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut ready = Ready {
            file: Some(File::from(write)),
        };
        assert!(ready.parent_alive());
        drop(read);
        assert!(!ready.parent_alive());
        // Reporting to a reader that is gone fails instead of raising
        // SIGPIPE (Rust ignores it).
        assert!(!ready.ready(()));
        assert!(ready.parent_alive(), "nothing left to report");
    }

    #[test]
    fn reports_are_typed_both_ways() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut ready = Ready {
            file: Some(File::from(write)),
        };
        assert!(ready.ready(7u64));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let reader = ReportReader {
            file: File::from(read),
        };
        let got: u64 = reader.wait(&mut child, Duration::from_secs(5)).unwrap();
        assert_eq!(got, 7);
        child.wait().unwrap();

        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut ready = Ready {
            file: Some(File::from(write)),
        };
        ready.fail("no kernel");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let reader = ReportReader {
            file: File::from(read),
        };
        let err = reader
            .wait::<u64>(&mut child, Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(err.to_string(), "no kernel");
        child.wait().unwrap();
    }
}
