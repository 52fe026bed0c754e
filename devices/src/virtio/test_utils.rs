//! Shared fixtures of the virtio unit tests: guest memory, a dummy device
//! and a driver-side split virtqueue that tests fill the way a guest
//! driver would (§2.7), including in ways a real driver must not.

use std::sync::Arc;
use std::sync::Mutex;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, ActivateParams, GuestMemory, Interrupt, VirtioDevice};

/// Size of the test guest memory: 16 MiB at guest address 0.
pub const MEM_SIZE: u64 = 16 << 20;

/// 16 MiB of guest memory at 0 (the mmio tests only use the first MiB).
pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// [`MEM_SIZE`] of guest memory at 0 backed by a memfd and mapped shared,
/// as the VMM makes it (what a vhost-user backend needs).
pub fn memfd_guest_memory() -> GuestMemory {
    let fd =
        nix::sys::memfd::memfd_create(c"capsa-test-memory", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(MEM_SIZE).unwrap();
    GuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE as usize,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// A device that records what the transport does to it.
pub struct DummyDevice {
    max_sizes: Vec<u16>,
    pub acked: u64,
    pub activated: bool,
    pub resets: u32,
    pub fail_activation: Option<ActivateError>,
}

impl DummyDevice {
    pub const TYPE: u32 = 0x7e;

    pub fn new(max_sizes: &[u16]) -> Self {
        Self {
            max_sizes: max_sizes.to_vec(),
            acked: 0,
            activated: false,
            resets: 0,
            fail_activation: None,
        }
    }
}

impl VirtioDevice for DummyDevice {
    fn device_type(&self) -> u32 {
        Self::TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }
    fn avail_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xa0u8.wrapping_add(offset as u8).wrapping_add(i as u8);
        }
    }
    fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError> {
        if let Some(e) = self.fail_activation.take() {
            return Err(e);
        }
        assert_eq!(params.queues.len(), self.max_sizes.len());
        self.activated = true;
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated
    }
    fn reset(&mut self) -> bool {
        self.activated = false;
        self.resets += 1;
        true
    }
}

/// `VIRTQ_DESC_F_NEXT` (§2.7.5).
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE` (§2.7.5).
pub const F_WRITE: u16 = 2;

/// The driver's side of a split virtqueue in test guest memory: the
/// descriptor table at `base`, the available ring at `base + 0x1000`, the
/// used ring at `base + 0x2000` (room for 256 entries).
pub struct GuestQueue {
    pub mem: GuestMemory,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
        let q = Self {
            mem: mem.clone(),
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        q.mem.write_obj(0u16, GuestAddress(q.avail)).unwrap();
        q.mem.write_obj(0u16, GuestAddress(q.avail + 2)).unwrap();
        q.mem.write_obj(0u16, GuestAddress(q.used + 2)).unwrap();
        q
    }

    /// The device-side queue, as the transport would build it.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Writes raw descriptor `idx`.
    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = GuestAddress(self.desc + 16 * u64::from(idx));
        self.mem.write_obj(addr, a).unwrap();
        self.mem.write_obj(len, GuestAddress(a.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(a.0 + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(a.0 + 14)).unwrap();
    }

    /// Publishes head `head` on the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Sets the available index to anything (for hostile tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The head index the next [`GuestQueue::add_chain`] will use.
    pub fn next_head(&self) -> u16 {
        self.next_desc
    }

    /// Adds a chain of `(addr, len, writable)` buffers and publishes it;
    /// returns its head. Descriptors are taken round-robin from the table.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.write_desc(idx, addr, len, flags, self.next_desc);
        }
        self.publish(head);
        head
    }

    /// The next entry of the used ring: (head, written length).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.used_seen {
            return None;
        }
        let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(slot)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Number of used entries not yet popped.
    pub fn used_pending(&self) -> u16 {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        idx.wrapping_sub(self.used_seen)
    }
}

/// Activation parameters for `queues`, with fresh eventfds.
pub fn activate_params(
    mem: &GuestMemory,
    queues: &[&GuestQueue],
) -> (ActivateParams, Vec<EventFd>) {
    let evts: Vec<EventFd> = queues
        .iter()
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let params = ActivateParams {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        queues: queues.iter().map(|q| q.device_queue()).collect(),
        queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
    };
    (params, evts)
}

/// The VMM's event loop, with one device.
pub type TestEventManager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// An event manager running `dev`.
pub fn event_manager<D: MutEventSubscriber + Send + 'static>(
    dev: &Arc<Mutex<D>>,
) -> TestEventManager {
    let mut em = TestEventManager::new().unwrap();
    let sub: Arc<Mutex<dyn MutEventSubscriber + Send>> = dev.clone();
    em.add_subscriber(sub);
    em
}

/// Runs the loop until it has nothing to do (each round waits `ms`).
pub fn run_until_idle(em: &mut TestEventManager, ms: i32) {
    for _ in 0..1000 {
        if em.run_with_timeout(ms).unwrap() == 0 {
            return;
        }
    }
    panic!("event loop never went idle (busy loop?)");
}

/// Ends the whole test process if it is still alive after `limit`: a
/// test of a busy loop that regresses fails with a message instead of
/// hanging the run. Disarmed when dropped.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

/// Arms a [`Watchdog`] for test `name`.
pub fn watchdog(name: &'static str, limit: std::time::Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("{name}: still running after {limit:?} (busy loop?); aborting");
            std::process::abort();
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
