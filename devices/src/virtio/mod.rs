//! Virtio devices on the virtio-mmio transport (virtio 1.2).
//!
//! - [`mmio`]: the virtio-mmio transport (§4.2.2, register layout version 2),
//!   a [`BusDevice`](crate::BusDevice) that the vCPU threads call.
//! - [`net`]: virtio-net (§5.1) backed by a TAP device.
//! - [`block`]: virtio-blk (§5.2) backed by a host file.
//! - [`vsock`]: virtio-vsock (§5.10) with Firecracker's hybrid Unix-socket
//!   backend.
//! - [`rng`]: virtio-rng (§5.4) fed by the host's `getrandom(2)`.
//! - [`common`]: what every device shares ([`common::VirtioCommon`]:
//!   features, queues, eventfds, activation) and the loop that serves a
//!   queue with a budget per event.
//! - [`fs`]: virtio-fs (§5.11), a vhost-user frontend whose backend
//!   (`virtiofsd`) serves the queues.
//! - [`free_slot`]: a slot with DeviceID 0 (§4.2.2), which the guest
//!   ignores until a device is put there and bound.
//!
//! # Threads
//!
//! The transport runs on vCPU threads (MMIO exits). The devices run on the
//! VMM's event loop (`event-manager`): each device is a
//! [`MutEventSubscriber`](event_manager::MutEventSubscriber). When the guest
//! writes `DRIVER_OK`, the transport (vCPU thread) calls
//! [`VirtioDevice::activate`], which only stores the queues and writes the
//! device's *activate eventfd*; the event loop sees that eventfd and
//! registers the queue eventfds (Firecracker's pattern). Requests are
//! therefore always processed on the event loop, never on a vCPU thread.
//!
//! # How the VMM attaches a device
//!
//! ```no_run
//! # use std::sync::{Arc, Mutex};
//! # use event_manager::SubscriberOps;
//! # use capsa_devices::virtio::{self, rng::Rng};
//! # fn f(mem: vm_memory::GuestMemoryMmap<()>, bus: &mut capsa_devices::Bus,
//! #      em: &mut event_manager::EventManager<Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let base = 0xd000_0000u64; // a free 4 KiB MMIO slot
//! let gsi = 5u32;            // a free IOAPIC pin
//! let att = virtio::attach(Rng::new()?, mem)?;
//! bus.insert(att.transport.clone(), base, virtio::MMIO_SLOT_LEN)?;
//! // vm.register_irqfd(&att.irq_evt, gsi)?;
//! // for (i, evt) in att.queue_evts.iter().enumerate() {
//! //     vm.register_ioevent(evt, &IoEventAddress::Mmio(base + virtio::NOTIFY_REG_OFFSET), i as u32)?;
//! // }
//! em.add_subscriber(att.subscriber.clone());
//! let cmdline_arg = virtio::cmdline_arg(base, gsi); // "virtio_mmio.device=4K@0xd0000000:5"
//! # let _ = cmdline_arg; Ok(()) }
//! ```

pub mod activation;
pub mod block;
pub mod common;
pub mod free_slot;
pub mod fs;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queue;
pub mod rng;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// Guest memory as the devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Length of the virtio-mmio register window in bytes (§4.2.2: registers
/// up to 0x0fc, device config from 0x100; capsa's devices have < 256 bytes
/// of config).
pub const MMIO_WINDOW_LEN: u64 = 0x200;
/// Size of the MMIO slot the VMM reserves per device (one 4 KiB page, as
/// announced by `virtio_mmio.device=4K@...`). Reads beyond
/// [`MMIO_WINDOW_LEN`] return zeroes.
pub const MMIO_SLOT_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register (§4.2.2), where the VMM registers one
/// ioeventfd per queue with datamatch = queue index (32-bit write).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

/// Device status bits (§2.1, `include/uapi/linux/virtio_config.h`).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// The driver acknowledged the features it understands.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// `VIRTIO_F_VERSION_1` (§6, `include/uapi/linux/virtio_config.h`): bit 32.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device IDs (§5, `include/uapi/linux/virtio_ids.h`).
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-rng (entropy).
    pub const RNG: u32 = 4;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// InterruptStatus bit: the device used a buffer (§4.2.2,
/// `VIRTIO_MMIO_INT_VRING` in `include/uapi/linux/virtio_mmio.h`).
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed (§4.2.2,
/// `VIRTIO_MMIO_INT_CONFIG`).
pub const INT_CONFIG: u32 = 2;

/// The interrupt line of one device, shared by the transport (which reads
/// and acknowledges InterruptStatus) and the device (which raises it from
/// the event loop).
///
/// Raising writes 1 to the irqfd that the VMM registered with `KVM_IRQFD`
/// (an edge on the device's GSI).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq_evt: EventFd,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
}

impl Interrupt {
    /// An interrupt line writing to `irq_evt`.
    pub fn new(irq_evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq_evt,
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
        }
    }

    /// The irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Current InterruptStatus (bits [`INT_VRING`], [`INT_CONFIG`]).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the bits of `mask`.
    pub fn ack(&self, mask: u32) {
        self.status.fetch_and(!mask, Ordering::SeqCst);
    }

    /// Signals "used buffer notification" (§2.7.10).
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Signals "configuration change notification" (§2.5.1); also bumps
    /// ConfigGeneration.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// Marks the device as needing a reset (§2.1.2: sets
    /// `DEVICE_NEEDS_RESET` and sends a configuration change notification).
    /// Called by a device when the guest broke a rule that leaves its
    /// queues in an unknown state.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            tracing::warn!("virtio device needs reset");
            self.signal_config_change();
        }
    }

    /// Whether [`Interrupt::set_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// ConfigGeneration (§4.2.2).
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Sets the state saved in a snapshot: InterruptStatus, ConfigGeneration
    /// and `DEVICE_NEEDS_RESET`. Raises nothing: the interrupt controller's
    /// own saved state says whether the line was pending.
    pub fn restore(&self, status: u32, config_generation: u32, needs_reset: bool) {
        self.status
            .store(status & (INT_VRING | INT_CONFIG), Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Back to the power-on state (device reset, §2.4).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq_evt.write(1) {
            tracing::error!("virtio: cannot write irqfd: {e}");
        }
    }
}

