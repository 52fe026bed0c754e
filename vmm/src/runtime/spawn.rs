//! Helper processes: `capsa` re-executes itself (`/proc/self/exe`, or
//! through `capsa-jailer`) with a hidden subcommand, hands it the write end
//! of a pipe (its number in [`READY_FD_ENV`]) and waits for one JSON line
//! on it: `{"ok":true,...}` once the helper is ready,
//! `{"ok":false,"error":"..."}` when it failed. EOF without a line means
//! the helper died.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Result, RuntimeError};

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

    fn send(&mut self, value: Value) -> bool {
        match self.file.take() {
            Some(mut f) => {
                let mut line = value.to_string().into_bytes();
                line.push(b'\n');
                f.write_all(&line).is_ok()
            }
            None => true,
        }
    }

    /// Reports success with `extra` fields; false when the parent is gone
    /// (then nobody knows about this helper: it should end).
    pub fn ok(&mut self, mut extra: Value) -> bool {
        if let Value::Object(m) = &mut extra {
            m.insert("ok".into(), Value::Bool(true));
        }
        self.send(extra)
    }

    /// Reports failure.
    pub fn fail(&mut self, error: &str) {
        self.send(json!({"ok": false, "error": error}));
    }

    /// Whether the report is still to be sent.
    pub fn pending(&self) -> bool {
        self.file.is_some()
    }
}

/// A started helper that has not reported yet.
pub struct Pending {
    /// The helper.
    pub child: Child,
    reader: File,
}

/// Starts `capsa ARGS` with the caller's stdio and a readiness pipe;
/// `new_session` puts it in its own session (so that a terminal's signals
/// for the caller do not reach it).
pub fn spawn(args: &[OsString], new_session: bool) -> Result<Pending> {
    spawn_program(
        Path::new("/proc/self/exe"),
        |_| args.to_vec(),
        new_session,
        &[],
    )
}

/// Starts `program` with the arguments `args(ready_fd)` (the readiness
/// pipe's number, for a program that passes it on, as `capsa-jailer
/// --keep-fd`), the caller's stdio, and the descriptors `keep_fds`
/// inherited; otherwise as [`spawn`].
pub fn spawn_program(
    program: &Path,
    args: impl FnOnce(RawFd) -> Vec<OsString>,
    new_session: bool,
    keep_fds: &[RawFd],
) -> Result<Pending> {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::io("pipe", e.into()))?;
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args(write_fd))
        .env(READY_FD_ENV, write_fd.to_string());
    let mut inherit = keep_fds.to_vec();
    inherit.push(write_fd);
    // SAFETY: only async-signal-safe calls (fcntl, setsid) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
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
    Ok(Pending {
        child,
        reader: File::from(read),
    })
}

impl Pending {
    /// Waits for the helper's report, at most `timeout`. On failure or
    /// timeout the helper is killed and reaped, and the error returned.
    pub fn wait_ready(mut self, timeout: Duration) -> Result<(Child, Value)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = self.reader;
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(reader).take_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(timeout).ok();
        let result = match line
            .as_deref()
            .map(|l| serde_json::from_str::<Value>(l.trim()))
        {
            Some(Ok(v)) if v["ok"] == Value::Bool(true) => return Ok((self.child, v)),
            Some(Ok(v)) => v["error"]
                .as_str()
                .unwrap_or("the helper process failed")
                .to_string(),
            Some(Err(_)) => {
                let status = self.child.wait().ok();
                format!(
                    "the helper process ended without reporting ({})",
                    status.map(|s| s.to_string()).unwrap_or_default()
                )
            }
            None => format!("the helper process did not report within {timeout:?}"),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(RuntimeError::Failed(result))
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
        assert!(!ready.ok(json!({})));
        assert!(ready.parent_alive(), "nothing left to report");
    }
}
