//! What every virtio device of capsa keeps the same way (Cloud
//! Hypervisor's `VirtioCommon` is the model): the features, the queues
//! once the driver set them up, their notify eventfds, the activation
//! handshake with the event loop ([`Activation`]), and the loop that
//! serves a queue with a budget per event ([`VirtioCommon::drain_queue`]).
//! Each device file then holds only its own logic: what one descriptor
//! chain means.

use event_manager::EventOps;
use vmm_sys_util::eventfd::EventFd;

use super::activation::{Activation, QUEUE_TOKEN_BASE};
use super::queue::{self, Chain, DeviceQueues, QueueError};
use virtio_queue::Queue;

use super::{ActivateError, ActivateParams, GuestMemory};

/// Chains a device serves from one queue per event before it yields to
/// the event loop (twice the size of capsa's largest queue, 256): a guest
/// that keeps a queue full cannot starve the other devices and sockets;
/// the queue is re-signalled and served again on the next round.
pub const MAX_CHAINS_PER_EVENT: usize = 512;

/// Bytes a device moves between guest memory and the host for one queue
/// per event (as its handler counts them, [`ServeChain::bytes_moved`])
/// before it yields, after at least one chain (issue 14 item 6): a disk
/// request of many MiB or a queue full of entropy requests cannot keep
/// the event loop from the other devices (vsock, the console) for long.
pub const MAX_BYTES_PER_EVENT: u64 = 1 << 20;

/// What a device does with the chains of one queue, for
/// [`VirtioCommon::drain_queue`].
pub trait ServeChain {
    /// Whether to take another chain (asked before each one). Default: as
    /// long as there are chains.
    fn ready(&mut self) -> bool {
        true
    }

    /// Serves one chain; returns the number of bytes the device wrote into
    /// it (the used length), or `None` when it cannot serve it now: the
    /// chain is put back on the available ring and draining stops.
    fn serve<'m>(&mut self, chain: Chain<'m>, mem: &'m GuestMemory) -> Option<u32>;

    /// Bytes moved between guest memory and the host by the chains this
    /// handler served (both directions, the data of a request rather than
    /// its used length): [`VirtioCommon::drain_queue`] yields once
    /// [`MAX_BYTES_PER_EVENT`] is reached. Default: 0, only
    /// [`MAX_CHAINS_PER_EVENT`] bounds the handler.
    fn bytes_moved(&self) -> u64 {
        0
    }
}

/// A [`ServeChain`] made of a closure ([`serve_fn`]).
pub struct ServeFn<F>(F);

/// Serves every chain with `f` (see [`ServeChain::serve`]).
pub fn serve_fn<F>(f: F) -> ServeFn<F>
where
    F: for<'m> FnMut(Chain<'m>, &'m GuestMemory) -> Option<u32>,
{
    ServeFn(f)
}

impl<F> ServeChain for ServeFn<F>
where
    F: for<'m> FnMut(Chain<'m>, &'m GuestMemory) -> Option<u32>,
{
    fn serve<'m>(&mut self, chain: Chain<'m>, mem: &'m GuestMemory) -> Option<u32> {
        (self.0)(chain, mem)
    }
}

/// The state every device shares: features, queues, eventfds, activation.
pub struct VirtioCommon {
    queue_count: usize,
    avail_features: u64,
    acked_features: u64,
    activation: Activation,
    pending_evts: Option<Vec<EventFd>>,
    queues: Option<DeviceQueues>,
}

impl VirtioCommon {
    /// An inactive device with `queue_count` queues offering
    /// `avail_features`. Errors: no eventfd.
    pub fn new(queue_count: usize, avail_features: u64) -> std::io::Result<Self> {
        Ok(Self {
            queue_count,
            avail_features,
            acked_features: 0,
            activation: Activation::new()?,
            pending_evts: None,
            queues: None,
        })
    }

    /// The features offered.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records the driver's features (only those offered count).
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// [`VirtioDevice::activate`](super::VirtioDevice::activate): takes
    /// the queues (exactly `queue_count`) and wakes the event loop, which
    /// then registers the queue eventfds ([`VirtioCommon::on_activate`]).
    /// Runs on a vCPU thread; serves nothing.
    pub fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError> {
        if self.queues.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let (queues, evts) = params.into_queues(self.queue_count)?;
        self.queues = Some(queues);
        self.pending_evts = Some(evts);
        self.activation.signal().map_err(ActivateError::EventFd)
    }

    /// Whether the driver activated the device (and did not reset it).
    pub fn is_activated(&self) -> bool {
        self.queues.is_some()
    }

