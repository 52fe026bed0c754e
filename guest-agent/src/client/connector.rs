//! How the host reaches a guest vsock port.
//!
//! In production the VMM exposes the guest's vsock through Firecracker-style
//! *hybrid vsock*: a Unix socket on the host; the host connects to it, writes
//! `CONNECT <port>\n` and reads `OK <host_port>\n`, after which the socket is
//! a byte stream to the guest port (Firecracker `docs/vsock.md`, "Host-initiated
//! connections"). capsa's VMM answers `ERR <reason>\n` instead of closing
//! silently when it cannot connect (see [`HandshakeRefused`]). Tests map each
//! port to a plain Unix socket path instead.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Opens byte streams to guest vsock ports.
pub trait Connector: Send + Sync {
    /// Connects to `port` of the guest.
    fn connect(&self, port: u32) -> io::Result<UnixStream>;
}

/// Longest accepted answer line of the hybrid vsock handshake (`OK <port>`
/// or `ERR <reason>`).
const MAX_HANDSHAKE_LINE: usize = 256;

/// The VMM answered a `CONNECT` with `ERR <reason>`: the guest port refused
/// or did not answer, the guest's driver is not up yet, the VMM is busy.
/// Carried inside an [`io::Error`] of kind `ConnectionRefused`; find it
/// with [`HandshakeRefused::of`]. Every reason capsa's VMM gives is
/// transient: retrying may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRefused {
    /// The guest port of the `CONNECT`.
    pub port: u32,
    /// The VMM's reason, as it wrote it.
    pub reason: String,
}

impl std::fmt::Display for HandshakeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hybrid vsock: CONNECT {} refused by the VMM: {}",
            self.port, self.reason
        )
    }
}

impl std::error::Error for HandshakeRefused {}

impl HandshakeRefused {
    /// The refusal inside `e`, if that is what `e` is.
    pub fn of(e: &io::Error) -> Option<&HandshakeRefused> {
        e.get_ref()?.downcast_ref::<HandshakeRefused>()
    }
}

/// Firecracker-style hybrid vsock: one Unix socket, `CONNECT <port>\n` /
/// `OK <host_port>\n` handshake per connection.
#[derive(Debug, Clone)]
pub struct HybridVsockConnector {
    /// Path of the VMM's vsock Unix socket.
    pub uds_path: PathBuf,
    /// Bound on the connect(2) (a full listen backlog blocks it) and,
    /// again, on the handshake (the `CONNECT` line out, the answer in).
    pub handshake_timeout: Duration,
}

impl HybridVsockConnector {
    /// A connector for the socket at `uds_path`, with a 5 s handshake timeout.
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        HybridVsockConnector {
            uds_path: uds_path.into(),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects to the Unix socket at `path` without following a symbolic
/// link in its last component, and whatever the path's length.
///
/// The socket may sit in a directory its VMM owns (capsa's jail): a
/// compromised VMM could put a symlink there to another socket of the host
/// (a container engine's), which a plain `connect(2)` by a root client
/// would follow. So the path is opened with `O_PATH | O_NOFOLLOW`, checked
/// to be a socket, and connected through its `/proc/self/fd/N` link, which
/// also lifts `sun_path`'s 108-byte limit (unix(7)).
pub fn connect_unix_nofollow(path: &Path) -> io::Result<UnixStream> {
    connect_unix_nofollow_timeout(path, None)
}

/// [`connect_unix_nofollow`], with `connect(2)` bounded by `timeout`: a
/// listener whose backlog is full (a VMM that does not accept) blocks a
/// Unix-socket connect, until `SO_SNDTIMEO` ends it with `EAGAIN` (unix(7)),
/// reported as `TimedOut`.
pub fn connect_unix_nofollow_timeout(
    path: &Path,
    timeout: Option<Duration>,
) -> io::Result<UnixStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in socket path"))?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    let kind = file.metadata()?.file_type();
    if !std::os::unix::fs::FileTypeExt::is_socket(&kind) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a Unix socket", path.display()),
        ));
    }
    let target = format!("/proc/self/fd/{}", file.as_raw_fd());
    match timeout {
        None => UnixStream::connect(target),
        Some(timeout) => connect_with_send_timeout(&target, path, timeout),
    }
}

