//! The guest's side of `new_machine`: the kernel's RNG (random(4) ioctls
//! on `/dev/urandom`), `CLOCK_REALTIME`, and binding virtio-mmio platform
//! devices through the driver core's `bind` file in sysfs (mounted at
//! `/sys` by [`init`](super::init)).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;

use crate::server::machine::{bind_error, scrub, VIRTIO_MMIO_BIND};
use crate::server::AgentError;

/// The device the RNG ioctls are made on (any random(4) device takes them).
const RANDOM_DEVICE: &str = "/dev/urandom";

/// `_IOC(dir, type, nr, size)` of asm-generic/ioctl.h (x86_64, arm64).
const fn ioc(dir: u32, kind: u8, nr: u8, size: usize) -> libc::Ioctl {
    ((dir << 30) | ((size as u32) << 16) | ((kind as u32) << 8) | nr as u32) as libc::Ioctl
}

/// `_IOC_WRITE`.
const IOC_WRITE: u32 = 1;
/// `_IOC_NONE`.
const IOC_NONE: u32 = 0;

/// `RNDADDENTROPY = _IOW('R', 0x03, int[2])` (linux/random.h): adds the
/// bytes of a `struct rand_pool_info` to the pool and credits its
/// `entropy_count` bits (CAP_SYS_ADMIN).
const RNDADDENTROPY: libc::Ioctl = ioc(
    IOC_WRITE,
    b'R',
    0x03,
    2 * std::mem::size_of::<libc::c_int>(),
);

/// `RNDRESEEDCRNG = _IO('R', 0x07)` (linux/random.h, Linux 4.17): reseeds
/// the CRNG from the pool now (CAP_SYS_ADMIN).
const RNDRESEEDCRNG: libc::Ioctl = ioc(IOC_NONE, b'R', 0x07, 0);

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`
/// holding `entropy`, as 32-bit words (the struct's alignment); the
/// caller zeroes it.
fn rand_pool_info(entropy: &[u8]) -> Result<Vec<u32>, AgentError> {
    let too_long = || AgentError::InvalidParams("entropy: too long".into());
    let bytes = libc::c_int::try_from(entropy.len()).map_err(|_| too_long())?;
    let bits = bytes.checked_mul(8).ok_or_else(too_long)?;
    let mut info = vec![0u32; 2 + entropy.len().div_ceil(4)];
    info[0] = bits as u32;
    info[1] = bytes as u32;
    for (word, chunk) in info[2..].iter_mut().zip(entropy.chunks(4)) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        // The kernel reads `buf` as bytes: native order keeps them in order.
        *word = u32::from_ne_bytes(w);
        scrub(&mut w);
    }
    Ok(info)
}

/// Adds `entropy` to the kernel's pool, credited as 8 bits per byte, and
/// reseeds the CRNG. The copy made for the ioctl is zeroed.
pub fn reseed_rng(entropy: &[u8]) -> Result<(), AgentError> {
    let random = OpenOptions::new()
        .write(true)
        .open(RANDOM_DEVICE)
        .map_err(|e| AgentError::from_io(format!("open {RANDOM_DEVICE}"), &e))?;
    let mut info = rand_pool_info(entropy)?;
    // SAFETY: `info` is a valid rand_pool_info whose `buf` holds
    // `buf_size` bytes; the kernel only reads it.
    let added = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    let added_err = std::io::Error::last_os_error();
    scrub(&mut info);
    if added != 0 {
        return Err(AgentError::from_io(
            format!("RNDADDENTROPY on {RANDOM_DEVICE}"),
            &added_err,
        ));
    }
    // SAFETY: an ioctl without argument on a descriptor we own.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(AgentError::last_os(format!(
            "RNDRESEEDCRNG on {RANDOM_DEVICE}"
        )));
    }
    Ok(())
}

/// Sets `CLOCK_REALTIME` to `realtime_ns` ns since the Unix epoch.
pub fn set_realtime_clock(realtime_ns: u64) -> Result<(), AgentError> {
    let invalid = || AgentError::Os {
        what: format!("clock_settime(CLOCK_REALTIME, {realtime_ns} ns)"),
        errno: libc::EINVAL,
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(realtime_ns / 1_000_000_000).map_err(|_| invalid())?,
        tv_nsec: libc::c_long::try_from(realtime_ns % 1_000_000_000).map_err(|_| invalid())?,
    };
    // SAFETY: a valid pointer to a local timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(AgentError::last_os(format!(
            "clock_settime(CLOCK_REALTIME, {realtime_ns} ns)"
        )));
    }
    Ok(())
}

/// Binds the platform device `device` to the virtio-mmio driver: one write
/// of its name to [`VIRTIO_MMIO_BIND`], which returns once the driver has
/// probed it (and the virtio driver of its type has too).
pub fn bind_virtio_mmio(device: &str) -> Result<(), AgentError> {
    let errno = |e: std::io::Error| bind_error(device, e.raw_os_error().unwrap_or(libc::EIO));
    let mut bind = OpenOptions::new()
        .write(true)
        .open(VIRTIO_MMIO_BIND)
        .map_err(errno)?;
    bind.write_all(device.as_bytes()).map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_linux_random_h() {
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn rand_pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(info.len(), 4);
        assert_eq!((info[0], info[1]), (40, 5));
        let buf: Vec<u8> = info[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(buf, [1, 2, 3, 4, 5, 0, 0, 0]);
    }
}