    /// Back to the state before activation (§2.4): the queues and the
    /// acked features are dropped.
    pub fn reset(&mut self) {
        self.queues = None;
        self.pending_evts = None;
        self.acked_features = 0;
    }

    /// Wakes the event loop without an activation (e.g. after a reset,
    /// so that the device drops what it watched).
    pub fn wake(&self) {
        let _ = self.activation.signal();
    }

    /// `MutEventSubscriber::init`: watches the activate eventfd.
    pub fn init(&self, ops: &mut EventOps) {
        self.activation.init(ops);
    }

    /// The activate eventfd fired: registers the queue eventfds (once for
    /// the device's life, see [`Activation`]).
    pub fn on_activate(&mut self, ops: &mut EventOps) {
        self.activation.on_activate(ops, self.pending_evts.take());
    }

    /// The queue index of event data `token` when it is one of this
    /// device's queue eventfds, whose notification is then consumed.
    pub fn on_queue_event(&self, token: u32) -> Option<usize> {
        let idx = token.checked_sub(QUEUE_TOKEN_BASE)? as usize;
        if idx >= self.queue_count {
            return None;
        }
        self.activation.drain_queue_evt(idx);
        Some(idx)
    }

    /// Where the device is in each queue's rings, while it is active
    /// ([`VirtioDevice::queue_positions`](super::VirtioDevice::queue_positions)).
    pub fn queue_positions(&self) -> Option<Vec<super::persist::QueuePosition>> {
        use virtio_queue::QueueT;
        let dq = self.queues.as_ref()?;
        Some(
            dq.queues
                .iter()
                .map(|q| super::persist::QueuePosition {
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                })
                .collect(),
        )
    }

    /// The active queues, unless a ring error failed the device.
    pub fn queues(&self) -> Option<&DeviceQueues> {
        self.queues.as_ref()
    }

    /// Serves queue `idx` with `f`, for work that
    /// [`VirtioCommon::drain_queue`]'s one chain at a time cannot express:
    /// virtio-net's receive path, where one frame takes several chains
    /// published together (§5.1.6.4). `f` pops and returns chains itself
    /// (`queue::pop`, `add_used`, `add_used_many`), bounds its own work,
    /// and returns whether it used any chain; the guest is then notified
    /// (unless it suppressed notifications). A ring error fails the device
    /// (`DEVICE_NEEDS_RESET`). Nothing happens before activation or once
    /// the device failed.
    pub fn serve_queue(
        &mut self,
        idx: usize,
        f: impl FnOnce(&mut Queue, &GuestMemory) -> Result<bool, QueueError>,
    ) {
        let Some(dq) = self.queues.as_mut().filter(|dq| !dq.broken) else {
            return;
        };
        if idx >= dq.queues.len() {
            return;
        }
        let mem = dq.mem.clone();
        match f(&mut dq.queues[idx], &mem) {
            Ok(true) => dq.notify(idx),
            Ok(false) => {}
            Err(e) => dq.fail(&e),
        }
    }

    /// Serves queue `idx` with `handler`: at most
    /// [`MAX_CHAINS_PER_EVENT`] chains, and no more once the handler has
    /// moved [`MAX_BYTES_PER_EVENT`] bytes, each returned on the used ring
    /// with the length `handler` reports; then notifies the guest if any
    /// chain was used (unless it suppressed notifications, §2.7.7) and, if
    /// the budget ran out, re-signals the queue so that the event loop
    /// comes back to it. A ring error fails the device
    /// (`DEVICE_NEEDS_RESET`, §2.1.2). Returns the chains used. Nothing
    /// happens before activation or once the device failed.
    pub fn drain_queue(&mut self, idx: usize, handler: &mut impl ServeChain) -> usize {
        let Some(dq) = self.queues.as_mut().filter(|dq| !dq.broken) else {
            return 0;
        };
        if idx >= dq.queues.len() {
            return 0;
        }
        let mem = dq.mem.clone();
        let mut used = 0usize;
        let mut more = false;
        while handler.ready() {
            if used == MAX_CHAINS_PER_EVENT || handler.bytes_moved() >= MAX_BYTES_PER_EVENT {
                more = true;
                break;
            }
            let chain = match queue::pop(&mut dq.queues[idx], &mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    dq.fail(&e);
                    break;
                }
            };
            let head = chain.head_index();
            let Some(len) = handler.serve(chain, &mem) else {
                queue::undo_pop(&mut dq.queues[idx]);
                break;
            };
            if let Err(e) = queue::add_used(&mut dq.queues[idx], &mem, head, len) {
                dq.fail(&e);
                break;
            }
            used += 1;
        }
        if used > 0 {
            dq.notify(idx);
        }
        if more {
            self.activation.kick_queue(idx);
        }
        used
    }
}
