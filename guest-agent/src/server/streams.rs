//! Stdio streams: the pipes or pty of each process and the single-use tokens
//! that name them, plus the relays that run once the host attaches.
//!
//! No output is lost and no buffer in the agent grows: a process writes into
//! a kernel pipe (or pty) from its start; until the host attaches the
//! matching stream the bytes wait in that pipe (64 KiB on Linux), and a
//! process that fills it blocks, exactly as with a slow reader. Once attached,
//! a relay thread copies between the pipe and the connection with a 64 KiB
//! buffer. The host may therefore attach streams before or after `start`, and
//! even after the process exited.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::error::AgentError;
use super::spawn::ChildStdio;
use super::Connection;
use crate::protocol::{ConsoleSize, StreamTokens};

const RELAY_BUF: usize = 64 * 1024;

/// The agent's end of one stream, waiting for the host to attach.
pub enum Endpoint {
    /// Write end of the process's stdin pipe.
    Stdin(File),
    /// Read end of the process's stdout or stderr pipe.
    Output(File),
    /// The pty master.
    Tty(File),
}

/// The child's side of a process's stdio, kept until the process is spawned.
pub struct ChildFds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty_slave: Option<OwnedFd>,
}

impl ChildFds {
    /// The descriptors for [`spawn`](super::spawn::spawn).
    pub fn as_child_stdio(&self) -> Result<ChildStdio, AgentError> {
        if let Some(slave) = &self.tty_slave {
            return Ok(ChildStdio::Tty {
                slave: slave.as_raw_fd(),
            });
        }
        match (&self.stdin, &self.stdout, &self.stderr) {
            (Some(i), Some(o), Some(e)) => Ok(ChildStdio::Pipes {
                stdin: i.as_raw_fd(),
                stdout: o.as_raw_fd(),
                stderr: e.as_raw_fd(),
            }),
            _ => Err(AgentError::Internal("incomplete stdio".into())),
        }
    }
}

/// A process's stdio, prepared before it is spawned.
pub struct PreparedStdio {
    /// Child-side descriptors (closed in the agent after the spawn).
    pub child: ChildFds,
    /// Tokens handed to the host.
    pub tokens: StreamTokens,
    /// The pty master, for `resize`.
    pub tty_master: Option<Arc<File>>,
}

/// Owner of the streams waiting to be attached, by token.
#[derive(Default)]
pub struct StreamRegistry {
    pending: Mutex<HashMap<String, Endpoint>>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(AgentError::last_os("pipe2"));
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// 128 random bits as hex, from getrandom(2).
fn new_token() -> Result<String, AgentError> {
    let mut bytes = [0u8; 16];
    let mut got = 0;
    while got < bytes.len() {
        // SAFETY: writing into the unfilled tail of a local buffer.
        let n = unsafe { libc::getrandom(bytes[got..].as_mut_ptr().cast(), bytes.len() - got, 0) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(AgentError::last_os("getrandom"));
        }
        got += n as usize;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Sets the window size of a pty (TIOCSWINSZ), rows × cols characters.
pub fn set_winsize(master: &File, rows: u16, cols: u16) -> Result<(), AgentError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(AgentError::last_os("TIOCSWINSZ"));
    }
    Ok(())
}

/// Opens a pty pair from the devpts instance whose multiplexer is `ptmx`;
/// the slave comes from `TIOCGPTPEER` (Linux 4.13), which needs no path in
/// the agent's own mount namespace.
fn open_pty_in(ptmx: &Path) -> Result<(File, OwnedFd), AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)
        .map_err(|e| AgentError::from_io("open the container's ptmx", &e))?;
    // SAFETY: ioctls on a descriptor we own; the returned fd is owned below.
    unsafe {
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(AgentError::last_os("unlock pty"));
        }
        let slave = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(AgentError::last_os("open pty peer"));
        }
        Ok((master, OwnedFd::from_raw_fd(slave)))
    }
}

fn open_pty() -> Result<(File, OwnedFd), AgentError> {
    // SAFETY: plain libc calls; the returned descriptors are owned below.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(AgentError::last_os("posix_openpt"));
        }
        let master = File::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(AgentError::last_os("unlockpt"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
            return Err(AgentError::last_os("ptsname"));
        }
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(AgentError::last_os("open pty slave"));
        }
        Ok((master, OwnedFd::from_raw_fd(slave)))
    }
}

fn dev_null() -> Result<OwnedFd, AgentError> {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| AgentError::from_io("open /dev/null", &e))
}

