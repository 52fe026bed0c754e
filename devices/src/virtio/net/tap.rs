//! The TAP backend of virtio-net (`Documentation/networking/tuntap.rst`,
//! `include/uapi/linux/if_tun.h`).
//!
//! [`Tap::create`] makes a TAP interface in the calling thread's network
//! namespace with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
//! [`VNET_HDR_LEN`]-byte virtio header: what the guest writes on the TX
//! queue (header included) is written to the TAP as it is, and what the
//! TAP reads is put on the RX queue as it is. The interface lives as long
//! as one of its file descriptors is open (not persistent), so it goes
//! away with the VMM process that inherited it. [`Tap::from_fd`] takes a
//! descriptor made that way by another process (`capsa create` hands it to
//! the jailed VMM).
//!
//! The kernel validates every header written to a TAP
//! (`virtio_net_hdr_to_skb`): a hostile guest gets `EINVAL`, not a broken
//! host stack.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{Backend, VNET_HDR_LEN};

/// Longest interface name, NUL excluded (`IFNAMSIZ` − 1).
pub const MAX_NAME_LEN: usize = 15;

/// Errors of the TAP backend.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or has a `/`, `:`, NUL or space.
    #[error("invalid TAP interface name {0:?} (1 to 15 bytes, no '/', ':', NUL or space)")]
    Name(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    /// An ioctl failed.
    #[error("{ioctl} on the TAP device: {source}")]
    Ioctl {
        /// Which one.
        ioctl: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The descriptor is not a TAP device with a virtio header.
    #[error("file descriptor {0} is not a TAP device with IFF_VNET_HDR and IFF_NO_PI")]
    NotTap(RawFd),
}

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new() -> Self {
        Self {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }
}

/// A TAP interface with a virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks an interface name as the kernel's `dev_valid_name` does.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

fn ioctl_err(ioctl: &'static str) -> impl FnOnce(std::io::Error) -> TapError {
    move |source| TapError::Ioctl { ioctl, source }
}

impl Tap {
    /// Creates the TAP interface `name` in the calling thread's network
    /// namespace (needs `CAP_NET_ADMIN` there), non-blocking and
    /// close-on-exec, with a [`VNET_HDR_LEN`]-byte header and no offloads
    /// (the device enables those the driver acks).
    pub fn create(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_nonblock()
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq::new();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req`
        // is laid out as (name, then a union whose first member is the
        // short flags), and lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETIFF")(std::io::Error::last_os_error()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ")(std::io::Error::last_os_error()));
        }
        let name = ifname(&req.name);
        Ok(Self { file, name })
    }

    /// Takes a TAP descriptor made by [`Tap::create`] in another process
    /// (inherited): checks with `TUNGETIFF` that it is a TAP with a virtio
    /// header and no packet information, sets its header length again and
    /// makes it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        let mut req = IfReq::new();
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`.
        let rc = unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::NotTap(raw));
        }
        let flags = libc::c_int::from(req.flags);
        let wanted = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & wanted != wanted {
            return Err(TapError::NotTap(raw));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(raw, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ")(std::io::Error::last_os_error()));
        }
        set_nonblocking(raw).map_err(ioctl_err("fcntl(O_NONBLOCK)"))?;
        Ok(Self {
            file,
            name: ifname(&req.name),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor, e.g. to hand to a child process (clear
    /// close-on-exec there).
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

fn ifname(raw: &[u8; libc::IFNAMSIZ]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and set the descriptor's flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

trait NonblockExt {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonblockExt for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn set_offloads(&mut self, tun_flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags as the argument value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_flags),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A backend over one end of a `SOCK_SEQPACKET` Unix socket pair: each
/// message is one header + frame. For the unit tests and the fuzz
/// harness; offloads are recorded, not applied.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug)]
pub struct SocketBackend {
    fd: OwnedFd,
    /// The flags of the last `set_offloads` (`u32::MAX`: never called).
    pub offloads: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl SocketBackend {
    /// A connected pair: the backend (non-blocking) and the other end
    /// (blocking), where the test reads what the guest sent and writes
    /// what the guest should receive.
    pub fn pair() -> std::io::Result<(Self, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created and are owned here.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_nonblocking(a.as_raw_fd())?;
        Ok((
            Self {
                fd: a,
                offloads: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX)),
            },
            b,
        ))
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Backend for SocketBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offloads(&mut self, tun_flags: u32) -> std::io::Result<()> {
        self.offloads
            .store(tun_flags, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("tap0"));
        assert!(valid_name("capsa-tap-01234"));
        assert!(!valid_name(""));
        assert!(!valid_name("capsa-tap-012345"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(".."));
        assert!(matches!(Tap::create("a:b"), Err(TapError::Name(_))));
    }

    #[test]
    fn a_file_is_not_a_tap() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(f)),
            Err(TapError::NotTap(_))
        ));
    }
}
