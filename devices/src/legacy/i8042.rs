//! The i8042 keyboard controller, only as far as a guest needs it to reset
//! the machine: Linux with `reboot=k` writes the CPU-reset command `0xFE`
//! to port `0x64`, which capsa turns into a clean VM exit.

use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// An i8042 at ports `0x60..=0x64` (insert it at [`I8042::PORT_BASE`] with
/// length [`I8042::PORT_LEN`]).
pub struct I8042 {
    inner: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// First port of the controller (the data port).
    pub const PORT_BASE: u64 = 0x60;
    /// Ports from the data port up to and including the command port.
    pub const PORT_LEN: u64 = 5;

    /// A controller that signals `reset_evt` when the guest resets the CPU.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(EventFdTrigger::new(reset_evt)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < Self::PORT_LEN {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= Self::PORT_LEN {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            tracing::warn!("i8042: cannot signal the reset event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn cpu_reset_command_signals_reset_event() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(0, &[0xfe]); // data port: not a command
        assert!(evt.read().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
