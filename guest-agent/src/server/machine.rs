//! `new_machine`'s params, checked: the decoded entropy (zeroed when
//! dropped), the clock and the devices to bind, before the agent acts.

use std::fmt;

use super::error::AgentError;
use crate::protocol::{
    virtio_mmio_slot, NewMachineParams, MAX_NEW_MACHINE_DEVICES, MAX_NEW_MACHINE_ENTROPY_BYTES,
    MIN_NEW_MACHINE_ENTROPY_BYTES,
};

/// The guest kernel's driver-core file that binds a platform device (by
/// name) to the virtio-mmio driver: the write returns once the driver has
/// probed the device.
pub const VIRTIO_MMIO_BIND: &str = "/sys/bus/platform/drivers/virtio-mmio/bind";

/// The error of binding `device` that failed with `errno` (e.g. `ENODEV`:
/// no device in the slot; `EBUSY`: already bound).
pub fn bind_error(device: &str, errno: i32) -> AgentError {
    AgentError::Os {
        what: format!("bind {device} (write to {VIRTIO_MMIO_BIND})"),
        errno,
    }
}

/// Overwrites `buf` with zeros in a way the compiler does not elide.
pub fn scrub<T: Copy + Default>(buf: &mut [T]) {
    for x in buf.iter_mut() {
        // SAFETY: `x` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(x, T::default()) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Random bytes for the kernel's RNG, zeroed when dropped.
pub struct Entropy(Vec<u8>);

impl Entropy {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Entropy {
    fn drop(&mut self) {
        scrub(&mut self.0);
    }
}

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entropy(<{} bytes>)", self.0.len())
    }
}

/// `new_machine`'s params, checked.
#[derive(Debug)]
pub struct MachinePlan {
    /// `CLOCK_REALTIME` to set, ns since the Unix epoch.
    pub realtime_ns: u64,
    /// The decoded entropy.
    pub entropy: Entropy,
    /// Devices to bind, in order (each `virtio-mmio.<N>`, no duplicates).
    pub devices: Vec<String>,
}

impl MachinePlan {
    /// Checks every field of `p` (the first bad one is `InvalidParams`
    /// naming it) and decodes the entropy. The hex text of `p` is zeroed
    /// either way.
    pub fn new(p: NewMachineParams) -> Result<MachinePlan, AgentError> {
        let NewMachineParams {
            realtime_ns,
            entropy,
            devices,
        } = p;
        let mut hex = entropy.into_bytes();
        let decoded = decode_entropy(&hex);
        scrub(&mut hex);
        let entropy = decoded?;
        check_devices(&devices)?;
        Ok(MachinePlan {
            realtime_ns,
            entropy,
            devices,
        })
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `entropy`'s hex digits (never echoed in an error).
fn decode_entropy(hex: &[u8]) -> Result<Entropy, AgentError> {
    let bad = |why: String| AgentError::InvalidParams(format!("entropy: {why}"));
    if hex.len() % 2 != 0 {
        return Err(bad(format!(
            "an odd number of hex digits ({}), two per byte",
            hex.len()
        )));
    }
    let len = hex.len() / 2;
    if !(MIN_NEW_MACHINE_ENTROPY_BYTES..=MAX_NEW_MACHINE_ENTROPY_BYTES).contains(&len) {
        return Err(bad(format!(
            "{len} bytes, must be {MIN_NEW_MACHINE_ENTROPY_BYTES} to {MAX_NEW_MACHINE_ENTROPY_BYTES}"
        )));
    }
    // Exactly its size: no reallocation leaves a copy behind.
    let mut out = Entropy(Vec::with_capacity(len));
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => out.0.push((hi << 4) | lo),
            _ => return Err(bad(format!("not hex (byte {i})"))),
        }
    }
    Ok(out)
}

/// At most 40 characters of `name`, for an error message.
fn shown(name: &str) -> String {
    let mut s: String = name.chars().take(40).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    format!("{s:?}")
}

fn check_devices(devices: &[String]) -> Result<(), AgentError> {
    if devices.len() > MAX_NEW_MACHINE_DEVICES {
        return Err(AgentError::InvalidParams(format!(
            "devices: {} devices, at most {MAX_NEW_MACHINE_DEVICES}",
            devices.len()
        )));
    }
    let mut seen = [false; 256];
    for (i, name) in devices.iter().enumerate() {
        let Some(slot) = virtio_mmio_slot(name) else {
            return Err(AgentError::InvalidParams(format!(
                "devices[{i}]: {} is not virtio-mmio.<N> (N in 0..=255, decimal, no leading zeros)",
                shown(name)
            )));
        };
        if std::mem::replace(&mut seen[usize::from(slot)], true) {
            return Err(AgentError::InvalidParams(format!(
                "devices[{i}]: {name} is listed twice"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(entropy: &str, devices: &[&str]) -> NewMachineParams {
        NewMachineParams {
            realtime_ns: 1_700_000_000_000_000_000,
            entropy: entropy.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn message(r: Result<MachinePlan, AgentError>) -> String {
        match r {
            Err(e @ AgentError::InvalidParams(_)) => e.to_string(),
            other => panic!("not invalid params: {other:?}"),
        }
    }

    #[test]
    fn entropy_is_decoded_in_order_and_either_case() {
        let hex = format!("00ff7Fa5{}", "0".repeat(56));
        let plan = MachinePlan::new(params(&hex, &[])).unwrap();
        assert_eq!(plan.entropy.bytes().len(), 32);
        assert_eq!(&plan.entropy.bytes()[..4], [0x00, 0xff, 0x7f, 0xa5]);
        assert!(!format!("{plan:?}").contains("ff"), "{plan:?}");
        let max = "ab".repeat(MAX_NEW_MACHINE_ENTROPY_BYTES);
        let plan = MachinePlan::new(params(&max, &[])).unwrap();
        assert_eq!(plan.entropy.bytes(), [0xab; 256]);
    }

    #[test]
    fn bad_entropy_is_named_and_not_echoed() {
        let short = "11".repeat(31);
        let long = "22".repeat(257);
        let odd = "3".repeat(65);
        let not_hex = format!("{}zz", "44".repeat(31));
        let mut plus = "55".repeat(32);
        plus.replace_range(0..1, "+");
        for bad in ["", &short, &long, &odd, &not_hex, &plus] {
            let m = message(MachinePlan::new(params(bad, &[])));
            assert!(m.contains("entropy"), "{m}");
            assert!(bad.len() < 8 || !m.contains(&bad[..8]), "{m}");
        }
    }

    #[test]
    fn bad_devices_are_named() {
        let hex = "00".repeat(32);
        for (devices, named) in [
            (&["virtio-mmio.2x"][..], "devices[0]"),
            (&["virtio-mmio.0", "../x"], "devices[1]"),
            (&["virtio-mmio.256"], "devices[0]"),
            (&["virtio-mmio.01"], "devices[0]"),
            (
                &["virtio-mmio.1", "virtio-mmio.2", "virtio-mmio.1"],
                "devices[2]",
            ),
        ] {
            let m = message(MachinePlan::new(params(&hex, devices)));
            assert!(m.contains(named), "{devices:?}: {m}");
        }
        let many: Vec<String> = (0..=32).map(|i| format!("virtio-mmio.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let m = message(MachinePlan::new(params(&hex, &many)));
        assert!(m.contains("devices: 33"), "{m}");
        let long = "x".repeat(10_000);
        let m = message(MachinePlan::new(params(&hex, &[&long])));
        assert!(m.len() < 200, "{m}");
        let plan = MachinePlan::new(params(&hex, &many[..32])).unwrap();
        assert_eq!(plan.devices.len(), 32);
    }

    #[test]
    fn scrub_zeroes() {
        let mut b = [1u8, 2, 3];
        scrub(&mut b);
        assert_eq!(b, [0; 3]);
        let mut w = [7u32; 2];
        scrub(&mut w);
        assert_eq!(w, [0; 2]);
    }
}
