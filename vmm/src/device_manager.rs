//! The device manager: the port-I/O and MMIO buses, the MMIO slots and IRQ
//! lines handed to devices, and the list of virtio-mmio devices announced
//! on the kernel command line.

use std::sync::{Arc, Mutex};

use capsa_devices::virtio::{self, VirtioDevice};
use capsa_devices::{Bus, BusError, SharedBusDevice};
use event_manager::{MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::EventLoop;

use crate::arch::x86_64::layout::{
    IRQ_BASE, IRQ_MAX, VIRTIO_MMIO_END, VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_START,
};
use crate::boot::cmdline::MmioDeviceInfo;

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The address range is taken.
    #[error("cannot place device: {0}")]
    Bus(#[from] BusError),
    /// No MMIO slot or IRQ line is left.
    #[error("too many devices: no {0} left")]
    Exhausted(&'static str),
    /// An eventfd or KVM registration failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Buses and allocators of one VM.
#[derive(Default)]
pub struct DeviceManager {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// virtio-mmio devices, in the order they are announced.
    pub virtio_devices: Vec<MmioDeviceInfo>,
    /// The transport of each of [`DeviceManager::virtio_devices`], in the
    /// same order (what a snapshot saves and a restore sets).
    pub transports: Vec<Arc<Mutex<virtio::MmioTransport>>>,
    next_slot: u64,
    next_irq: u32,
}

impl DeviceManager {
    /// An empty device manager.
    pub fn new() -> Self {
        Self {
            next_slot: VIRTIO_MMIO_START,
            next_irq: IRQ_BASE,
            ..Default::default()
        }
    }

    /// Puts a port-I/O device at `[base, base + len)`.
    pub fn add_pio(
        &mut self,
        dev: SharedBusDevice,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        Ok(self.pio.insert(dev, base, len)?)
    }

    /// Puts an MMIO device at `[base, base + len)`.
    pub fn add_mmio(
        &mut self,
        dev: SharedBusDevice,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        Ok(self.mmio.insert(dev, base, len)?)
    }

    /// Hands out the next virtio-mmio slot and IRQ line.
    pub fn allocate_virtio_slot(&mut self) -> Result<MmioDeviceInfo, DeviceError> {
        if self.next_slot + VIRTIO_MMIO_SLOT_SIZE > VIRTIO_MMIO_END {
            return Err(DeviceError::Exhausted("MMIO slot"));
        }
        if self.next_irq > IRQ_MAX {
            return Err(DeviceError::Exhausted("IRQ line"));
        }
        let info = MmioDeviceInfo {
            base: self.next_slot,
            size: VIRTIO_MMIO_SLOT_SIZE,
            irq: self.next_irq,
        };
        self.next_slot += VIRTIO_MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(info)
    }

    /// Attaches a virtio device: wraps it in a virtio-mmio transport in the
    /// next slot, registers its interrupt (irqfd on the slot's IRQ line) and
    /// its queue notifications (one ioeventfd per queue on the QueueNotify
    /// register, datamatch = queue index) with KVM, adds it to the event
    /// loop and records it for the command line.
    pub fn attach_virtio<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        event_loop: &mut EventLoop,
        device: D,
    ) -> Result<MmioDeviceInfo, DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let slot = self.allocate_virtio_slot()?;
        let io_err = |what| move |source| DeviceError::Io { what, source };
        let att = virtio::attach(device, mem.clone()).map_err(io_err("virtio-mmio transport"))?;
        self.mmio
            .insert(att.transport.clone(), slot.base, slot.size)?;
        vm.register_irqfd(&att.irq_evt, slot.irq)
            .map_err(|e| io_err("KVM_IRQFD")(e.into()))?;
        for (i, evt) in att.queue_evts.iter().enumerate() {
            let addr = IoEventAddress::Mmio(slot.base + virtio::NOTIFY_REG_OFFSET);
            vm.register_ioevent(evt, &addr, i as u32)
                .map_err(|e| io_err("KVM_IOEVENTFD")(e.into()))?;
        }
        event_loop.add_subscriber(att.subscriber);
        self.virtio_devices.push(slot);
        self.transports.push(att.transport);
        Ok(slot)
    }
}

/// Creates an eventfd registered as an irqfd for `gsi`.
pub fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, DeviceError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::Io {
        what: "eventfd",
        source,
    })?;
    vm.register_irqfd(&evt, gsi).map_err(|e| DeviceError::Io {
        what: "KVM_IRQFD",
        source: e.into(),
    })?;
    Ok(evt)
}

/// Wraps a device for the bus.
pub fn shared<T: capsa_devices::BusDevice + 'static>(dev: T) -> Arc<Mutex<T>> {
    Arc::new(Mutex::new(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_irqs_are_handed_out_in_order_until_exhausted() {
        let mut dm = DeviceManager::new();
        let a = dm.allocate_virtio_slot().unwrap();
        let b = dm.allocate_virtio_slot().unwrap();
        assert_eq!((a.base, a.irq), (VIRTIO_MMIO_START, IRQ_BASE));
        assert_eq!((b.base, b.irq), (VIRTIO_MMIO_START + 0x1000, IRQ_BASE + 1));
        let mut n = 2;
        while dm.allocate_virtio_slot().is_ok() {
            n += 1;
        }
        assert_eq!(n, (IRQ_MAX - IRQ_BASE + 1) as usize);
    }
}