/// Errors of [`VirtioDevice::activate`].
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a number of queues the device does not have.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues of the device.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// The device is already active.
    #[error("device already activated")]
    AlreadyActive,
    /// Writing the activate eventfd failed.
    #[error("cannot signal activation: {0}")]
    EventFd(std::io::Error),
    /// The device's backend is unusable.
    #[error("{0}")]
    Backend(String),
}

/// What the transport hands to a device when the driver writes
/// `DRIVER_OK`.
pub struct ActivateParams {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
    /// The queues, set up and validated by the transport, in index order.
    pub queues: Vec<Queue>,
    /// One eventfd per queue (clones of the transport's), signalled when
    /// the guest notifies the queue.
    pub queue_evts: Vec<EventFd>,
}

impl ActivateParams {
    /// Checks that the driver set up exactly `expected` queues and splits
    /// the parameters into the device's queues and their notify eventfds
    /// (to be registered on the event loop once activation is signalled).
    pub fn into_queues(
        self,
        expected: usize,
    ) -> Result<(queue::DeviceQueues, Vec<EventFd>), ActivateError> {
        if self.queues.len() != expected || self.queue_evts.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: self.queues.len(),
            });
        }
        let queues = queue::DeviceQueues::new(self.mem, self.interrupt, self.queues);
        Ok((queues, self.queue_evts))
    }
}

/// A virtio device behind a transport (crosvm/Firecracker style).
///
/// Implementations run their queues on the event loop: `activate` is
/// called on a vCPU thread and must not process requests itself.
pub trait VirtioDevice: Send {
    /// The device ID (§5, [`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (bit numbers as in §6 and the device sections).
    fn avail_features(&self) -> u64;
    /// The features the driver acked, called when FEATURES_OK is accepted.
    /// A subset of [`VirtioDevice::avail_features`].
    fn set_acked_features(&mut self, features: u64);
    /// Reads `data.len()` bytes of the device configuration space at
    /// `offset`; bytes outside the configuration read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space. Default: ignored (none of
    /// capsa's devices have writable configuration fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio: ignored config write at {offset:#x} ({} bytes)",
            data.len()
        );
    }
    /// Takes the queues and starts the device (on the event loop).
    fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError>;
    /// Whether the device is active.
    fn is_activated(&self) -> bool;
    /// Back to the state before activation (§2.4). Returns false when the
    /// device cannot be reset; the transport then keeps it failed.
    /// Default: cannot reset.
    fn reset(&mut self) -> bool {
        false
    }
    /// Whether the device can be saved in a snapshot; `Err(why)` when it
    /// cannot. Default: it can.
    fn can_snapshot(&self) -> Result<(), String> {
        Ok(())
    }
    /// Where the device is in each queue's rings, in queue order, while it
    /// is active; `None` otherwise. Default: `None` (a device that keeps
    /// its queues in a [`common::VirtioCommon`] answers from there).
    fn queue_positions(&self) -> Option<Vec<persist::QueuePosition>> {
        None
    }
    /// Called once the device was activated from a snapshot in a fresh
    /// process: the device drops or announces what the snapshot could not
    /// carry (virtio-vsock: its connections). Default: nothing.
    fn restored(&mut self) {}
}

/// What the VMM gets from [`attach`]: everything needed to wire one
/// virtio-mmio device into the machine.
pub struct MmioAttachment {
    /// The register window: insert it on the MMIO bus at the slot's base
    /// with length [`MMIO_SLOT_LEN`].
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The device: add it to the event manager
    /// (`EventManager::add_subscriber`).
    pub subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
    /// Register with `KVM_IRQFD` on the device's GSI.
    pub irq_evt: EventFd,
    /// Queue `i`'s notify eventfd: register with `KVM_IOEVENTFD` at
    /// `base + NOTIFY_REG_OFFSET`, 4 bytes, datamatch `i as u32`.
    pub queue_evts: Vec<EventFd>,
}

/// Wraps `device` in a virtio-mmio transport; see the module docs for the
/// steps that follow.
///
/// Errors: creating or duplicating an eventfd failed.
pub fn attach<D>(device: D, mem: GuestMemory) -> std::io::Result<MmioAttachment>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let device = Arc::new(Mutex::new(device));
    let transport = MmioTransport::new(mem, device.clone())?;
    let irq_evt = transport.irq_evt().try_clone()?;
    let queue_evts = transport
        .queue_evts()
        .iter()
        .map(EventFd::try_clone)
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(MmioAttachment {
        transport: Arc::new(Mutex::new(transport)),
        subscriber: device,
        irq_evt,
        queue_evts,
    })
}

/// The kernel command-line argument announcing a virtio-mmio device
/// (`Documentation/admin-guide/kernel-parameters.txt`, `virtio_mmio.device=`).
pub fn cmdline_arg(base: u64, gsi: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{gsi}")
}

/// Locks `m`, recovering the data if a holder panicked: device state is
/// consistent between requests.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
