//! The virtio-net device: configuration space (§5.1.4), features
//! (§5.1.3), and the two queues served on the event loop. What every
//! device shares (features, queues, eventfds, activation) is
//! [`VirtioCommon`]'s; TX is served by its one drain loop
//! ([`VirtioCommon::drain_queue`]); RX, where one frame may take several
//! chains (§5.1.6.4), by [`rx::deliver`] on the queue itself
//! ([`VirtioCommon::serve_queue`]).
//!
//! Events: the activate eventfd, the RX and TX queue notifications and the
//! backend's descriptor (`EPOLLIN`). The backend is watched only while the
//! device is active and has no frame waiting for RX buffers: a frame that
//! finds the RX queue empty is kept, the backend is left unwatched (so a
//! driver that posts no buffers costs no CPU, and the backend's own queue
//! holds or drops what comes next), and the next RX notification delivers
//! it.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::rx::{self, Delivery};
use super::tx;
use super::{
    features, Backend, MAX_BUFFER_LEN, MAX_FRAME_LEN, MIN_MTU, QUEUE_SIZE, RXQ, TXQ, VNET_HDR_LEN,
};
use crate::virtio::activation::ACTIVATE_TOKEN;
use crate::virtio::block::device::read_config_bytes;
use crate::virtio::common::{serve_fn, VirtioCommon};
use crate::virtio::{device_type, ActivateError, ActivateParams, VirtioDevice, VIRTIO_F_VERSION_1};

/// Event data of the backend's descriptor.
const BACKEND_TOKEN: u32 = 100;
/// Frames received per event before yielding (the backend stays readable,
/// so the loop comes back).
const MAX_RX_PER_EVENT: usize = QUEUE_SIZE as usize;

/// What the guest sees of its network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address (config `mac`, `VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// The MTU (config `mtu`, `VIRTIO_NET_F_MTU`), clamped to
    /// [`MIN_MTU`]..=[`MAX_FRAME_LEN`] − 18.
    pub mtu: u16,
}

/// Counters of the device (read by the VMM's metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames put on the RX queue.
    pub rx_frames: u64,
    /// Their bytes, headers excluded.
    pub rx_bytes: u64,
    /// Frames from the backend dropped (too big for the driver's buffers,
    /// shorter than a header, or lost to a bad chain).
    pub rx_dropped: u64,
    /// Frames from the TX queue written to the backend.
    pub tx_frames: u64,
    /// Their bytes, headers excluded.
    pub tx_bytes: u64,
    /// TX chains not sent: malformed (see [`tx::TxError`]) or refused by
    /// the backend.
    pub tx_dropped: u64,
    /// Chains returned unused because the device could not use them.
    pub bad_chains: u64,
}

/// The frame read from the backend and not yet delivered, and where the
/// backend stands.
struct RxState {
    /// `frame[..len]`; `len == 0`: none.
    frame: Vec<u8>,
    len: usize,
    /// The backend hung up or failed: it is read no more.
    backend_failed: bool,
}

/// A virtio-net device with one queue pair.
pub struct Net {
    common: VirtioCommon,
    backend: Box<dyn Backend>,
    config_space: [u8; 12],
    rx: RxState,
    tx_buf: Vec<u8>,
    backend_watched: bool,
    counters: NetCounters,
}

/// Features offered (see the module docs of [`super`]).
pub const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | features::CSUM
    | features::GUEST_CSUM
    | features::MTU
    | features::MAC
    | features::GUEST_TSO4
    | features::GUEST_TSO6
    | features::HOST_TSO4
    | features::HOST_TSO6
    | features::MRG_RXBUF;

impl Net {
    /// A device over `backend` (non-blocking, one frame per read/write,
    /// [`VNET_HDR_LEN`]-byte headers).
    pub fn new(backend: Box<dyn Backend>, config: NetConfig) -> std::io::Result<Self> {
        let mtu = config.mtu.clamp(MIN_MTU, (MAX_FRAME_LEN - 18) as u16);
        // §5.1.4: mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16).
        let mut config_space = [0u8; 12];
        config_space[..6].copy_from_slice(&config.mac);
        config_space[10..12].copy_from_slice(&mtu.to_le_bytes());
        Ok(Self {
            common: VirtioCommon::new(2, AVAIL_FEATURES)?,
            backend,
            config_space,
            rx: RxState {
                frame: vec![0; MAX_BUFFER_LEN],
                len: 0,
                backend_failed: false,
            },
            tx_buf: vec![0; MAX_BUFFER_LEN],
            backend_watched: false,
            counters: NetCounters::default(),
        })
    }

