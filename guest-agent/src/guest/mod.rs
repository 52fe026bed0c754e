//! Guest-only parts of the agent: what PID 1 does before serving, the vsock
//! transport, and the real [`Platform`](crate::server::Platform).
//!
//! - [`init`]: early mounts (/proc, /sys, /dev, /dev/pts, /dev/shm, /run),
//!   stdio fds, the boot-timer mark, kmsg logging;
//! - [`vsock`]: `AF_VSOCK` listener and stream for the server;
//! - [`storage`]: mounting the rootfs (ext4/erofs block device, virtio-fs)
//!   with an overlay on tmpfs when it is read-only or shared;
//! - [`mounts`]: the OCI mounts of the bundle;
//! - [`machine`]: `new_machine`'s RNG reseed, clock and device binds.

pub mod init;
pub mod machine;
pub mod mounts;
pub mod network;
pub mod storage;
pub mod vsock;

pub use storage::GuestPlatform;

use std::ffi::CString;
use std::path::Path;

use crate::server::AgentError;

/// mount(2) with Rust strings; `data` may be empty.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), AgentError> {
    let fail = |errno| AgentError::MountFailed {
        path: target.display().to_string(),
        errno,
    };
    let c = |s: &str| CString::new(s).map_err(|_| fail(libc::EINVAL));
    let source = c(source)?;
    let target_c = c(&target.to_string_lossy())?;
    let fstype = c(fstype)?;
    let data_c = c(data)?;
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        data_c.as_ptr().cast()
    };
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    };
    if rc != 0 {
        return Err(fail(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    Ok(())
}