/// Connects a new Unix stream socket to `target` (a `/proc/self/fd/N`
/// link) with `SO_SNDTIMEO` set to `timeout`, so a full backlog ends in
/// `TimedOut` instead of blocking; `path` names the socket in errors.
fn connect_with_send_timeout(
    target: &str,
    path: &Path,
    timeout: Duration,
) -> io::Result<UnixStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: `tv` is a valid timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // `/proc/self/fd/N` always fits sun_path (108 bytes).
    for (dst, src) in addr.sun_path.iter_mut().zip(target.bytes()) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + target.len() + 1;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
        let r = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: the socket accepted no connection within {timeout:?} (its backlog is full)",
                        path.display()
                    ),
                ))
            }
            _ => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    Ok(UnixStream::from(sock))
}

/// Reads the handshake's answer line byte by byte (whatever follows the
/// `\n` belongs to the stream). `Ok(None)`: EOF before a full line.
fn read_answer(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => return Ok(Some(line)),
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_HANDSHAKE_LINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "hybrid vsock: handshake answer too long",
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Connector for HybridVsockConnector {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let mut stream =
            connect_unix_nofollow_timeout(&self.uds_path, Some(self.handshake_timeout))?;
        stream.set_read_timeout(Some(self.handshake_timeout))?;
        stream.set_write_timeout(Some(self.handshake_timeout))?;
        let sent = stream.write_all(format!("CONNECT {port}\n").as_bytes());
        // A VMM that refuses at once (too busy, driver not up) may have
        // written its `ERR` and closed before the line went out: the write
        // then fails with EPIPE, and the answer says why.
        let answer = match (sent, read_answer(&mut stream)) {
            (_, Ok(Some(line))) => line,
            (Err(e), _) | (Ok(()), Err(e)) if is_timeout(&e) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "hybrid vsock: no answer to CONNECT {port} within {:?}",
                        self.handshake_timeout
                    ),
                ))
            }
            (Err(e), _) | (Ok(()), Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("hybrid vsock: CONNECT {port}: {e}"),
                ))
            }
            (Ok(()), Ok(None)) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("hybrid vsock: the VMM closed CONNECT {port} without an answer"),
                ))
            }
        };
        let text = String::from_utf8_lossy(&answer);
        if let Some(reason) = text.strip_prefix("ERR") {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                HandshakeRefused {
                    port,
                    reason: reason.trim().to_string(),
                },
            ));
        }
        let ok = text
            .strip_prefix("OK ")
            .map(|p| p.trim().parse::<u32>().is_ok())
            .unwrap_or(false);
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hybrid vsock: port {port}: unexpected answer {text:?}"),
            ));
        }
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(stream)
    }
}

/// Maps guest ports to plain Unix socket paths (tests, or a host-side agent).
#[derive(Debug, Clone, Default)]
pub struct UnixPortConnector {
    /// Socket path for each port.
    pub ports: HashMap<u32, PathBuf>,
}

impl UnixPortConnector {
    /// A connector for the agent's two ports.
    pub fn new(control: impl Into<PathBuf>, streams: impl Into<PathBuf>) -> Self {
        let mut ports = HashMap::new();
        ports.insert(crate::protocol::CONTROL_PORT, control.into());
        ports.insert(crate::protocol::STREAM_PORT, streams.into());
        UnixPortConnector { ports }
    }
}