    /// The counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// Whether a frame waits for RX buffers.
    pub fn rx_pending(&self) -> bool {
        self.rx.len > 0
    }

    fn usable(&self) -> bool {
        self.common.queues().is_some_and(|q| !q.broken)
    }

    /// Sends what the driver put on the TX queue (at most
    /// [`MAX_CHAINS_PER_EVENT`](crate::virtio::common::MAX_CHAINS_PER_EVENT)
    /// chains per call); called on the event loop.
    pub fn process_tx(&mut self) {
        let acked = self.common.acked_features();
        let (backend, buf, counters) = (&mut self.backend, &mut self.tx_buf, &mut self.counters);
        self.common.drain_queue(
            TXQ,
            &mut serve_fn(|chain, mem| {
                match tx::read_chain(mem, chain, buf, acked) {
                    Ok(len) => match backend.write_frame(&buf[..len]) {
                        Ok(_) => {
                            counters.tx_frames += 1;
                            counters.tx_bytes += (len - VNET_HDR_LEN) as u64;
                        }
                        Err(e) => {
                            tracing::debug!("virtio-net: backend refused a frame: {e}");
                            counters.tx_dropped += 1;
                        }
                    },
                    Err(e) => {
                        tracing::debug!("virtio-net: TX chain dropped: {e}");
                        counters.tx_dropped += 1;
                    }
                }
                // §5.1.6.2: the device writes nothing into TX buffers.
                Some(0)
            }),
        );
    }

    /// Moves frames from the backend to the RX queue until the backend has
    /// none, the queue is out of buffers or [`MAX_RX_PER_EVENT`] frames
    /// went in; called on the event loop.
    pub fn process_rx(&mut self) {
        let mergeable = self.common.acked_features() & features::MRG_RXBUF != 0;
        let (backend, rxs, counters) = (&mut self.backend, &mut self.rx, &mut self.counters);
        self.common.serve_queue(RXQ, |queue, mem| {
            let mut signal = false;
            for _ in 0..MAX_RX_PER_EVENT {
                if rxs.len == 0 && !rxs.fill(backend.as_mut(), counters) {
                    break;
                }
                let outcome = rx::deliver(queue, mem, &mut rxs.frame[..rxs.len], mergeable)?;
                counters.bad_chains += u64::from(outcome.bad_chains);
                signal |= outcome.bad_chains > 0;
                match outcome.delivery {
                    Delivery::Delivered(_) => {
                        counters.rx_frames += 1;
                        counters.rx_bytes += (rxs.len - VNET_HDR_LEN) as u64;
                        signal = true;
                    }
                    Delivery::NoBuffers => break,
                    Delivery::TooBig | Delivery::BadChain => {
                        tracing::debug!(
                            "virtio-net: RX frame of {} bytes dropped: {:?}",
                            rxs.len,
                            outcome.delivery
                        );
                        signal |= outcome.delivery == Delivery::BadChain;
                        counters.rx_dropped += 1;
                    }
                }
                rxs.len = 0;
            }
            Ok(signal)
        });
    }

