//! Firecracker's activation pattern: a device is activated on a vCPU
//! thread (the guest wrote `DRIVER_OK`) but runs on the event loop, so
//! activation only writes an *activate eventfd*; the event loop, watching
//! it since `init`, then registers the queue eventfds with `ops.add`.

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::EventFd;

/// Event data of the activate eventfd.
pub const ACTIVATE_TOKEN: u32 = 0;
/// Event data of queue `i`'s eventfd: `QUEUE_TOKEN_BASE + i`.
pub const QUEUE_TOKEN_BASE: u32 = 1;

/// The activate eventfd and the queue eventfds registered with the event
/// loop.
///
/// The queue eventfds registered on the first activation are kept for the
/// device's life: every activation hands over clones of the same
/// transport eventfds, so the first set stays valid across resets and the
/// event loop never holds a stale fd.
#[derive(Debug)]
pub struct Activation {
    evt: EventFd,
    registered: Option<Vec<EventFd>>,
}

impl Activation {
    /// A new, unsignalled activate eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            registered: None,
        })
    }

    /// Called from `activate` (vCPU thread): wakes the event loop.
    pub fn signal(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }

    /// Called from `MutEventSubscriber::init`: watches the activate eventfd.
    pub fn init(&self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.evt, ACTIVATE_TOKEN, EventSet::IN)) {
            tracing::error!("virtio: cannot watch activate eventfd: {e:?}");
        }
    }

    /// Called when the activate eventfd fires: registers `queue_evts` with
    /// the event loop unless a previous activation did.
    pub fn on_activate(&mut self, ops: &mut EventOps, queue_evts: Option<Vec<EventFd>>) {
        let _ = self.evt.read();
        let Some(queue_evts) = queue_evts else {
            return;
        };
        if self.registered.is_some() {
            return;
        }
        for (i, evt) in queue_evts.iter().enumerate() {
            let token = QUEUE_TOKEN_BASE + i as u32;
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                tracing::error!("virtio: cannot watch queue {i} eventfd: {e:?}");
            }
        }
        self.registered = Some(queue_evts);
    }

    /// Re-signals queue `idx`, so that the event loop comes back to a queue
    /// that still has work after a bounded batch.
    pub fn kick_queue(&self, idx: usize) {
        if let Some(evt) = self.registered.as_ref().and_then(|v| v.get(idx)) {
            let _ = evt.write(1);
        }
    }

    /// Consumes a notification of queue `idx`.
    pub fn drain_queue_evt(&self, idx: usize) {
        if let Some(evt) = self.registered.as_ref().and_then(|v| v.get(idx)) {
            let _ = evt.read();
        }
    }
}