impl Connector for UnixPortConnector {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        match self.ports.get(&port) {
            Some(path) => UnixStream::connect(path),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("no socket for port {port}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn fake_vmm(answer: &'static [u8]) -> (tempdir::Dir, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempdir::Dir::new("hv");
        let listener = UnixListener::bind(dir.path().join("v.sock")).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            s.write_all(answer).unwrap();
            buf.to_vec()
        });
        (dir, t)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "capsa-agent-{tag}-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn hybrid_handshake_ok_keeps_following_bytes() {
        let (dir, t) = fake_vmm(b"OK 1073741824\nhello");
        let c = HybridVsockConnector::new(dir.path().join("v.sock"));
        let mut s = c.connect(1024).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
        assert_eq!(t.join().unwrap(), b"CONNECT 1024\n");
    }

    #[test]
    fn hybrid_handshake_garbage_is_an_error() {
        let (dir, t) = fake_vmm(b"NO\n");
        let c = HybridVsockConnector::new(dir.path().join("v.sock"));
        assert!(c.connect(1025).is_err());
        t.join().unwrap();
    }

    /// The VMM's `ERR <reason>` reaches the caller as a
    /// [`HandshakeRefused`] naming the reason, also when the VMM closed
    /// before the `CONNECT` line could be written (EPIPE on the write:
    /// issue 9 item 5's "Broken pipe" hid the reason).
    #[test]
    fn an_err_answer_is_reported_with_its_reason_even_after_epipe() {
        let dir = tempdir::Dir::new("err");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..50 {
                let (mut s, _) = listener.accept().unwrap();
                // Answer and close without reading the line.
                s.write_all(b"ERR too many pending connections\n").unwrap();
            }
        });
        let c = HybridVsockConnector::new(&path);
        for _ in 0..50 {
            let e = c.connect(1024).unwrap_err();
            let refused = HandshakeRefused::of(&e).unwrap_or_else(|| panic!("{e:?}"));
            assert_eq!(refused.port, 1024);
            assert_eq!(refused.reason, "too many pending connections");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        }
        server.join().unwrap();
    }

    /// A VMM that accepts nothing (its listen backlog full) cannot hang a
    /// client: connect(2) ends after the timeout.
    #[test]
    fn connect_to_a_full_backlog_times_out() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let dir = tempdir::Dir::new("backlog");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen(2) on a socket we own; backlog 0.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        // Fill the backlog with non-blocking connects until EAGAIN.
        let mut held = Vec::new();
        for _ in 0..64 {
            // SAFETY: plain socket(2), owned at once.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
            assert!(fd >= 0);
            // SAFETY: just created, owned by nobody else.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: zeroed sockaddr_un is valid; the path fits.
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, b) in addr.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
                *d = b as libc::c_char;
            }
            // SAFETY: a valid address of the given size.
            let r = unsafe {
                libc::connect(
                    sock.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
            held.push(sock);
            if r != 0 {
                break;
            }
        }
        let started = std::time::Instant::now();
        let e = connect_unix_nofollow_timeout(&path, Some(Duration::from_millis(200))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("backlog is full"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_symlink_in_place_of_the_socket_is_refused() {
        let (dir, _t) = fake_vmm(b"OK 1\n");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(dir.path().join("v.sock"), &link).unwrap();
        let e = HybridVsockConnector::new(&link).connect(1024).unwrap_err();
        assert!(e.to_string().contains("link.sock"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = connect_unix_nofollow(&file).unwrap_err();
        assert!(e.to_string().contains("not a Unix socket"), "{e}");
        // Unblock the fake VMM.
        let _ = HybridVsockConnector::new(dir.path().join("v.sock")).connect(1024);
    }

    #[test]
    fn a_socket_path_longer_than_sun_path_works() {
        let dir = tempdir::Dir::new("long");
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        // bind(2) needs a short path: bind from inside the directory.
        let _listener = {
            let fd = std::fs::File::open(&deep).unwrap();
            let p = format!("/proc/self/fd/{}/s", std::os::fd::AsRawFd::as_raw_fd(&fd));
            let l = UnixListener::bind(p).unwrap();
            drop(fd);
            l
        };
        let path = deep.join("s");
        assert!(path.as_os_str().len() > 108);
        connect_unix_nofollow(&path).unwrap();
    }
}