    /// Watches the backend exactly when frames can be taken from it.
    fn sync_backend_interest(&mut self, ops: &mut EventOps) {
        let want = self.usable() && self.rx.len == 0 && !self.rx.backend_failed;
        if want == self.backend_watched {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let events = Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN);
        let r = if want {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match r {
            Ok(()) => self.backend_watched = want,
            Err(e) => {
                tracing::error!("virtio-net: cannot (un)watch the backend: {e:?}");
                if want {
                    self.rx.backend_failed = true;
                }
            }
        }
    }

    fn tun_offloads(acked: u64) -> u32 {
        let mut flags = 0;
        if acked & features::GUEST_CSUM != 0 {
            flags |= libc::TUN_F_CSUM;
            if acked & features::GUEST_TSO4 != 0 {
                flags |= libc::TUN_F_TSO4;
            }
            if acked & features::GUEST_TSO6 != 0 {
                flags |= libc::TUN_F_TSO6;
            }
        }
        flags
    }
}

impl RxState {
    /// Reads the next frame from `backend` into `frame`; false when there
    /// is none now (`WouldBlock`) or the backend is gone. Frames shorter
    /// than a header are dropped and counted.
    fn fill(&mut self, backend: &mut dyn Backend, counters: &mut NetCounters) -> bool {
        while !self.backend_failed {
            match backend.read_frame(&mut self.frame) {
                // 0: nothing a TAP reads (a closed socket pair in tests).
                Ok(0) => self.backend_failed = true,
                Ok(n) if n < VNET_HDR_LEN => counters.rx_dropped += 1,
                Ok(n) => {
                    self.len = n;
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!("virtio-net: reading the backend failed: {e}");
                    self.backend_failed = true;
                }
            }
        }
        false
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.set_acked_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError> {
        if self.common.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        // What the host kernel may hand over: only what the driver takes.
        // Failing here is safe: the TAP then sends plain frames.
        let offloads = Self::tun_offloads(self.common.acked_features());
        if let Err(e) = self.backend.set_offloads(offloads) {
            tracing::warn!("virtio-net: TUNSETOFFLOAD {offloads:#x}: {e}");
        }
        self.common.activate(params)
    }

    fn queue_positions(&self) -> Option<Vec<crate::virtio::persist::QueuePosition>> {
        self.common.queue_positions()
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    fn reset(&mut self) -> bool {
        // The backend is unwatched on the next event (reset runs on a
        // vCPU thread, without the event loop's ops): wake the loop.
        self.common.reset();
        self.rx.len = 0;
        self.common.wake();
        true
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.common.on_activate(ops),
            t if self.common.on_queue_event(t).is_some() => {}
            BACKEND_TOKEN => {}
            other => tracing::warn!("virtio-net: unexpected event {other}"),
        }
        self.process_tx();
        self.process_rx();
        self.sync_backend_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::net::tap::SocketBackend;
    use crate::virtio::net::{gso, hdr_flags, NUM_BUFFERS_OFFSET};
    use crate::virtio::test_utils::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const BUF: u64 = 0x100000;

    struct Fixture {
        net: Arc<Mutex<Net>>,
        rxq: GuestQueue,
        txq: GuestQueue,
        em: TestEventManager,
        evts: Vec<EventFd>,
        peer: OwnedFd,
        offloads: Arc<AtomicU32>,
    }

    fn fixture(acked: u64, qsize: u16) -> Fixture {
        let (backend, peer) = SocketBackend::pair().unwrap();
        let offloads = backend.offloads.clone();
        let net = Net::new(
            Box::new(backend),
            NetConfig {
                mac: MAC,
                mtu: 1500,
            },
        )
        .unwrap();
        let net = Arc::new(Mutex::new(net));
        let mem = guest_memory();
        let rxq = GuestQueue::new(&mem, 0x10000, qsize);
        let txq = GuestQueue::new(&mem, 0x20000, qsize);
        let mut em = event_manager(&net);
        let (params, evts) = activate_params(&mem, &[&rxq, &txq]);
        {
            let mut n = net.lock().unwrap();
            n.set_acked_features(acked);
            n.activate(params).unwrap();
        }
        run_until_idle(&mut em, 0);
        Fixture {
            net,
            rxq,
            txq,
            em,
            evts,
            peer,
            offloads,
        }
    }

    fn default_fixture() -> Fixture {
        fixture(AVAIL_FEATURES, 16)
    }

    /// A header + frame of `len` frame bytes with a recognisable pattern.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
        f
    }

    fn send_to_guest(peer: &OwnedFd, data: &[u8]) {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe { libc::send(peer.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        assert_eq!(n as usize, data.len());
    }

    /// The next frame the guest sent, or None if none waits.
    fn recv_from_guest(peer: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 16];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    fn read_guest(q: &GuestQueue, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        q.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    impl Fixture {
        fn kick(&mut self, q: usize) {
            self.evts[q].write(1).unwrap();
            run_until_idle(&mut self.em, 0);
        }

        /// Puts `data` in guest memory at `addr` and a TX chain over it.
        fn tx(&mut self, bufs: &[(u64, &[u8])]) -> u16 {
            for (addr, data) in bufs {
                self.txq.mem.write_slice(data, GuestAddress(*addr)).unwrap();
            }
            let chain: Vec<(u64, u32, bool)> = bufs
                .iter()
                .map(|(a, d)| (*a, d.len() as u32, false))
                .collect();
            self.txq.add_chain(&chain)
        }

        fn counters(&self) -> NetCounters {
            self.net.lock().unwrap().counters()
        }

        fn needs_reset(&self) -> bool {
            let n = self.net.lock().unwrap();
            n.common.queues().unwrap().interrupt.needs_reset()
        }
    }

    #[test]
    fn config_space_and_features() {
        let f = default_fixture();
        let n = f.net.lock().unwrap();
        let mut c = [0u8; 12];
        n.read_config(0, &mut c);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
        let mut mtu = [0u8; 2];
        n.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1500);
        let mut beyond = [0xffu8; 4];
        n.read_config(12, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        assert_eq!(n.device_type(), device_type::NET);
        assert_eq!(n.queue_max_sizes().len(), 2);
        assert_ne!(n.avail_features() & VIRTIO_F_VERSION_1, 0);
        drop(n);
        let (b, _peer) = SocketBackend::pair().unwrap();
        let n = Net::new(Box::new(b), NetConfig { mac: MAC, mtu: 0 }).unwrap();
        n.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), MIN_MTU);
    }

    #[test]
    fn offloads_follow_the_acked_features() {
        let f = fixture(
            VIRTIO_F_VERSION_1 | features::GUEST_CSUM | features::GUEST_TSO4,
            16,
        );
        assert_eq!(
            f.offloads.load(Ordering::SeqCst),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        let f = fixture(VIRTIO_F_VERSION_1 | features::GUEST_TSO4, 16);
        assert_eq!(f.offloads.load(Ordering::SeqCst), 0);
        let f = default_fixture();
        assert_eq!(
            f.offloads.load(Ordering::SeqCst),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }

    #[test]
    fn tx_frame_reaches_the_backend() {
        let mut f = default_fixture();
        let data = frame(1000, 1);
        let head = f.tx(&[(BUF, &data)]);
        // Header and frame in separate descriptors, as Linux does.
        let data2 = frame(60, 2);
        let head2 = f.tx(&[
            (BUF + 0x10000, &data2[..VNET_HDR_LEN]),
            (BUF + 0x20000, &data2[VNET_HDR_LEN..]),
        ]);
        f.kick(TXQ);
        assert_eq!(recv_from_guest(&f.peer).unwrap(), data);
        assert_eq!(recv_from_guest(&f.peer).unwrap(), data2);
        assert_eq!(f.txq.pop_used(), Some((head, 0)));
        assert_eq!(f.txq.pop_used(), Some((head2, 0)));
        let c = f.counters();
        assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (2, 1060, 0));
    }

    #[test]
    fn tx_offload_header_passes_when_negotiated() {
        let mut f = default_fixture();
        let mut data = frame(3000, 3);
        data[0] = hdr_flags::NEEDS_CSUM;
        data[1] = gso::TCPV4;
        f.tx(&[(BUF, &data)]);
        f.kick(TXQ);
        assert_eq!(recv_from_guest(&f.peer).unwrap(), data);
        // The same without the features: dropped.
        let mut f = fixture(VIRTIO_F_VERSION_1 | features::CSUM, 16);
        f.tx(&[(BUF, &data)]);
        f.kick(TXQ);
        assert_eq!(recv_from_guest(&f.peer), None);
        assert_eq!(f.counters().tx_dropped, 1);
        assert_eq!(f.txq.used_pending(), 1);
    }

    #[test]
    fn hostile_tx_chains_are_dropped_and_returned() {
        let mut f = default_fixture();
        // Shorter than header + Ethernet header.
        f.tx(&[(BUF, &[0u8; 20])]);
        // Longer than the largest frame (two descriptors inside memory).
        f.txq
            .add_chain(&[(BUF, 40_000, false), (BUF + 0x10000, 40_000, false)]);
        // Outside guest memory.
        f.txq.add_chain(&[(MEM_SIZE - 8, 100, false)]);
        f.txq.add_chain(&[(u64::MAX - 16, 100, false)]);
        // Only writable descriptors: nothing to send.
        f.txq.add_chain(&[(BUF, 100, true)]);
        // A header flag a driver never sets.
        let mut bad = frame(100, 0);
        bad[0] = hdr_flags::DATA_VALID;
        f.tx(&[(BUF + 0x30000, &bad)]);
        // A descriptor that points at itself: the chain ends after the
        // queue size's worth of descriptors (16 x 100 bytes) instead of
        // looping, and that bounded frame is what goes out.
        let looping = frame(100, 8);
        let head = f.tx(&[(BUF + 0x50000, &looping[..100])]);
        f.txq.write_desc(head, BUF + 0x50000, 100, F_NEXT, head);
        // Then a good frame still goes through.
        let good = frame(100, 9);
        f.tx(&[(BUF + 0x40000, &good)]);
        f.kick(TXQ);
        assert_eq!(recv_from_guest(&f.peer).unwrap().len(), 1600);
        assert_eq!(recv_from_guest(&f.peer).unwrap(), good);
        assert_eq!(recv_from_guest(&f.peer), None);
        assert_eq!(f.txq.used_pending(), 8);
        let c = f.counters();
        assert_eq!((c.tx_frames, c.tx_dropped), (2, 6));
        assert!(!f.needs_reset());
    }

    #[test]
    fn tx_flood_is_bounded_per_event_and_finished_later() {
        let mut f = fixture(AVAIL_FEATURES, 256);
        let data = frame(60, 4);
        f.txq.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
        // The guest keeps the ring full: 256 chains, then 256 more.
        for round in 0..2 {
            for _ in 0..256 {
                f.txq.add_chain(&[(BUF, data.len() as u32, false)]);
            }
            f.kick(TXQ);
            let mut n = 0;
            while recv_from_guest(&f.peer).is_some() {
                n += 1;
            }
            assert_eq!(n, 256, "round {round}");
            while f.txq.pop_used().is_some() {}
        }
    }

    #[test]
    fn rx_frame_lands_in_one_buffer() {
        let mut f = fixture(VIRTIO_F_VERSION_1 | features::MAC, 16);
        let head = f.rxq.add_chain(&[(BUF, 2048, true)]);
        f.kick(RXQ);
        let data = frame(1500, 5);
        send_to_guest(&f.peer, &data);
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.rxq.pop_used(), Some((head, data.len() as u32)));
        let got = read_guest(&f.rxq, BUF, data.len());
        assert_eq!(&got[NUM_BUFFERS_OFFSET..VNET_HDR_LEN], &1u16.to_le_bytes());
        assert_eq!(&got[VNET_HDR_LEN..], &data[VNET_HDR_LEN..]);
        let c = f.counters();
        assert_eq!((c.rx_frames, c.rx_bytes), (1, 1500));
    }

    #[test]
    fn rx_waits_for_buffers_without_spinning() {
        let mut f = default_fixture();
        for i in 0..3 {
            send_to_guest(&f.peer, &frame(100, i));
        }
        // No buffers: the first frame waits, the backend is unwatched and
        // the loop goes idle (run_until_idle panics on a busy loop).
        run_until_idle(&mut f.em, 0);
        assert!(f.net.lock().unwrap().rx_pending());
        assert!(!f.net.lock().unwrap().backend_watched);
        for i in 0..3u64 {
            f.rxq.add_chain(&[(BUF + i * 0x1000, 2048, true)]);
        }
        f.kick(RXQ);
        for i in 0..3u64 {
            let (head, len) = f.rxq.pop_used().unwrap();
            assert_eq!((head, len), (i as u16, 112));
            let got = read_guest(&f.rxq, BUF + i * 0x1000, 112);
            assert_eq!(&got[VNET_HDR_LEN..], &frame(100, i as u8)[VNET_HDR_LEN..]);
        }
        assert!(!f.net.lock().unwrap().rx_pending());
        assert!(f.net.lock().unwrap().backend_watched);
    }

    #[test]
    fn rx_merges_buffers_and_publishes_them_together() {
        let mut f = default_fixture();
        let heads: Vec<u16> = (0..4u64)
            .map(|i| f.rxq.add_chain(&[(BUF + i * 0x1000, 2048, true)]))
            .collect();
        f.kick(RXQ);
        let data = frame(5000, 6);
        send_to_guest(&f.peer, &data);
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.rxq.used_pending(), 3);
        assert_eq!(f.rxq.pop_used(), Some((heads[0], 2048)));
        assert_eq!(f.rxq.pop_used(), Some((heads[1], 2048)));
        assert_eq!(
            f.rxq.pop_used(),
            Some((heads[2], (data.len() - 4096) as u32))
        );
        let mut got = read_guest(&f.rxq, BUF, 2048);
        got.extend(read_guest(&f.rxq, BUF + 0x1000, 2048));
        got.extend(read_guest(&f.rxq, BUF + 0x2000, data.len() - 4096));
        assert_eq!(&got[NUM_BUFFERS_OFFSET..VNET_HDR_LEN], &3u16.to_le_bytes());
        assert_eq!(&got[VNET_HDR_LEN..], &data[VNET_HDR_LEN..]);
        // A 64 KiB GSO frame needs more buffers than are posted: it waits
        // and takes none until enough are there.
        let big = frame(MAX_FRAME_LEN, 7);
        send_to_guest(&f.peer, &big);
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.rxq.used_pending(), 0);
        assert!(f.net.lock().unwrap().rx_pending());
        for i in 0..2u64 {
            f.rxq
                .add_chain(&[(BUF + 0x100000 + i * 0x10000, 0x10000, true)]);
        }
        f.kick(RXQ);
        // The one 2048-byte buffer left and one of the 64 KiB ones.
        assert_eq!(f.rxq.used_pending(), 2);
        let _ = f.rxq.pop_used();
        assert_eq!(f.rxq.pop_used(), Some((4, (big.len() - 2048) as u32)));
    }

