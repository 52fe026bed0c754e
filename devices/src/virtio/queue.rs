//! Device-side virtqueue plumbing shared by the devices: popping descriptor
//! chains and returning them on the used ring (§2.7), with the guest's
//! ring errors turned into a failed device instead of a panic or a loop.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{GuestMemory, Interrupt};

/// A chain popped from a queue, borrowing guest memory.
pub type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// Errors of the guest's rings. Each one leaves the queue unusable: the
/// device sets `DEVICE_NEEDS_RESET` (§2.1.2) and stops using the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The available ring index moved by more than the queue size
    /// (§2.7.6: the driver made more buffers available than fit), or the
    /// ring cannot be read.
    #[error("available ring unusable: {0}")]
    AvailRing(virtio_queue::Error),
    /// The used ring cannot be written.
    #[error("used ring unusable: {0}")]
    UsedRing(virtio_queue::Error),
}

/// One active device's queues, its memory and its interrupt line.
pub struct DeviceQueues {
    /// Guest memory.
    pub mem: GuestMemory,
    /// Interrupt line.
    pub interrupt: Arc<Interrupt>,
    /// The queues in index order.
    pub queues: Vec<Queue>,
    /// Set once a ring error was seen; the queues are not used any more.
    pub broken: bool,
}

impl DeviceQueues {
    /// Wraps the queues handed over at activation.
    pub fn new(mem: GuestMemory, interrupt: Arc<Interrupt>, queues: Vec<Queue>) -> Self {
        Self {
            mem,
            interrupt,
            queues,
            broken: false,
        }
    }

    /// Marks the device failed after a ring error.
    pub fn fail(&mut self, e: &QueueError) {
        tracing::error!("virtio: {e}; device needs reset");
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Signals the guest if queue `idx` wants a notification (respects
    /// `VRING_AVAIL_F_NO_INTERRUPT`, §2.7.7).
    pub fn notify(&mut self, idx: usize) {
        let Some(q) = self.queues.get_mut(idx) else {
            return;
        };
        match q.needs_notification(&self.mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => self.interrupt.signal_used_queue(),
        }
    }
}

/// Pops the next available chain of `queue`. `Ok(None)`: nothing available.
pub fn pop<'a>(queue: &mut Queue, mem: &'a GuestMemory) -> Result<Option<Chain<'a>>, QueueError> {
    let mut iter = queue.iter(mem).map_err(QueueError::AvailRing)?;
    Ok(iter.next())
}

/// Puts back the chain popped last (the device could not use it yet).
pub fn undo_pop(queue: &mut Queue) {
    queue.go_to_previous_position();
}

/// Returns chain `head` with `len` bytes written by the device.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue.add_used(mem, head, len).map_err(QueueError::UsedRing)
}

/// Returns several chains on the used ring and publishes them with one
/// update of the used index, so that the driver never sees some of them
/// without the others (§5.1.6.4: the buffers of one merged packet).
/// Entries are `(head, written length)`.
pub fn add_used_many(
    queue: &mut Queue,
    mem: &GuestMemory,
    used: &[(u16, u32)],
) -> Result<(), QueueError> {
    use std::num::Wrapping;
    use std::sync::atomic::Ordering;
    use vm_memory::{Address, Bytes, GuestAddress};
    // §2.7.8: struct virtq_used { le16 flags; le16 idx; virtq_used_elem ring[]; }
    // with virtq_used_elem { le32 id; le32 len; }.
    const RING_OFFSET: u64 = 4;
    const ELEM_LEN: u64 = 8;
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let ring_err = |e| QueueError::UsedRing(virtio_queue::Error::GuestMemory(e));
    let mut next = Wrapping(queue.next_used());
    for &(head, len) in used {
        if head >= size {
            return Err(QueueError::UsedRing(
                virtio_queue::Error::InvalidDescriptorIndex,
            ));
        }
        let offset = RING_OFFSET + u64::from(next.0 % size) * ELEM_LEN;
        let addr = ring
            .checked_add(offset)
            .ok_or(QueueError::UsedRing(virtio_queue::Error::AddressOverflow))?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr).map_err(ring_err)?;
        next += Wrapping(1);
    }
    queue.set_next_used(next.0);
    let idx = ring
        .checked_add(2)
        .ok_or(QueueError::UsedRing(virtio_queue::Error::AddressOverflow))?;
    mem.store(u16::to_le(next.0), idx, Ordering::Release)
        .map_err(ring_err)
}
