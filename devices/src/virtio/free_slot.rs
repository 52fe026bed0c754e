//! A free virtio-mmio slot: a register window whose DeviceID reads 0.
//!
//! Virtio 1.2 §4.2.2: a DeviceID of 0x0 is a placeholder, and "the driver
//! MUST ignore a device with DeviceID 0x0, but MUST NOT report any error":
//! Linux's virtio-mmio driver stops probing it (`-ENODEV`) and leaves the
//! platform device unbound. A VM booted with free slots announced on its
//! kernel command line can later be given a real device in one of them
//! (after a snapshot is restored, see `docs/snapshot.md`): the guest binds
//! it through `/sys/bus/platform/drivers/virtio-mmio/bind`, which probes
//! the slot again.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{ActivateError, ActivateParams, VirtioDevice};

/// The DeviceID of a free slot (§4.2.2).
pub const FREE_SLOT_DEVICE_ID: u32 = 0;

/// A free slot: no queues, no features, no configuration space; it
/// refuses activation (a driver never gets that far).
#[derive(Debug, Default)]
pub struct FreeSlot;

impl VirtioDevice for FreeSlot {
    fn device_type(&self) -> u32 {
        FREE_SLOT_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, _params: ActivateParams) -> Result<(), ActivateError> {
        Err(ActivateError::Backend(
            "a free virtio-mmio slot (DeviceID 0) has no device to activate".into(),
        ))
    }

    fn is_activated(&self) -> bool {
        false
    }

    fn reset(&mut self) -> bool {
        true
    }
}

impl MutEventSubscriber for FreeSlot {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}

    fn init(&mut self, _ops: &mut EventOps) {}
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::virtio::test_utils::guest_memory;
    use crate::virtio::MmioTransport;
    use crate::BusDevice;

    #[test]
    fn a_free_slot_reads_as_a_virtio_device_with_id_zero() {
        let mut t = MmioTransport::new(guest_memory(), Arc::new(Mutex::new(FreeSlot))).unwrap();
        let mut read = |offset: u64| {
            let mut b = [0u8; 4];
            t.read(offset, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(read(0x000), 0x7472_6976, "MagicValue \"virt\"");
        assert_eq!(read(0x004), 2, "Version");
        assert_eq!(read(0x008), FREE_SLOT_DEVICE_ID, "DeviceID");
        assert_eq!(read(0x034), 0, "QueueNumMax of queue 0: no queues");
    }
}