    #[test]
    fn rx_frame_larger_than_the_whole_ring_is_dropped() {
        let mut f = fixture(AVAIL_FEATURES, 4);
        for i in 0..4u64 {
            f.rxq.add_chain(&[(BUF + i * 0x1000, 64, true)]);
        }
        f.kick(RXQ);
        send_to_guest(&f.peer, &frame(1000, 1));
        send_to_guest(&f.peer, &frame(100, 2));
        run_until_idle(&mut f.em, 0);
        // The big one is dropped without touching the buffers; the small
        // one takes two of them.
        assert_eq!(f.counters().rx_dropped, 1);
        assert_eq!(f.rxq.used_pending(), 2);
        assert_eq!(f.rxq.pop_used(), Some((0, 64)));
        assert_eq!(f.rxq.pop_used(), Some((1, 48)));
    }

    #[test]
    fn rx_without_merging_drops_a_frame_its_buffer_cannot_hold() {
        let mut f = fixture(VIRTIO_F_VERSION_1, 16);
        f.rxq.add_chain(&[(BUF, 256, true)]);
        f.kick(RXQ);
        send_to_guest(&f.peer, &frame(1000, 1));
        send_to_guest(&f.peer, &frame(100, 2));
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.counters().rx_dropped, 1);
        assert_eq!(f.rxq.pop_used(), Some((0, 112)));
    }

