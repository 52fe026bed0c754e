//! The boot timer: a one-register MMIO device that the guest's init writes
//! to as soon as it runs, so that the VMM can tell how long the guest took
//! to boot. Same idea as Firecracker's boot timer device.
//!
//! The agent (or any init) maps the page at the device's address through
//! `/dev/mem` and writes one byte: [`MAGIC_INIT_REACHED`] when init starts;
//! other values are recorded as later milestones (the agent writes
//! [`MAGIC_AGENT_READY`] once it listens on vsock).
//!
//! Only the first write of each value counts (issue 14 item 2): a guest
//! that writes in a loop queues at most 256 marks and logs at most 256
//! lines, whether or not anyone reads them.

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
    /// The values already reported, one bit each.
    seen: [u64; 4],
    /// Signalled at the first write of a value (the VMM's snapshot
    /// trigger at "agent ready").
    notify: Option<(u8, vmm_sys_util::eventfd::EventFd)>,
}

impl BootTimer {
    /// A boot timer measuring from `start`, reporting the first guest
    /// write of each value on `marks`.
    pub fn new(start: Instant, marks: Sender<BootMark>) -> Self {
        Self {
            start,
            marks,
            seen: [0; 4],
            notify: None,
        }
    }

    /// Also writes 1 to `evt` at the guest's first write of `value`.
    pub fn notify_on(mut self, value: u8, evt: vmm_sys_util::eventfd::EventFd) -> Self {
        self.notify = Some((value, evt));
        self
    }

    /// Marks `value` as seen; false when it was already.
    fn first_time(&mut self, value: u8) -> bool {
        let (word, bit) = (usize::from(value / 64), value % 64);
        let new = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        new
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a one-byte write at offset 0 is a mark; anything else the
        // guest writes here is ignored.
        if offset != 0 || data.len() != 1 || !self.first_time(data[0]) {
            return;
        }
        if let Some((_, evt)) = self.notify.as_ref().filter(|(v, _)| *v == data[0]) {
            let _ = evt.write(1);
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

    /// Issue 14 item 2: a guest writing the register in a loop used to
    /// queue one message per write on a channel nobody reads (VMM memory
    /// without bound). Only the first write of each value is a mark.
    #[test]
    fn boot_timer_write_loop_queues_one_mark_per_value() {
        let (tx, rx) = channel();
        let mut t = BootTimer::new(Instant::now(), tx);
        for i in 0..100_000u32 {
            t.write(0, &[MAGIC_INIT_REACHED]);
            t.write(0, &[i as u8]);
        }
        let marks: Vec<BootMark> = rx.try_iter().collect();
        assert_eq!(marks.len(), 256);
        assert_eq!(marks[0].value, MAGIC_INIT_REACHED);
        let mut values: Vec<u8> = marks.iter().map(|m| m.value).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), 256);
    }
}
