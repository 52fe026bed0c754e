//! The boot timer: a one-register MMIO device that the guest's init writes
//! to as soon as it runs, so that the VMM can tell how long the guest took
//! to boot. Same idea as Firecracker's boot timer device.
//!
//! The agent (or any init) maps the page at the device's address through
//! `/dev/mem` and writes one byte: [`MAGIC_INIT_REACHED`] when init starts;
//! other values are recorded as later milestones (the agent writes
//! [`MAGIC_AGENT_READY`] once it listens on vsock).

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// Size of the device's MMIO window in bytes (one page).
pub const BOOT_TIMER_LEN: u64 = 0x1000;
/// Value written by the guest init when it starts.
pub const MAGIC_INIT_REACHED: u8 = 123;
/// Value written by the guest agent when it accepts connections.
pub const MAGIC_AGENT_READY: u8 = 124;

/// A milestone reported by the guest through the boot timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootMark {
    /// The byte the guest wrote.
    pub value: u8,
    /// Time since the reference instant (the VMM process start).
    pub elapsed: Duration,
}

/// The boot timer device.
pub struct BootTimer {
    start: Instant,
    marks: Sender<BootMark>,
}

impl BootTimer {
    /// A boot timer measuring from `start`, reporting each guest write on
    /// `marks`.
    pub fn new(start: Instant, marks: Sender<BootMark>) -> Self {
        Self { start, marks }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a one-byte write at offset 0 is a mark; anything else the
        // guest writes here is ignored.
        if offset != 0 || data.len() != 1 {
            return;
        }
        let mark = BootMark {
            value: data[0],
            elapsed: self.start.elapsed(),
        };
        tracing::info!(
            value = mark.value,
            elapsed_us = mark.elapsed.as_micros() as u64,
            "guest boot-timer mark"
        );
        // A gone receiver only means nobody is listening any more.
        let _ = self.marks.send(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn records_one_byte_writes_at_offset_zero() {
        let (tx, rx) = channel();
        let mut t = BootTimer::new(Instant::now(), tx);
        t.write(0, &[MAGIC_INIT_REACHED]);
        t.write(1, &[5]);
        t.write(0, &[1, 2, 3, 4]);
        let mut buf = [0xffu8; 4];
        t.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
        let mark = rx.try_recv().unwrap();
        assert_eq!(mark.value, MAGIC_INIT_REACHED);
        assert!(rx.try_recv().is_err());
    }
}
