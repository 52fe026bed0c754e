//! The virtio-mmio transport, register layout version 2 (virtio 1.2
//! §4.2.2). Legacy (version 1) registers are not implemented.
//!
//! What the guest writes is validated here before a device sees it:
//! - registers are 32 bits wide; other widths are ignored (reads return 0);
//! - queue registers can be written only between `FEATURES_OK` and
//!   `DRIVER_OK`, for an existing queue that is not ready (§4.2.2.2);
//! - QueueReady = 1 is accepted only for a size that is a power of two no
//!   larger than QueueNumMax, rings aligned as §2.7 requires (descriptor
//!   table 16, available ring 2, used ring 4) and inside guest memory;
//! - the status follows §3.1.1 (ACKNOWLEDGE → DRIVER → FEATURES_OK →
//!   DRIVER_OK; FAILED any time; 0 resets); FEATURES_OK is refused unless
//!   `VIRTIO_F_VERSION_1` was acked (§6.1);
//! - DRIVER_OK with a queue that is not ready, or a failed activation, sets
//!   `DEVICE_NEEDS_RESET` (§2.1.2).
//!
//! Every refused access is logged at debug level and counted in
//! [`MmioTransport::ignored_accesses`].

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::persist::{PersistError, QueueState, TransportState, CONFIG_SPACE_LEN};
use super::{lock, status, ActivateParams, GuestMemory, Interrupt, VirtioDevice};
use super::{MMIO_WINDOW_LEN, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

/// "virt" in little endian (§4.2.2, MagicValue).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Register layout version 2 (§4.2.2, Version; 1 is legacy).
pub const MMIO_VERSION: u32 = 2;
/// VendorID reported to the guest (no PCI vendor; 0 as Firecracker does).
pub const MMIO_VENDOR_ID: u32 = 0;

/// Register offsets (§4.2.2, `include/uapi/linux/virtio_mmio.h`).
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Per-queue state set up by the driver.
#[derive(Debug, Default, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    device_type: u32,
    avail_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    ignored: u64,
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem`, with a new irqfd
    /// and one new notify eventfd per queue.
    ///
    /// Errors: an eventfd cannot be created.
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>) -> std::io::Result<Self> {
        let (device_type, avail_features, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        let queue_evts = max_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        let queues = max_sizes
            .iter()
            .map(|&max_size| QueueConfig {
                max_size,
                size: max_size,
                ..Default::default()
            })
            .collect();
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK)?)),
            queue_evts,
            queues,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            ignored: 0,
        })
    }

    /// The device's type (§5, [`super::device_type`]).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The irqfd to register with `KVM_IRQFD`.
    pub fn irq_evt(&self) -> &EventFd {
        self.interrupt.irq_evt()
    }

    /// The notify eventfd of each queue, in queue order: register each
    /// with `KVM_IOEVENTFD` at `base + NOTIFY_REG_OFFSET`, datamatch = its
    /// index. A QueueNotify write that reaches [`BusDevice::write`]
    /// signals the same eventfd.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The shared interrupt state.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Device status as the guest reads it.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.needs_reset() {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Number of guest accesses refused so far (wrong width, bad offset,
    /// bad value, wrong state).
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored
    }

    fn refuse(&mut self, what: &str, offset: u64, value: u64) {
        self.ignored += 1;
        tracing::debug!(
            "virtio-mmio (type {}): ignored {what} at {offset:#x} value {value:#x} (status {:#x})",
            self.device_type,
            self.status
        );
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers are writable between FEATURES_OK and DRIVER_OK for a
    /// queue that is not ready (§4.2.2.2, §3.1.1).
    fn queue_writable(&self) -> bool {
        let s = self.status;
        s & status::FEATURES_OK != 0
            && s & (status::DRIVER_OK | status::FAILED) == 0
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            // §4.2.2: a non-existent shared memory region has length -1.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if !self.queue_writable() {
                    return self.refuse("QueueNum", offset, v.into());
                }
                let q = self.selected_queue().expect("checked by queue_writable");
                // Validated at QueueReady; u16 truncation would hide a bad
                // value, so keep out-of-range values as an invalid 0.
                q.size = u16::try_from(v).unwrap_or(0);
            }
            reg::QUEUE_READY => self.write_queue_ready(v),
            reg::QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        tracing::error!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
                None => self.refuse("QueueNotify", offset, v.into()),
            },
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if !self.queue_writable() {
                    return self.refuse("queue address", offset, v.into());
                }
                let q = self.selected_queue().expect("checked by queue_writable");
                let (field, high) = match offset {
                    reg::QUEUE_DESC_LOW => (&mut q.desc, false),
                    reg::QUEUE_DESC_HIGH => (&mut q.desc, true),
                    reg::QUEUE_DRIVER_LOW => (&mut q.avail, false),
                    reg::QUEUE_DRIVER_HIGH => (&mut q.avail, true),
                    reg::QUEUE_DEVICE_LOW => (&mut q.used, false),
                    _ => (&mut q.used, true),
                };
                *field = if high {
                    (*field & 0xffff_ffff) | (u64::from(v) << 32)
                } else {
                    (*field & !0xffff_ffff) | u64::from(v)
                };
            }
            reg::SHM_SEL => {}
            _ => self.refuse("write to read-only or unknown register", offset, v.into()),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        let s = self.status;
        if s & status::DRIVER == 0 || s & (status::FEATURES_OK | status::FAILED) != 0 {
            return self.refuse("DriverFeatures", reg::DRIVER_FEATURES, v.into());
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return self.refuse("DriverFeaturesSel page", reg::DRIVER_FEATURES, v.into()),
        };
        let mask = 0xffff_ffffu64 << shift;
        let page = (u64::from(v) << shift) & mask;
        if page & !self.avail_features != 0 {
            // §2.2.1: the driver MUST NOT accept a feature not offered.
            self.refuse("unoffered feature", reg::DRIVER_FEATURES, page);
        }
        self.acked_features = (self.acked_features & !mask) | (page & self.avail_features);
    }

    fn write_queue_ready(&mut self, v: u32) {
        // Un-readying a queue is allowed until DRIVER_OK (§4.2.2.2).
        let unready_ok = v == 0 && self.status & status::DRIVER_OK == 0;
        if !(self.queue_writable() || unready_ok) {
            return self.refuse("QueueReady", reg::QUEUE_READY, v.into());
        }
        let idx = self.queue_sel as usize;
        let Some(q) = self.queues.get(idx).copied() else {
            return self.refuse("QueueReady for missing queue", reg::QUEUE_READY, v.into());
        };
        if v == 0 {
            self.queues[idx].ready = false;
            return;
        }
        match build_queue(&q, &self.mem) {
            Ok(_) => self.queues[idx].ready = true,
            Err(why) => {
                self.refuse(why, reg::QUEUE_READY, v.into());
            }
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            return self.reset();
        }
        let old = self.status;
        if v & old != old {
            // Clearing bits other than by writing 0 is not a transition of §3.1.1.
            return self.refuse("Status clearing bits", reg::STATUS, v.into());
        }
        let added = v & !old;
        if added & FAILED != 0 {
            self.status = v;
            return;
        }
        let ok = match added {
            ACKNOWLEDGE => old == 0,
            DRIVER => old == ACKNOWLEDGE,
            FEATURES_OK => old == ACKNOWLEDGE | DRIVER,
            DRIVER_OK => old == ACKNOWLEDGE | DRIVER | FEATURES_OK,
            0 => true,
            _ => false,
        };
        if !ok {
            return self.refuse("Status transition", reg::STATUS, v.into());
        }
        match added {
            FEATURES_OK => {
                if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                    // §6.1: a device MUST refuse FEATURES_OK without
                    // VIRTIO_F_VERSION_1 (no legacy interface here).
                    return self.refuse("FEATURES_OK without VERSION_1", reg::STATUS, v.into());
                }
                lock(&self.device).set_acked_features(self.acked_features);
                self.status = v;
            }
            DRIVER_OK => {
                self.status = v;
                self.activate();
            }
            _ => self.status = v,
        }
    }

    fn activate(&mut self) {
        if let Err(why) = self.try_activate(None) {
            tracing::warn!("virtio-mmio: {why}");
            self.interrupt.set_needs_reset();
        }
    }

    /// Hands the queues to the device; with `saved`, each queue starts at
    /// the ring positions of a snapshot.
    fn try_activate(&mut self, saved: Option<&[QueueState]>) -> Result<(), String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            match q.ready.then(|| build_queue(q, &self.mem)) {
                Some(Ok(mut queue)) => {
                    if let Some(s) = saved.and_then(|s| s.get(i)) {
                        queue.set_next_avail(s.next_avail);
                        queue.set_next_used(s.next_used);
                    }
                    queues.push(queue)
                }
                _ => {
                    self.ignored += 1;
                    return Err(format!("DRIVER_OK with queue {i} not ready"));
                }
            }
        }
        let queue_evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("cannot clone queue eventfds: {e}"))?;
        let params = ActivateParams {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            queue_evts,
        };
        lock(&self.device)
            .activate(params)
            .map_err(|e| format!("activation failed: {e}"))
    }

    fn reset(&mut self) {
        let mut dev = lock(&self.device);
        if dev.is_activated() && !dev.reset() {
            drop(dev);
            tracing::warn!("virtio-mmio: device cannot reset; left failed");
            self.status = status::FAILED;
            return;
        }
        drop(dev);
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig {
                max_size: q.max_size,
                size: q.max_size,
                ..Default::default()
            };
        }
        self.interrupt.reset();
    }
}

impl MmioTransport {
    /// The state of the transport and its device, for a snapshot (take it
    /// while the vCPUs are paused and the event loop is not serving the
    /// device).
    ///
    /// Errors: [`PersistError::Unsupported`] for a device that cannot be
    /// snapshotted (virtio-fs).
    pub fn save_state(&self) -> Result<TransportState, PersistError> {
        let dev = lock(&self.device);
        dev.can_snapshot().map_err(PersistError::Unsupported)?;
        let activated = dev.is_activated();
        let positions = if activated {
            dev.queue_positions()
        } else {
            None
        };
        let mut config = vec![0u8; CONFIG_SPACE_LEN];
        for (i, chunk) in config.chunks_mut(8).enumerate() {
            dev.read_config((i * 8) as u64, chunk);
        }
        drop(dev);
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let p = positions
                    .as_ref()
                    .and_then(|p| p.get(i))
                    .copied()
                    .unwrap_or_default();
                QueueState {
                    max_size: q.max_size,
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                    next_avail: p.next_avail,
                    next_used: p.next_used,
                }
            })
            .collect();
        Ok(TransportState {
            device_type: self.device_type,
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
            activated,
            queues,
            config,
        })
    }

    /// Puts a snapshot's `state` on this transport, whose device was just
    /// built from the new command line and never activated, and activates
    /// the device at the saved ring positions when the snapshot's was
    /// active. Then the device is told it was restored
    /// ([`VirtioDevice::restored`]), a configuration space that differs
    /// from the saved one is announced (configuration change
    /// notification, §2.5.1, e.g. a disk of another size), and every
    /// queue is kicked once, so that buffers the driver made available
    /// before the snapshot are served.
    ///
    /// Errors: [`PersistError::Mismatch`] when the device type, the
    /// offered features or the queues differ from this device's;
    /// [`PersistError::Invalid`] when a ready queue's size or rings are
    /// invalid for guest memory (checked as a QueueReady write is), or the
    /// device refuses activation.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), PersistError> {
        self.check_restorable(state)?;
        let queues: Vec<QueueConfig> = state
            .queues
            .iter()
            .zip(&self.queues)
            .map(|(s, q)| QueueConfig {
                max_size: q.max_size,
                size: s.size,
                ready: s.ready,
                desc: s.desc,
                avail: s.avail,
                used: s.used,
            })
            .collect();
        for (i, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            build_queue(q, &self.mem)
                .map_err(|why| PersistError::Invalid(format!("queue {i}: {why}")))?;
        }
        self.queues = queues;
        self.acked_features = state.acked_features;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.interrupt.restore(
            state.interrupt_status,
            state.config_generation,
            state.needs_reset,
        );
        if state.status & status::FEATURES_OK != 0 {
            lock(&self.device).set_acked_features(state.acked_features);
        }
        let running = status::DRIVER_OK;
        if state.activated
            && state.status & (running | status::FAILED) == running
            && !state.needs_reset
        {
            self.try_activate(Some(&state.queues))
                .map_err(PersistError::Invalid)?;
            self.after_restore(state);
        }
        Ok(())
    }

    fn check_restorable(&self, state: &TransportState) -> Result<(), PersistError> {
        let mismatch = |what: String| Err(PersistError::Mismatch(what));
        if state.device_type != self.device_type {
            return mismatch(format!(
                "the snapshot has a device of type {} here, the command line one of type {}",
                state.device_type, self.device_type
            ));
        }
        if state.acked_features & !self.avail_features != 0 {
            return mismatch(format!(
                "the driver acked features {:#x} that this device does not offer ({:#x})",
                state.acked_features, self.avail_features
            ));
        }
        if state.queues.len() != self.queues.len() {
            return mismatch(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        for (i, (s, q)) in state.queues.iter().zip(&self.queues).enumerate() {
            if s.max_size != q.max_size {
                return mismatch(format!(
                    "queue {i}: saved maximum size {}, the device's is {}",
                    s.max_size, q.max_size
                ));
            }
        }
        if state.config.len() > CONFIG_SPACE_LEN {
            return Err(PersistError::Invalid(format!(
                "{} bytes of configuration space (at most {CONFIG_SPACE_LEN})",
                state.config.len()
            )));
        }
        Ok(())
    }

    fn after_restore(&mut self, state: &TransportState) {
        let mut dev = lock(&self.device);
        dev.restored();
        let mut config = vec![0u8; state.config.len()];
        for (i, chunk) in config.chunks_mut(8).enumerate() {
            dev.read_config((i * 8) as u64, chunk);
        }
        drop(dev);
        if config != state.config {
            tracing::info!(
                device_type = self.device_type,
                "configuration space differs from the snapshot's: announced to the driver"
            );
            self.interrupt.signal_config_change();
        }
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
    }
}

/// Builds and validates a queue from the driver's settings.
fn build_queue(q: &QueueConfig, mem: &GuestMemory) -> Result<Queue, &'static str> {
    if q.size == 0 || q.size > q.max_size || !q.size.is_power_of_two() {
        return Err("queue size not a power of two <= QueueNumMax");
    }
    let mut queue = Queue::new(q.max_size).map_err(|_| "bad max size")?;
    queue.try_set_size(q.size).map_err(|_| "bad queue size")?;
    queue
        .try_set_desc_table_address(GuestAddress(q.desc))
        .map_err(|_| "descriptor table misaligned")?;
    queue
        .try_set_avail_ring_address(GuestAddress(q.avail))
        .map_err(|_| "available ring misaligned")?;
    queue
        .try_set_used_ring_address(GuestAddress(q.used))
        .map_err(|_| "used ring misaligned")?;
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err("queue rings outside guest memory");
    }
    Ok(queue)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            if offset < MMIO_WINDOW_LEN && data.len() <= 8 {
                lock(&self.device).read_config(offset - reg::CONFIG, data);
            } else {
                self.refuse("config read", offset, data.len() as u64);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return self.refuse("register read of wrong width", offset, data.len() as u64);
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if offset < MMIO_WINDOW_LEN && data.len() <= 8 {
                lock(&self.device).write_config(offset - reg::CONFIG, data);
            } else {
                self.refuse("config write", offset, data.len() as u64);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return self.refuse("register write of wrong width", offset, data.len() as u64);
        };
        if offset % 4 != 0 {
            return self.refuse("unaligned register write", offset, 0);
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, DummyDevice};
    use crate::virtio::ActivateError;

    fn transport() -> (MmioTransport, Arc<Mutex<DummyDevice>>) {
        let dev = Arc::new(Mutex::new(DummyDevice::new(&[16, 8])));
        let t = MmioTransport::new(guest_memory(), dev.clone()).unwrap();
        (t, dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Drives the §3.1.1 sequence up to FEATURES_OK.
    fn negotiate(t: &mut MmioTransport) {
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1); // VERSION_1
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(r(t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    fn setup_queue(t: &mut MmioTransport, idx: u32, size: u32, base: u64) {
        w(t, reg::QUEUE_SEL, idx);
        w(t, reg::QUEUE_NUM, size);
        w(t, reg::QUEUE_DESC_LOW, base as u32);
        w(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        w(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(t, reg::QUEUE_READY, 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), DummyDevice::TYPE);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
        w(&mut t, reg::QUEUE_SEL, 9);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        assert_eq!(r(&mut t, reg::SHM_LEN_LOW), u32::MAX);
    }

    #[test]
    fn full_negotiation_activates_device() {
        let (mut t, dev) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(r(&mut t, reg::STATUS), ALL_OK);
        let d = dev.lock().unwrap();
        assert!(d.activated);
        assert_eq!(d.acked, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn features_ok_refused_without_version_1() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn unoffered_features_are_masked() {
        let (mut t, dev) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, u32::MAX);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, u32::MAX);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 2);
        w(&mut t, reg::DRIVER_FEATURES, u32::MAX);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(dev.lock().unwrap().acked, VIRTIO_F_VERSION_1);
        assert!(t.ignored_accesses() >= 3);
    }

    #[test]
    fn status_out_of_order_is_ignored() {
        let (mut t, dev) = transport();
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::STATUS, status::DRIVER_OK);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        negotiate(&mut t);
        // Clearing a bit without writing 0.
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        assert!(!dev.lock().unwrap().activated);
    }

    #[test]
    fn bad_queue_size_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        for size in [0u32, 3, 32, 0x1_0000 + 16, u32::MAX] {
            setup_queue(&mut t, 0, size, 0x10000);
            assert_eq!(r(&mut t, reg::QUEUE_READY), 0, "size {size}");
        }
    }

    #[test]
    fn queue_ready_before_address_set_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 16);
        // Rings all at 0: avail ring at guest address 0 is refused by
        // virtio-queue; and desc table overlapping is fine, but used ring
        // at 0 and avail at 0 are "not set".
        w(&mut t, reg::QUEUE_DESC_LOW, 0x10000);
        w(&mut t, reg::QUEUE_READY, 1);
        // Avail/used default to 0, which is inside memory: accepted by the
        // range check, so the device later refuses to use an avail ring at
        // 0 (virtio-queue's QueueNotReady). Either way, no panic.
        let _ = r(&mut t, reg::QUEUE_READY);
    }

    #[test]
    fn queue_rings_outside_memory_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0xffff_ffff_0000);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        // Last bytes of memory: the used ring would cross the end.
        setup_queue(&mut t, 0, 16, 0x10_0000 - 0x2008);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn misaligned_rings_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10001);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn queue_select_out_of_range_is_harmless() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 5, 16, 0x10000);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        w(&mut t, reg::QUEUE_NOTIFY, 5);
        w(&mut t, reg::QUEUE_NOTIFY, u32::MAX);
    }

    #[test]
    fn queue_writes_after_driver_ok_are_ignored() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::STATUS, ALL_OK);
        let before = t.ignored_accesses();
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 4);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x50000);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(t.ignored_accesses(), before + 3);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn driver_ok_with_missing_queue_needs_reset() {
        let (mut t, dev) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(!dev.lock().unwrap().activated);
        assert_ne!(
            r(&mut t, reg::INTERRUPT_STATUS) & super::super::INT_CONFIG,
            0
        );
        // Reset clears it.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn failed_activation_needs_reset() {
        let (mut t, dev) = transport();
        dev.lock().unwrap().fail_activation = Some(ActivateError::AlreadyActive);
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn reset_returns_to_initial_state() {
        let (mut t, dev) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::STATUS, ALL_OK);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        assert!(!dev.lock().unwrap().activated);
        assert_eq!(dev.lock().unwrap().resets, 1);
        // And it can be driven again.
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::STATUS, ALL_OK);
        assert!(dev.lock().unwrap().activated);
    }

    #[test]
    fn wrong_width_and_out_of_range_accesses() {
        let (mut t, _) = transport();
        let mut b1 = [0xffu8; 1];
        t.read(reg::MAGIC_VALUE, &mut b1);
        assert_eq!(b1, [0]);
        let mut b2 = [0xffu8; 2];
        t.read(reg::VERSION, &mut b2);
        assert_eq!(b2, [0, 0]);
        let mut b8 = [0xffu8; 8];
        t.read(reg::MAGIC_VALUE, &mut b8);
        assert_eq!(b8, [0; 8]);
        t.read(0x2, &mut [0u8; 4]); // unaligned
        t.write(reg::STATUS, &[1]);
        t.write(reg::STATUS, &[1, 0]);
        t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        t.write(0x71, &1u32.to_le_bytes());
        assert_eq!(r(&mut t, reg::STATUS), 0);
        // Beyond the window, and huge offsets.
        let mut b = [0xffu8; 4];
        t.read(0x800, &mut b);
        assert_eq!(b, [0; 4]);
        t.read(u64::MAX - 3, &mut b);
        t.write(u64::MAX, &[1]);
        t.write(0x100, &[0u8; 16]);
        t.read(0x100, &mut [0u8; 16]);
        t.read(0, &mut []);
        t.write(0, &[]);
        // Writes to read-only registers.
        w(&mut t, reg::MAGIC_VALUE, 0);
        w(&mut t, reg::INTERRUPT_STATUS, 0);
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert!(t.ignored_accesses() >= 10);
    }

    #[test]
    fn config_space_reads_reach_device() {
        let (mut t, _) = transport();
        let mut b = [0u8; 4];
        t.read(0x100, &mut b);
        assert_eq!(b, [0xa0, 0xa1, 0xa2, 0xa3]);
        let mut b = [0u8; 1];
        t.read(0x102, &mut b);
        assert_eq!(b, [0xa2]);
    }

    #[test]
    fn queue_notify_signals_eventfd() {
        let (mut t, _) = transport();
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
        assert!(t.queue_evts()[0].read().is_err()); // EAGAIN: not signalled
    }

    #[test]
    fn interrupt_ack_clears_bits() {
        let (mut t, _) = transport();
        t.interrupt().signal_used_queue();
        t.interrupt().signal_config_change();
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 3);
        assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 1);
        w(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 2);
        assert!(t.irq_evt().read().unwrap() >= 2);
    }

    #[test]
    fn failed_status_is_sticky_until_reset() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::FAILED);
        assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::FAILED);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::FAILED | status::DRIVER,
        );
        assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::FAILED);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    /// A driver-ready transport saved and put on a fresh transport (as a
    /// restoring process builds it) reads back the same registers and
    /// activates its device.
    #[test]
    fn saved_state_restores_on_a_fresh_transport() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::STATUS, 0xf);
        let saved = t.save_state().unwrap();
        assert!(saved.activated && saved.queues[1].ready);
        assert_eq!(saved.config.len(), crate::virtio::persist::CONFIG_SPACE_LEN);

        let (mut fresh, dev) = transport();
        fresh.restore_state(&saved).unwrap();
        assert!(dev.lock().unwrap().activated);
        for off in [reg::STATUS, reg::QUEUE_READY, reg::CONFIG_GENERATION] {
            assert_eq!(r(&mut fresh, off), r(&mut t, off), "register {off:#x}");
        }
        w(&mut fresh, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut fresh, reg::QUEUE_READY), 1);
        assert_eq!(fresh.save_state().unwrap(), saved);
    }

    /// A hostile snapshot: rings outside guest memory, another device
    /// type, other queue sizes, unoffered features are refused.
    #[test]
    fn invalid_saved_states_are_refused() {
        use crate::virtio::persist::PersistError;
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, reg::STATUS, 0xf);
        let saved = t.save_state().unwrap();
        type Change = Box<dyn Fn(&mut TransportState)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "rings outside memory",
                Box::new(|s| s.queues[0].used = 1 << 40),
            ),
            ("misaligned ring", Box::new(|s| s.queues[0].desc = 0x10001)),
            (
                "size not a power of two",
                Box::new(|s| s.queues[0].size = 3),
            ),
            ("device type", Box::new(|s| s.device_type = 2)),
            (
                "queue count",
                Box::new(|s| s.queues.pop().map(|_| ()).unwrap_or(())),
            ),
            ("max size", Box::new(|s| s.queues[1].max_size = 256)),
            ("features", Box::new(|s| s.acked_features |= 1 << 5)),
        ];
        for (what, change) in cases {
            let mut bad = saved.clone();
            change(&mut bad);
            let (mut fresh, dev) = transport();
            let e = fresh.restore_state(&bad).unwrap_err();
            assert!(
                matches!(e, PersistError::Invalid(_) | PersistError::Mismatch(_)),
                "{what}: {e}"
            );
            assert!(!dev.lock().unwrap().activated, "{what}");
        }
    }
}
