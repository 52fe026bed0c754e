//! File descriptors the VMM inherits: 0, 1 and 2, and those named by
//! `--keep-fd`; every other inherited descriptor is closed when the jailer
//! starts (descriptors the jailer opens itself are close-on-exec).

use std::os::fd::RawFd;

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Closes every descriptor above 2 except `keep` (which must be open).
pub fn close_inherited(keep: &[RawFd]) -> Result<()> {
    for &fd in keep {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            bail!("--keep-fd {fd}: not an open file descriptor");
        }
    }
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let mut first: u32 = 3;
    for fd in keep.iter().map(|&fd| fd as u32).chain([u32::MAX]) {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

/// close_range(2), with a loop over the open descriptors listed in
/// /proc/self/fd for kernels before 5.9.
fn close_range(first: u32, last: u32) -> Result<()> {
    // SAFETY: closes descriptors that this process does not use (the
    // jailer has opened none yet).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if rc == 0 {
        return Ok(());
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if (first..=last).contains(&(fd as u32)) {
            // SAFETY: as above; the read_dir descriptor is closed already
            // (EBADF is harmless).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Clears close-on-exec on the `--keep-fd` descriptors, just before exec.
pub fn keep_across_exec(keep: &[RawFd]) -> Result<()> {
    for &fd in keep {
        // SAFETY: the descriptor was checked to be open; only its flags
        // change.
        let fd_ref = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        fcntl(fd_ref, FcntlArg::F_SETFD(FdFlag::empty()))
            .with_context(|| format!("--keep-fd {fd}: fcntl(F_SETFD)"))?;
    }
    Ok(())
}
