//! The 8250/16550 UART at COM1, emulated by `vm-superio`; its output goes
//! to a host writer (the VMM's stdout when `--serial-console` is given).

use std::io::Write;

use vm_superio::serial::NoEvents;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// COM1's first I/O port.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of ports a UART occupies.
pub const SERIAL_PORT_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const SERIAL_PORT_IRQ: u32 = 4;

/// A UART as a bus device.
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART that raises its interrupt through `irq_evt` (an irqfd) and
    /// writes what the guest transmits to `out`.
    pub fn new(irq_evt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: vm_superio::Serial::new(EventFdTrigger::new(irq_evt), out),
        }
    }
}

/// The UART's registers and receive FIFO for a snapshot (vm-superio's
/// `SerialState`, which has no serde form).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR and the scratch register, in that
    /// order.
    pub registers: [u8; 7],
    /// Bytes received and not yet read by the guest (at most 64, the
    /// FIFO's size).
    pub in_buffer: Vec<u8>,
}

impl Serial {
    /// The UART's state.
    pub fn state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in a saved state ([`Serial::new`] otherwise).
    ///
    /// Errors: the saved FIFO is larger than the UART's, or the interrupt
    /// cannot be raised.
    pub fn from_state(
        irq_evt: EventFd,
        out: Box<dyn Write + Send>,
        state: &SerialSnapshot,
    ) -> Result<Self, String> {
        let [ier, iir, lcr, lsr, mcr, msr, scr] = state.registers;
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: state.in_buffer.clone(),
        };
        let inner = vm_superio::Serial::from_state(&s, EventFdTrigger::new(irq_evt), NoEvents, out)
            .map_err(|e| format!("serial: {e:?}"))?;
        Ok(Self { inner })
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < SERIAL_PORT_LEN {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= SERIAL_PORT_LEN {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            tracing::debug!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_ignores_odd_accesses() {
        let sink = Sink::default();
        let mut s = Serial::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        s.write(0, b"h");
        s.write(0, b"i");
        s.write(0, b"xx"); // a two-byte access: ignored
        s.write(100, b"x"); // outside the UART: ignored
        let mut lsr = [0u8; 1];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmit holding register empty");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
    }
}