impl StreamRegistry {
    /// Creates the pipes (or pty) of a new process and registers their
    /// tokens.
    ///
    /// A terminal is allocated from the container's own devpts instance
    /// (`<root>/dev/pts/ptmx`) when it has one, as runc does, so that the
    /// process's `ttyname()` (`/dev/pts/N`) resolves inside the container.
    pub fn prepare(
        &self,
        terminal: bool,
        stdin: bool,
        console_size: Option<ConsoleSize>,
        root: &Path,
    ) -> Result<PreparedStdio, AgentError> {
        let mut endpoints = Vec::new();
        let mut tokens = StreamTokens::default();
        let prepared = if terminal {
            let container_ptmx = root.join("dev/pts/ptmx");
            let (master, slave) = if root != Path::new("/") && container_ptmx.exists() {
                open_pty_in(&container_ptmx)?
            } else {
                open_pty()?
            };
            if let Some(size) = console_size {
                set_winsize(&master, size.height, size.width)?;
            }
            let relay = master
                .try_clone()
                .map_err(|e| AgentError::from_io("dup pty master", &e))?;
            let token = new_token()?;
            tokens.tty = Some(token.clone());
            endpoints.push((token, Endpoint::Tty(relay)));
            PreparedStdio {
                child: ChildFds {
                    stdin: None,
                    stdout: None,
                    stderr: None,
                    tty_slave: Some(slave),
                },
                tokens: StreamTokens::default(),
                tty_master: Some(Arc::new(master)),
            }
        } else {
            let child_stdin = if stdin {
                let (read, write) = pipe()?;
                let token = new_token()?;
                tokens.stdin = Some(token.clone());
                endpoints.push((token, Endpoint::Stdin(File::from(write))));
                read
            } else {
                dev_null()?
            };
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            let out_token = new_token()?;
            let err_token = new_token()?;
            tokens.stdout = Some(out_token.clone());
            tokens.stderr = Some(err_token.clone());
            endpoints.push((out_token, Endpoint::Output(File::from(out_read))));
            endpoints.push((err_token, Endpoint::Output(File::from(err_read))));
            PreparedStdio {
                child: ChildFds {
                    stdin: Some(child_stdin),
                    stdout: Some(out_write),
                    stderr: Some(err_write),
                    tty_slave: None,
                },
                tokens: StreamTokens::default(),
                tty_master: None,
            }
        };
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| AgentError::Internal("stream registry poisoned".into()))?;
        for (token, endpoint) in endpoints {
            pending.insert(token, endpoint);
        }
        Ok(PreparedStdio { tokens, ..prepared })
    }

    /// Forgets the tokens of a process that could not be started.
    pub fn discard(&self, tokens: &StreamTokens) {
        if let Ok(mut pending) = self.pending.lock() {
            for token in [&tokens.stdin, &tokens.stdout, &tokens.stderr, &tokens.tty]
                .into_iter()
                .flatten()
            {
                pending.remove(token);
            }
        }
    }

    /// Drops every stream nobody attached (at shutdown).
    pub fn clear(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    /// Takes the endpoint named by `token` (single use).
    pub fn take(&self, token: &str) -> Option<Endpoint> {
        self.pending.lock().ok()?.remove(token)
    }
}

fn copy<R: Read, W: Write>(from: &mut R, to: &mut W) -> io::Result<()> {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once the slave side is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// Relays between `conn` and `endpoint` until the stream ends. `leftover` are
/// bytes the host sent right after its header line (input streams only).
pub fn relay<C: Connection>(conn: C, endpoint: Endpoint, leftover: Vec<u8>) {
    match endpoint {
        Endpoint::Output(mut pipe) => {
            let mut conn = conn;
            let _ = copy(&mut pipe, &mut conn);
            let _ = conn.shutdown(Shutdown::Both);
        }
        Endpoint::Stdin(mut pipe) => {
            let mut conn = conn;
            if pipe.write_all(&leftover).is_ok() {
                let _ = copy(&mut conn, &mut pipe);
            }
            // Dropping the write end gives the process EOF.
            drop(pipe);
            let _ = conn.shutdown(Shutdown::Both);
        }
        Endpoint::Tty(master) => {
            let input = match (conn.try_clone(), master.try_clone()) {
                (Ok(c), Ok(m)) => Some((c, m)),
                _ => None,
            };
            let writer = input.map(|(mut c, mut m)| {
                std::thread::spawn(move || {
                    if m.write_all(&leftover).is_ok() {
                        let _ = copy(&mut c, &mut m);
                    }
                })
            });
            let mut conn = conn;
            let mut master = master;
            let _ = copy(&mut master, &mut conn);
            let _ = conn.shutdown(Shutdown::Both);
            drop(writer);
        }
    }
}
