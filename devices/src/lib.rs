//! Device models of the capsa micro-VM monitor.
//!
//! Every device here is driven by a guest that capsa treats as hostile:
//! anything the guest writes (register values, descriptor chains, packet
//! headers) is validated, and a bad value gets an error path — a status
//! code, a failed device, a counter and a log line — never a panic of the
//! VMM process.
//!
//! - [`bus`]: the address space of port I/O or MMIO, mapping an address
//!   range to the device that owns it.
//! - [`legacy`]: the 8250 UART (serial console) and the i8042 controller
//!   (guest reset), both on `vm-superio`.
//! - [`boot_timer`]: the register the guest init writes to when it starts.
//! - [`virtio`]: the virtio-mmio transport and the virtio devices (net on
//!   a TAP, blk, vsock with the hybrid Unix-socket backend, rng, fs over
//!   vhost-user).
#![deny(missing_docs)]
// No function over 80 lines (clippy.toml): each does one step a reader can follow.
#![warn(clippy::too_many_lines)]

pub mod boot_timer;
pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, SharedBusDevice};
