//! How the host reaches a guest vsock port.
//!
//! In production the VMM exposes the guest's vsock through Firecracker-style
//! *hybrid vsock*: a Unix socket on the host; the host connects to it, writes
//! `CONNECT <port>\n` and reads `OK <host_port>\n`, after which the socket is
//! a byte stream to the guest port (Firecracker `docs/vsock.md`, "Host-initiated
//! connections"). Tests map each port to a plain Unix socket path instead.

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

/// Longest accepted `OK <port>\n` answer of the hybrid vsock handshake.
const MAX_HANDSHAKE_LINE: usize = 64;

/// Firecracker-style hybrid vsock: one Unix socket, `CONNECT <port>\n` /
/// `OK <host_port>\n` handshake per connection.
#[derive(Debug, Clone)]
pub struct HybridVsockConnector {
    /// Path of the VMM's vsock Unix socket.
    pub uds_path: PathBuf,
    /// Bound on the handshake (the connect and the `OK` line).
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
    UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

impl Connector for HybridVsockConnector {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let mut stream = connect_unix_nofollow(&self.uds_path)?;
        stream.set_read_timeout(Some(self.handshake_timeout))?;
        stream.set_write_timeout(Some(self.handshake_timeout))?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
        // Read byte by byte: whatever follows the `\n` belongs to the stream.
        let mut line = Vec::with_capacity(16);
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("hybrid vsock: connection to port {port} closed during handshake"),
                    ))
                }
                Ok(_) if byte[0] == b'\n' => break,
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
        let text = String::from_utf8_lossy(&line);
        let ok = text
            .strip_prefix("OK ")
            .map(|p| p.trim().parse::<u32>().is_ok())
            .unwrap_or(false);
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
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
