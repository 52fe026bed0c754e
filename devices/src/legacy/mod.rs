//! Legacy PC devices on port I/O, built on `vm-superio`.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{Serial, SerialSnapshot, SERIAL_PORT_BASE, SERIAL_PORT_IRQ, SERIAL_PORT_LEN};

use vmm_sys_util::eventfd::EventFd;

/// A `vm-superio` trigger backed by an eventfd: an irqfd for the serial
/// port's interrupt line, or the reset event of the i8042.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