    #[test]
    fn hostile_rx_chains_are_returned_empty() {
        let mut f = fixture(VIRTIO_F_VERSION_1, 16);
        // Read-only, outside memory, shorter than a header.
        f.rxq.add_chain(&[(BUF, 2048, false)]);
        f.rxq.add_chain(&[(MEM_SIZE - 4, 2048, true)]);
        f.rxq.add_chain(&[(BUF, 4, true)]);
        let good = f.rxq.add_chain(&[(BUF + 0x1000, 2048, true)]);
        f.kick(RXQ);
        send_to_guest(&f.peer, &frame(100, 1));
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.rxq.pop_used(), Some((0, 0)));
        assert_eq!(f.rxq.pop_used(), Some((1, 0)));
        assert_eq!(f.rxq.pop_used(), Some((2, 0)));
        assert_eq!(f.rxq.pop_used(), Some((good, 112)));
        assert_eq!(f.counters().bad_chains, 3);
        assert!(!f.needs_reset());
    }

    #[test]
    fn bad_chain_inside_a_merged_frame_drops_it() {
        let mut f = default_fixture();
        f.rxq.add_chain(&[(BUF, 1024, true)]);
        f.rxq.add_chain(&[(BUF + 0x1000, 1024, false)]);
        f.rxq.add_chain(&[(BUF + 0x2000, 4096, true)]);
        f.kick(RXQ);
        send_to_guest(&f.peer, &frame(2000, 1));
        send_to_guest(&f.peer, &frame(100, 2));
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.rxq.pop_used(), Some((0, 0)));
        assert_eq!(f.rxq.pop_used(), Some((1, 0)));
        assert_eq!(f.rxq.pop_used(), Some((2, 112)));
        let c = f.counters();
        assert_eq!((c.rx_dropped, c.rx_frames, c.bad_chains), (1, 1, 1));
    }

    #[test]
    fn short_frames_from_the_backend_are_dropped() {
        let mut f = default_fixture();
        f.rxq.add_chain(&[(BUF, 2048, true)]);
        f.kick(RXQ);
        send_to_guest(&f.peer, &[1, 2, 3]);
        send_to_guest(&f.peer, &frame(50, 1));
        run_until_idle(&mut f.em, 0);
        assert_eq!(f.rxq.pop_used(), Some((0, 62)));
        assert_eq!(f.counters().rx_dropped, 1);
    }

    #[test]
    fn avail_index_jump_fails_the_device() {
        let mut f = default_fixture();
        f.txq.set_avail_idx(1000);
        f.kick(TXQ);
        assert!(f.needs_reset());
        // Nothing is processed any more; frames from the host wait in the
        // backend, unwatched (no busy loop).
        send_to_guest(&f.peer, &frame(50, 1));
        run_until_idle(&mut f.em, 0);
        assert!(!f.net.lock().unwrap().backend_watched);
    }

    #[test]
    fn backend_hang_up_stops_watching_it() {
        let mut f = default_fixture();
        f.rxq.add_chain(&[(BUF, 2048, true)]);
        f.kick(RXQ);
        let Fixture { peer, .. } = &f;
        // SAFETY: closing our own descriptor's duplicate is not needed:
        // shut the socket down instead.
        unsafe { libc::shutdown(peer.as_raw_fd(), libc::SHUT_RDWR) };
        run_until_idle(&mut f.em, 0);
        assert!(!f.net.lock().unwrap().backend_watched);
    }

    #[test]
    fn reset_then_reactivate() {
        let mut f = default_fixture();
        assert!(f.net.lock().unwrap().reset());
        run_until_idle(&mut f.em, 0);
        assert!(!f.net.lock().unwrap().backend_watched);
        let mem = guest_memory();
        let mut rxq = GuestQueue::new(&mem, 0x30000, 16);
        let txq = GuestQueue::new(&mem, 0x40000, 16);
        let (params, _evts) = activate_params(&mem, &[&rxq, &txq]);
        {
            let mut n = f.net.lock().unwrap();
            n.set_acked_features(VIRTIO_F_VERSION_1);
            n.activate(params).unwrap();
        }
        rxq.add_chain(&[(BUF, 2048, true)]);
        run_until_idle(&mut f.em, 0);
        send_to_guest(&f.peer, &frame(50, 1));
        run_until_idle(&mut f.em, 0);
        assert_eq!(rxq.pop_used(), Some((0, 62)));
    }
}
