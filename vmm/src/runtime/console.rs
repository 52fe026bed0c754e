//! `--console-socket`: as runc does, capsa creates a pty on the host, sends
//! its master over the Unix socket the engine named (one `sendmsg` with
//! `SCM_RIGHTS`, the payload being the pty's name), and relays the slave to
//! the guest process's `tty` stream. The host pty is raw: line discipline,
//! echo and signals happen on the guest's pty. Window-size changes the
//! engine makes on the master (TIOCSWINSZ) are polled on the slave and
//! forwarded with the agent's `resize`.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use capsa_agent::protocol::ConsoleSize;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios;

use super::stdio::{copy, Relays};
use super::{Result, RuntimeError};

/// How often the window size is checked.
const RESIZE_POLL: Duration = Duration::from_millis(200);

/// A host pty pair.
pub struct Pty {
    /// The master (sent to the engine).
    pub master: OwnedFd,
    /// The slave (relayed to the guest).
    pub slave: OwnedFd,
}

/// Opens a raw pty pair of `size` (when given).
pub fn open(size: Option<ConsoleSize>) -> Result<Pty> {
    let winsize = size.map(|s| nix::pty::Winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(winsize.as_ref(), None)
        .map_err(|e| RuntimeError::io("openpty", e.into()))?;
    let mut t =
        termios::tcgetattr(&pty.slave).map_err(|e| RuntimeError::io("tcgetattr", e.into()))?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &t)
        .map_err(|e| RuntimeError::io("tcsetattr", e.into()))?;
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

/// Sends `master` over the Unix socket at `socket` (runc's protocol).
pub fn send_master(socket: &Path, master: &OwnedFd) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| RuntimeError::io(format!("--console-socket {}", socket.display()), e))?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| {
        RuntimeError::io(
            format!("--console-socket {}: sendmsg", socket.display()),
            e.into(),
        )
    })?;
    Ok(())
}

/// The window size of a terminal fd as `(rows, cols)`.
pub fn window_size(fd: impl AsFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid struct given.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Relays `slave` ↔ the guest's `tty` stream; calls `resize(rows, cols)`
/// when the slave's window size changes (until the stream ends). The
/// returned relay ends when the guest side reaches EOF.
pub fn relay(
    slave: OwnedFd,
    tty: UnixStream,
    resize: impl Fn(u16, u16) + Send + 'static,
) -> Result<Relays> {
    let slave = File::from(slave);
    let to_guest = slave
        .try_clone()
        .map_err(|e| RuntimeError::io("dup pty", e))?;
    let from_guest = tty
        .try_clone()
        .map_err(|e| RuntimeError::io("dup tty stream", e))?;
    let size_fd = slave
        .try_clone()
        .map_err(|e| RuntimeError::io("dup pty", e))?;
    std::thread::spawn(move || {
        copy(to_guest, &tty);
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done_poll = done.clone();
    std::thread::spawn(move || {
        let mut last = window_size(&size_fd);
        while !done_poll.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(RESIZE_POLL);
            let now = window_size(&size_fd);
            if now != last {
                if let Some((rows, cols)) = now.filter(|(r, c)| *r > 0 && *c > 0) {
                    resize(rows, cols);
                }
                last = now;
            }
        }
    });
    let mut relays = Relays::default();
    relays.push_output(std::thread::spawn(move || {
        copy(&from_guest, slave);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    }));
    Ok(relays)
}
