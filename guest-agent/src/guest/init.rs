//! What PID 1 does before serving. Every step logs its failure and goes on:
//! PID 1 must never exit (that panics the kernel).
//!
//! Guest system calls are slow (guest kernel mode may be emulated), so the
//! path is short: no directory scans, each mount point created only when
//! mounting it fails with ENOENT.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::mount;
use crate::agent_log;
use crate::protocol::{BOOT_TIMER_INIT_MAGIC, BOOT_TIMER_MMIO_ADDR};

/// Makes sure fds 0, 1 and 2 are open (on /dev/console or /dev/null), so the
/// agent's own descriptors never land there. Run after /dev is mounted.
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        let file = OpenOptions::new().read(true).write(true).open("/dev/null");
        if let Ok(file) = file {
            let raw = file.into_raw_fd();
            if raw != fd {
                // SAFETY: duplicating an open descriptor onto a free slot.
                unsafe {
                    libc::dup2(raw, fd);
                    libc::close(raw);
                }
            }
        }
    }
}

fn mount_early(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let path = Path::new(target);
    let mut result = mount(source, path, fstype, flags, data);
    if let Err(crate::server::AgentError::MountFailed {
        errno: libc::ENOENT,
        ..
    }) = result
    {
        let _ = std::fs::create_dir_all(path);
        result = mount(source, path, fstype, flags, data);
    }
    if let Err(e) = result {
        // EBUSY: already mounted (e.g. devtmpfs by CONFIG_DEVTMPFS_MOUNT).
        if !matches!(
            e,
            crate::server::AgentError::MountFailed {
                errno: libc::EBUSY,
                ..
            }
        ) {
            agent_log!("{e}");
        }
    }
}

/// Mounts /dev, /proc, /sys, /dev/pts, /dev/shm and /run.
pub fn mount_pseudo_filesystems() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_early("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount_early("proc", "/proc", "proc", nosuid_nodev_noexec, "");
    mount_early("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, "");
    mount_early(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    );
    mount_early(
        "shm",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount_early(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
}

/// Sends log lines to /dev/kmsg.
pub fn log_to_kmsg() {
    if let Ok(kmsg) = OpenOptions::new().write(true).open("/dev/kmsg") {
        crate::log::set_sink(kmsg);
    }
}

/// Writes [`BOOT_TIMER_INIT_MAGIC`] at offset 0 of the boot-timer page
/// ([`BOOT_TIMER_MMIO_ADDR`]) through /dev/mem, so the VMM can time the boot
/// up to the agent. Failures only log.
pub fn mark_boot_timer() {
    mark_boot_timer_value(BOOT_TIMER_INIT_MAGIC);
}

/// Writes `value` at offset 0 of the boot-timer page (see
/// [`mark_boot_timer`]). Failures only log.
pub fn mark_boot_timer_value(value: u8) {
    let mem = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
    {
        Ok(f) => f,
        Err(e) => return agent_log!("boot timer: open /dev/mem: {e}"),
    };
    write_boot_timer(&mem, value);
}

fn write_boot_timer(mem: &File, value: u8) {
    let page = 4096;
    // SAFETY: maps one page of /dev/mem; checked for MAP_FAILED below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            BOOT_TIMER_MMIO_ADDR as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return agent_log!("boot timer: mmap: {}", std::io::Error::last_os_error());
    }
    // SAFETY: ptr is a valid mapping of one page; a volatile write makes the
    // MMIO access happen exactly once.
    unsafe {
        std::ptr::write_volatile(ptr.cast::<u8>(), value);
        libc::munmap(ptr, page);
    }
}
