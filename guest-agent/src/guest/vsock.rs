//! `AF_VSOCK` transport for the server (vsock(7)): a listener on
//! `VMADDR_CID_ANY:port` and its accepted streams.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::server::{Connection, Listener};

/// A listening vsock socket.
pub struct VsockListener {
    fd: OwnedFd,
}

/// An accepted vsock connection.
pub struct VsockStream {
    fd: OwnedFd,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl VsockListener {
    /// Binds and listens on `port` of any local CID.
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        // SAFETY: socket() returns a new descriptor or -1.
        let raw = cvt(unsafe {
            libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_vm is plain old data.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: addr is a valid sockaddr_vm of the given length.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        })?;
        // SAFETY: listen on our socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(VsockListener { fd })
    }
}

impl Listener for VsockListener {
    type Conn = VsockStream;
    fn accept(&self) -> io::Result<VsockStream> {
        loop {
            // SAFETY: accept4 without an address buffer.
            let rc = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            match cvt(rc) {
                Ok(fd) => {
                    // SAFETY: a fresh descriptor from accept4, owned by
                    // nothing else.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    return Ok(VsockStream { fd });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: sending from a valid buffer; MSG_NOSIGNAL avoids SIGPIPE.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream {
            fd: self.fd.try_clone()?,
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown on our socket.
        cvt(unsafe { libc::shutdown(self.fd.as_raw_fd(), how) }).map(|_| ())
    }
}
