//! An address bus: maps ranges of guest port-I/O or MMIO addresses to the
//! device models that own them. vCPU threads dispatch their `KVM_EXIT_IO`
//! and `KVM_EXIT_MMIO` exits through it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes in an address range.
///
/// `offset` is relative to the start of the range the device was inserted
/// at. `data` is the access, 1 to 8 bytes as the guest made it. A device
/// must tolerate any offset and length inside its range, including ones
/// that make no sense for its registers: reads of unknown registers return
/// zeroes, writes to them are ignored.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the end of the address space.
    #[error("invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// First address of the range.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range overlaps one that is already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// First address of the range.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// A device shared between the bus (vCPU threads) and its other owners
/// (the event loop).
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Ranges of addresses and the devices behind them.
#[derive(Default, Clone)]
pub struct Bus {
    /// Keyed by base address; the value holds the length and the device.
    devices: BTreeMap<u64, (u64, SharedBusDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        // The range before `end` with the highest base is the only one that
        // can overlap, given that the ranges on the bus do not overlap.
        if let Some((&b, &(l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device owning `addr`, and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64) -> Option<(u64, &SharedBusDevice)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((offset, dev))
    }

    /// Dispatches a guest read. Returns false (and leaves `data` untouched)
    /// when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it if another thread panicked while holding
/// it: device state is kept consistent by each device between accesses.
fn lock(dev: &SharedBusDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder { last_write: None }))
    }

    #[test]
    fn dispatches_by_offset() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fa, &mut buf));
        assert_eq!(buf, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![9])));
        assert!(!bus.read(0x400, &mut buf));
        assert!(!bus.write(0x3f7, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(recorder(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(recorder(), 0x110, 1).unwrap();
        bus.insert(recorder(), 0xf0, 0x10).unwrap();
    }
}
