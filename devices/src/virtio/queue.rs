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
