//! The virtio-vsock device (§5.10): three queues (RX, TX, event), a config
//! space holding the guest CID (§5.10.4), and the glue between the queues
//! and the [`Muxer`] on the event loop.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Writer;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::{Muxer, MuxerCounters, CONN_TOKEN, LISTENER_TOKEN};
use super::packet::{self, PacketError};
use super::{EVQ, QUEUE_SIZE, RXQ, TXQ};
use crate::virtio::activation::ACTIVATE_TOKEN;
use crate::virtio::common::{ServeChain, VirtioCommon};
use crate::virtio::queue::Chain;
use crate::virtio::{
    device_type, ActivateError, ActivateParams, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Event data of the timer that resets connections whose guest did not
/// answer in time.
const TIMER_TOKEN: u32 = 102;

/// How to build a [`Vsock`] device (from `--vsock-uds path` and the
/// configured CID).
#[derive(Debug, Clone)]
pub struct VsockDeviceConfig {
    /// The guest's CID: 3 ≤ cid < 2^32 − 1 (0, 1, 2 are reserved and
    /// `u32::MAX` is `VMADDR_CID_ANY`, `include/uapi/linux/vm_sockets.h`).
    pub guest_cid: u64,
    /// The listening Unix socket; guest connects to port P reach
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Errors of [`Vsock::new`].
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or too large.
    #[error("invalid guest CID {0}: must be >= 3 and < 4294967295")]
    InvalidCid(u64),
    /// The Unix socket cannot be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No eventfd.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// No timerfd.
    #[error("timerfd: {0}")]
    TimerFd(std::io::Error),
}

/// Counters of the device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCounters {
    /// TX chains that did not hold a valid packet.
    pub bad_tx: u64,
    /// RX chains too small or outside memory.
    pub bad_rx: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Packets taken from the guest.
    pub tx_packets: u64,
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    common: VirtioCommon,
    counters: VsockCounters,
    /// Non-blocking timer armed for the muxer's next answer deadline.
    timer: TimerFd,
    timer_armed_for: Option<Instant>,
    /// A `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` is owed to the guest (the
    /// device was restored from a snapshot).
    reset_event_pending: bool,
}

/// A non-blocking timerfd: a read after the timer was re-armed must not
/// block the event loop.
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own; no memory is passed.
    let set = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

impl Vsock {
    /// Binds `config.uds_path` and builds an inactive device. Host clients
    /// may connect from now on; they are served once the driver is ready.
    pub fn new(config: &VsockDeviceConfig) -> Result<Self, VsockError> {
        if config.guest_cid < 3 || config.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let muxer =
            Muxer::new(config.guest_cid, &config.uds_path).map_err(|source| VsockError::Bind {
                path: config.uds_path.clone(),
                source,
            })?;
        Ok(Self {
            guest_cid: config.guest_cid,
            muxer,
            common: VirtioCommon::new(3, VIRTIO_F_VERSION_1).map_err(VsockError::EventFd)?,
            counters: VsockCounters::default(),
            timer: nonblocking_timer().map_err(VsockError::TimerFd)?,
            timer_armed_for: None,
            reset_event_pending: false,
        })
    }

    /// How long the guest has to answer a host REQUEST (RESPONSE or RST)
    /// or a full SHUTDOWN (RST) before the device resets the connection
    /// (default [`super::muxer::DEFAULT_ANSWER_TIMEOUT`]).
    pub fn set_answer_timeout(&mut self, timeout: Duration) {
        self.muxer.set_answer_timeout(timeout);
    }

    /// How long a host client has to finish its `CONNECT` line (default
    /// [`super::muxer::HANDSHAKE_TIMEOUT`]).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.muxer.set_handshake_timeout(timeout);
    }

    /// Arms the timer for the muxer's next deadline (or disarms it).
    fn rearm_timer(&mut self) {
        let next = self.muxer.next_deadline();
        if next == self.timer_armed_for {
            return;
        }
        let r = match next {
            // A zero duration would disarm: at least 1 ms.
            Some(at) => self.timer.reset(
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        match r {
            Ok(()) => self.timer_armed_for = next,
            Err(e) => tracing::error!("vsock: timerfd: {e}"),
        }
    }

    /// The guest CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Device counters.
    pub fn counters(&self) -> VsockCounters {
        self.counters
    }

    /// Backend counters.
    pub fn muxer_counters(&self) -> MuxerCounters {
        self.muxer.counters()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Takes the guest's packets from the TX queue; stops while the backend
    /// has too many replies waiting for RX buffers.
    pub fn process_tx(&mut self) {
        let mut tx = Tx {
            muxer: &mut self.muxer,
            counters: &mut self.counters,
        };
        self.common.drain_queue(TXQ, &mut tx);
    }

    /// Fills RX buffers with what the backend has for the guest.
    pub fn process_rx(&mut self) {
        let mut rx = Rx {
            muxer: &mut self.muxer,
            counters: &mut self.counters,
        };
        self.common.drain_queue(RXQ, &mut rx);
    }

    /// Delivers an owed `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (§5.10.6.5)
    /// on the event queue, once the driver gave it a buffer.
    fn send_reset_event(&mut self) {
        if !self.reset_event_pending {
            return;
        }
        let mut ev = ResetEvent { sent: false };
        self.common.drain_queue(EVQ, &mut ev);
        if ev.sent {
            tracing::info!("vsock: transport reset sent to the guest");
            self.reset_event_pending = false;
        }
    }

    /// One round of work after any event: TX (which may owe replies), RX,
    /// and TX again if RX unblocked it.
    fn run_queues(&mut self) {
        self.send_reset_event();
        let blocked = self.muxer.tx_blocked();
        self.process_tx();
        self.process_rx();
        if blocked && !self.muxer.tx_blocked() {
            self.process_tx();
            self.process_rx();
        }
    }
}

/// The TX queue's chains: packets from the guest to the muxer.
struct Tx<'a> {
    muxer: &'a mut Muxer,
    counters: &'a mut VsockCounters,
}

impl ServeChain for Tx<'_> {
    /// Not while the muxer has too many replies waiting for RX buffers.
    fn ready(&mut self) -> bool {
        !self.muxer.tx_blocked()
    }

    fn serve<'m>(&mut self, chain: Chain<'m>, mem: &'m GuestMemory) -> Option<u32> {
        match packet::parse_tx(chain, mem) {
            Ok(pkt) => {
                self.counters.tx_packets += 1;
                self.muxer.send_pkt(&pkt.hdr, &pkt.payload);
            }
            Err(e) => {
                self.counters.bad_tx += 1;
                tracing::debug!("vsock: bad tx packet: {e}");
            }
        }
        Some(0)
    }
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (§5.10.6.5,
/// `include/uapi/linux/virtio_vsock.h`).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// The event queue's chains: one `struct virtio_vsock_event { le32 id; }`
/// (§5.10.6.5) announcing a transport reset.
struct ResetEvent {
    sent: bool,
}

impl ServeChain for ResetEvent {
    fn ready(&mut self) -> bool {
        !self.sent
    }

    fn serve<'m>(&mut self, chain: Chain<'m>, mem: &'m GuestMemory) -> Option<u32> {
        let id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        match Writer::new(mem, chain).map(|mut w| std::io::Write::write_all(&mut w, &id)) {
            Ok(Ok(())) => {
                self.sent = true;
                Some(id.len() as u32)
            }
            _ => {
                tracing::debug!("vsock: unusable event buffer");
                Some(0)
            }
        }
    }
}

/// The RX queue's chains: filled with the muxer's packets for the guest.
struct Rx<'a> {
    muxer: &'a mut Muxer,
    counters: &'a mut VsockCounters,
}

impl ServeChain for Rx<'_> {
    /// While the muxer has packets for the guest.
    fn ready(&mut self) -> bool {
        self.muxer.has_pending_rx()
    }

    /// A buffer too small for what the muxer has next is put back.
    fn serve<'m>(&mut self, chain: Chain<'m>, mem: &'m GuestMemory) -> Option<u32> {
        let buffer = Writer::new(mem, chain)
            .map_err(PacketError::Chain)
            .and_then(|w| packet::rx_room(&w).map(|room| (w, room)));
        let (mut w, room) = match buffer {
            Ok(b) => b,
            Err(e) => {
                self.counters.bad_rx += 1;
                tracing::debug!("vsock: unusable rx buffer: {e}");
                return Some(0);
            }
        };
        let (hdr, payload) = self.muxer.recv_pkt(room)?;
        match packet::write_rx(&mut w, &hdr, &payload) {
            Ok(n) => {
                self.counters.rx_packets += 1;
                Some(n)
            }
            Err(e) => {
                self.counters.bad_rx += 1;
                tracing::debug!("vsock: rx write failed, packet lost: {e}");
                Some(0)
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.set_acked_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::block::device::read_config_bytes(
            &self.guest_cid.to_le_bytes(),
            offset,
            data,
        );
    }

    fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError> {
        self.common.activate(params)?;
        self.muxer.set_driver_ready(true);
        Ok(())
    }

    fn queue_positions(&self) -> Option<Vec<crate::virtio::persist::QueuePosition>> {
        self.common.queue_positions()
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    /// A snapshot carries no connection (their host sockets belong to the
    /// process that took it): the guest is told to drop its own
    /// (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, as Firecracker does), its
    /// listeners stay.
    fn restored(&mut self) {
        self.muxer.reset();
        self.muxer.set_driver_ready(true);
        self.reset_event_pending = true;
        self.common.wake();
    }

    fn reset(&mut self) -> bool {
        self.reset_event_pending = false;
        self.common.reset();
        self.muxer.reset();
        // Wake the loop so that closed sockets leave epoll promptly.
        self.common.wake();
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.common.on_activate(ops),
            t if self.common.on_queue_event(t).is_some() => {}
            LISTENER_TOKEN | CONN_TOKEN => self.muxer.handle_event(events.fd(), events.event_set()),
            TIMER_TOKEN => {
                // EAGAIN when re-armed since it fired: nothing to drain.
                let _ = self.timer.wait();
                self.timer_armed_for = None;
                self.muxer.expire(Instant::now());
            }
            other => tracing::warn!("vsock: unexpected event {other}"),
        }
        self.run_queues();
        self.muxer.apply_epoll(ops);
        self.rearm_timer();
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
        if let Err(e) = ops.add(Events::with_data(
            self.muxer.listener(),
            LISTENER_TOKEN,
            EventSet::IN,
        )) {
            tracing::error!("vsock: cannot watch the listening socket: {e:?}");
        }
        if let Err(e) = ops.add(Events::with_data(&self.timer, TIMER_TOKEN, EventSet::IN)) {
            tracing::error!("vsock: cannot watch the answer timer: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::test_utils::*;
    use crate::virtio::vsock::csm::CONN_TX_BUF_SIZE;
    use crate::virtio::vsock::packet::{VsockHeader, HDR_LEN};
    use crate::virtio::vsock::{op, shutdown, HOST_CID, TYPE_STREAM};

    const CID: u64 = 3;
    const RX_BUF: u64 = 0x100000;
    const RX_BUF_LEN: u32 = 0x8000;
    const TX_BUF: u64 = 0x900000;
    const GUEST_BUF_ALLOC: u32 = 256 << 10;

    struct Fixture {
        dev: Arc<Mutex<Vsock>>,
        em: TestEventManager,
        mem: crate::virtio::GuestMemory,
        rxq: GuestQueue,
        txq: GuestQueue,
        evq: GuestQueue,
        evts: Vec<EventFd>,
        rx_outstanding: usize,
        _dir: tempfile::TempDir,
        uds: PathBuf,
    }

    fn fixture(activate: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(&VsockDeviceConfig {
            guest_cid: CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = event_manager(&dev);
        run_until_idle(&mut em, 0);
        let mem = guest_memory();
        let mut f = Fixture {
            dev,
            em,
            rxq: GuestQueue::new(&mem, 0x10000, QUEUE_SIZE),
            txq: GuestQueue::new(&mem, 0x20000, QUEUE_SIZE),
            evq: GuestQueue::new(&mem, 0x30000, QUEUE_SIZE),
            mem,
            evts: Vec::new(),
            rx_outstanding: 0,
            _dir: dir,
            uds,
        };
        if activate {
            f.activate();
        }
        f
    }

    fn hdr(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    impl Fixture {
        fn activate(&mut self) {
            let (mut params, evts) = activate_params(&self.mem, &[&self.rxq, &self.txq, &self.evq]);
            if self.evts.is_empty() {
                self.evts = evts;
            } else {
                // The transport hands over clones of the same eventfds at
                // every activation.
                params.queue_evts = self.evts.iter().map(|e| e.try_clone().unwrap()).collect();
            }
            self.dev.lock().unwrap().activate(params).unwrap();
            self.run();
        }

        fn run(&mut self) {
            run_until_idle(&mut self.em, 1);
        }

        /// The guest sends a packet (header and payload in two descriptors).
        fn send(&mut self, h: VsockHeader, payload: &[u8]) {
            let mut h = h;
            h.len = payload.len() as u32;
            let addr = TX_BUF + u64::from(self.txq.next_head()) * 0x5000;
            self.mem
                .write_slice(&h.to_bytes(), GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(payload, GuestAddress(addr + 64))
                .unwrap();
            self.txq.add_chain(&[
                (addr, HDR_LEN as u32, false),
                (addr + 64, payload.len() as u32, false),
            ]);
            self.evts[TXQ].write(1).unwrap();
            self.run();
            while self.txq.pop_used().is_some() {}
        }

        /// The guest offers `n` RX buffers.
        fn provide_rx(&mut self, n: usize) {
            for _ in 0..n {
                let addr = RX_BUF + u64::from(self.rxq.next_head()) * u64::from(RX_BUF_LEN);
                self.rxq.add_chain(&[(addr, RX_BUF_LEN, true)]);
                self.rx_outstanding += 1;
            }
            if !self.evts.is_empty() {
                self.evts[RXQ].write(1).unwrap();
            }
            self.run();
        }

        /// The next packet the device delivered.
        fn recv(&mut self) -> Option<(VsockHeader, Vec<u8>)> {
            let (head, len) = self.rxq.pop_used()?;
            self.rx_outstanding -= 1;
            let addr = RX_BUF + u64::from(head) * u64::from(RX_BUF_LEN);
            let mut b = [0u8; HDR_LEN];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            let h = VsockHeader::from_bytes(&b);
            assert_eq!(len as usize, HDR_LEN + h.len as usize);
            let mut payload = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            Some((h, payload))
        }

        fn recv_all(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
            std::iter::from_fn(|| self.recv()).collect()
        }

        /// A host client does `CONNECT port`; returns the stream and the
        /// REQUEST's source (host) port once the guest has seen it.
        fn host_connect(&mut self, port: u32) -> UnixStream {
            let mut s = UnixStream::connect(&self.uds).unwrap();
            s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
            s.set_nonblocking(true).unwrap();
            self.run();
            s
        }

        fn expect_request(&mut self, port: u32) -> u32 {
            let pkts = self.recv_all();
            let (h, _) = pkts
                .iter()
                .find(|(h, _)| h.op == op::REQUEST)
                .expect("REQUEST delivered");
            assert_eq!((h.src_cid, h.dst_cid, h.dst_port), (HOST_CID, CID, port));
            assert!(h.src_port >= 1 << 30);
            h.src_port
        }
    }

    fn read_available(s: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// Host CONNECT → REQUEST → guest RESPONSE → "OK <port>\n".
    fn established_host_conn(f: &mut Fixture, guest_port: u32) -> (UnixStream, u32) {
        let mut s = f.host_connect(guest_port);
        let local = f.expect_request(guest_port);
        f.send(hdr(op::RESPONSE, guest_port, local), &[]);
        let ok = read_available(&mut s);
        assert_eq!(ok, format!("OK {local}\n").into_bytes());
        (s, local)
    }

    /// After a restore the device owes the guest a transport reset
    /// (§5.10.6.5): sent on the event queue as soon as the driver gives
    /// it a buffer, exactly once.
    #[test]
    fn restored_device_sends_one_transport_reset_event() {
        let mut f = fixture(true);
        f.dev.lock().unwrap().restored();
        f.run();
        assert_eq!(f.evq.pop_used(), None, "no event buffer yet");
        for _ in 0..2 {
            f.evq.add_chain(&[(0x40000, 4, true)]);
        }
        f.evts[EVQ].write(1).unwrap();
        f.run();
        let (_, len) = f.evq.pop_used().expect("the reset event");
        assert_eq!(len, 4);
        let id: u32 = f.mem.read_obj(GuestAddress(0x40000)).unwrap();
        assert_eq!(id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
        f.evts[EVQ].write(1).unwrap();
        f.run();
        assert_eq!(f.evq.pop_used(), None, "sent once");
    }

    #[test]
    fn config_space_holds_guest_cid() {
        let f = fixture(false);
        let mut b = [0u8; 8];
        f.dev.lock().unwrap().read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), CID);
        let mut b = [0xffu8; 4];
        f.dev.lock().unwrap().read_config(4, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn reserved_cids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let r = Vsock::new(&VsockDeviceConfig {
                guest_cid: cid,
                uds_path: dir.path().join("x"),
            });
            assert!(matches!(r, Err(VsockError::InvalidCid(_))));
        }
    }

    #[test]
    fn host_connect_handshake_and_data() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let (mut s, local) = established_host_conn(&mut f, 1024);
        // host -> guest
        s.write_all(b"ping").unwrap();
        f.run();
        let pkts = f.recv_all();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RW);
        assert_eq!(pkts[0].1, b"ping");
        // guest -> host
        let mut h = hdr(op::RW, 1024, local);
        h.fwd_cnt = 4;
        f.send(h, b"pong");
        assert_eq!(read_available(&mut s), b"pong");
    }

    /// Everything the host client reads until the device closes the
    /// socket (bounded by a timeout: a socket left open fails the test).
    fn read_to_close(s: &mut UnixStream) -> String {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .expect("the device closes the socket");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A CONNECT to a guest port nothing listens on: the guest kernel
    /// answers the REQUEST with RST, and the host client reads why instead
    /// of a bare EOF (issue 9 item 5).
    #[test]
    fn host_connect_guest_rst_gets_err_line() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let mut s = f.host_connect(1024);
        let local = f.expect_request(1024);
        f.send(hdr(op::RST, 1024, local), &[]);
        let answer = read_to_close(&mut s);
        assert!(
            answer.starts_with("ERR guest port 1024 refused"),
            "{answer:?}"
        );
        assert!(answer.ends_with('\n') && answer.lines().count() == 1);
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
        assert_eq!(f.dev.lock().unwrap().muxer_counters().connect_refused, 1);
    }

    /// Before the guest's driver is up nobody can answer: `ERR` at once,
    /// not a connection held for the whole boot and then closed.
    #[test]
    fn connect_before_activation_gets_err_at_once() {
        let mut f = fixture(false);
        let mut s = f.host_connect(1024);
        let answer = read_to_close(&mut s);
        assert!(
            answer.starts_with("ERR guest vsock driver not ready"),
            "{answer:?}"
        );
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
        // Once the driver is up, the same CONNECT goes through.
        f.activate();
        f.provide_rx(4);
        let mut s = f.host_connect(1024);
        let local = f.expect_request(1024);
        f.send(hdr(op::RESPONSE, 1024, local), &[]);
        assert_eq!(read_available(&mut s), format!("OK {local}\n").into_bytes());
    }

    /// A device reset (guest reboot, driver reload) ends the connections
    /// waiting for an answer with `ERR`, whether or not their REQUEST was
    /// sent; CONNECTs after it are refused until the driver is back.
    #[test]
    fn reset_refuses_waiting_host_connects() {
        let mut f = fixture(true);
        let mut unsent = f.host_connect(1024); // no RX buffer: REQUEST not sent
        f.provide_rx(2);
        f.recv_all();
        let mut sent = f.host_connect(1025);
        f.expect_request(1025);
        f.dev.lock().unwrap().reset();
        f.run();
        for s in [&mut unsent, &mut sent] {
            let answer = read_to_close(s);
            assert_eq!(answer, "ERR guest vsock device reset\n");
        }
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
        let mut after = f.host_connect(1024);
        assert!(read_to_close(&mut after).starts_with("ERR guest vsock driver not ready"));
    }

    /// A driver that never takes the REQUEST (no RX buffers) does not hold
    /// the host client: `ERR` after the answer timeout, and no RST for a
    /// connection the guest never heard of.
    #[test]
    fn connect_without_rx_buffers_gets_err_after_the_answer_timeout() {
        let mut f = fixture(true);
        f.dev.lock().unwrap().set_answer_timeout(SHORT_TIMEOUT);
        let mut s = f.host_connect(1024);
        after_timeout(&mut f);
        let answer = read_to_close(&mut s);
        assert!(
            answer.starts_with("ERR guest vsock driver took no packet"),
            "{answer:?}"
        );
        f.provide_rx(4);
        assert!(f.recv_all().is_empty(), "no REQUEST, no RST");
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
    }

    /// Issue 9 item 5: clients that connect and never send their CONNECT
    /// line (far more than [`MAX_PENDING_HANDSHAKES`]) cannot lock others
    /// out: a new client evicts the idlest, which reads `ERR`.
    #[test]
    fn idle_host_clients_cannot_lock_out_a_connect() {
        use crate::virtio::vsock::muxer::MAX_PENDING_HANDSHAKES;
        let mut f = fixture(true);
        f.provide_rx(8);
        let mut idle = Vec::new();
        for _ in 0..(MAX_PENDING_HANDSHAKES + 100) {
            idle.push(UnixStream::connect(&f.uds).unwrap());
            f.run();
        }
        let (mut s, _) = established_host_conn(&mut f, 1024);
        s.write_all(b"through").unwrap();
        f.run();
        assert!(f
            .recv_all()
            .iter()
            .any(|(h, p)| h.op == op::RW && p == b"through"));
        // The evicted ones were told, and at most the limit is held.
        let mut told = 0;
        for s in &mut idle {
            s.set_nonblocking(true).unwrap();
            if String::from_utf8_lossy(&read_available(s)).contains("ERR too many pending") {
                told += 1;
            }
        }
        assert!(told >= 100, "{told} evicted clients told");
        let refused = f.dev.lock().unwrap().muxer_counters().handshake_refused;
        assert!(refused >= 101, "{refused}");
    }

    /// A client that connects and never finishes its line is closed with
    /// `ERR` after the handshake timeout.
    #[test]
    fn a_silent_host_client_times_out_with_err() {
        let mut f = fixture(true);
        f.dev.lock().unwrap().set_handshake_timeout(SHORT_TIMEOUT);
        let mut s = UnixStream::connect(&f.uds).unwrap();
        s.write_all(b"CONNE").unwrap();
        f.run();
        after_timeout(&mut f);
        assert_eq!(read_to_close(&mut s), "ERR no CONNECT line in time\n");
    }

    /// Many CONNECTs to a port nothing listens on, as a busy host might
    /// send: each gets its `ERR`, none stays in the table.
    #[test]
    fn many_connects_to_an_unlistened_port_each_get_err() {
        let mut f = fixture(true);
        f.provide_rx(64);
        let mut clients = Vec::new();
        for _ in 0..150 {
            let s = f.host_connect(9999);
            for (h, _) in f.recv_all() {
                if h.op == op::REQUEST {
                    f.send(hdr(op::RST, 9999, h.src_port), &[]);
                }
            }
            if f.rx_outstanding < 8 {
                f.provide_rx(32);
            }
            clients.push(s);
        }
        for s in &mut clients {
            assert!(read_to_close(s).starts_with("ERR guest port 9999 refused"));
        }
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
        assert_eq!(f.dev.lock().unwrap().muxer_counters().connect_refused, 150);
    }

    #[test]
    fn bad_connect_lines_get_error() {
        let mut f = fixture(true);
        // (The long line is exactly the limit, so that nothing is left
        // unread: closing a socket with unread data resets it.)
        for line in [&b"HELLO\n"[..], b"CONNECT abc\n", &[b'x'; 32][..]] {
            let mut s = UnixStream::connect(&f.uds).unwrap();
            s.write_all(line).unwrap();
            f.run();
            s.set_nonblocking(false).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            assert!(out.starts_with(b"ERR "), "{out:?}");
        }
        assert_eq!(f.dev.lock().unwrap().muxer_counters().handshake_refused, 3);
    }

    #[test]
    fn guest_connect_reaches_uds_port_listener() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let listener = UnixListener::bind(format!("{}_5000", f.uds.display())).unwrap();
        f.send(hdr(op::REQUEST, 777, 5000), &[]);
        let (mut host, _) = listener.accept().unwrap();
        host.set_nonblocking(true).unwrap();
        let pkts = f.recv_all();
        assert_eq!(pkts[0].0.op, op::RESPONSE);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 777));
        assert_eq!(pkts[0].0.buf_alloc, CONN_TX_BUF_SIZE);
        f.send(hdr(op::RW, 777, 5000), b"hello host");
        assert_eq!(read_available(&mut host), b"hello host");
        host.write_all(b"hello guest").unwrap();
        f.run();
        let pkts = f.recv_all();
        assert_eq!(pkts[0].1, b"hello guest");
    }

    #[test]
    fn guest_connect_without_listener_gets_rst() {
        let mut f = fixture(true);
        f.provide_rx(2);
        f.send(hdr(op::REQUEST, 777, 6000), &[]);
        let pkts = f.recv_all();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RST);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (6000, 777));
        assert_eq!(f.dev.lock().unwrap().muxer_counters().connect_failed, 1);
    }

    #[test]
    fn packet_for_unknown_connection_gets_rst() {
        let mut f = fixture(true);
        f.provide_rx(2);
        f.send(hdr(op::RW, 1, 2), b"data");
        f.send(hdr(op::RST, 1, 2), &[]); // RST for unknown: no answer
        let pkts = f.recv_all();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RST);
    }

    #[test]
    fn wrong_cids_are_dropped_silently() {
        let mut f = fixture(true);
        f.provide_rx(2);
        let mut h = hdr(op::REQUEST, 1, 2);
        h.dst_cid = 7;
        f.send(h, &[]);
        let mut h = hdr(op::REQUEST, 1, 2);
        h.src_cid = 99;
        f.send(h, &[]);
        assert!(f.recv_all().is_empty());
        assert_eq!(f.dev.lock().unwrap().muxer_counters().bad_addr, 2);
    }

    #[test]
    fn unknown_type_and_op_get_rst() {
        let mut f = fixture(true);
        f.provide_rx(4);
        let mut h = hdr(op::REQUEST, 1, 2);
        h.type_ = 2; // SEQPACKET: not offered
        f.send(h, &[]);
        let pkts = f.recv_all();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RST);
        let (mut s, local) = established_host_conn(&mut f, 1024);
        f.send(hdr(0x99, 1024, local), &[]);
        let pkts = f.recv_all();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RST);
        s.set_nonblocking(false).unwrap();
        assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn malformed_tx_chains_are_counted_not_fatal() {
        let mut f = fixture(true);
        // Header too short.
        f.txq.add_chain(&[(TX_BUF, 20, false)]);
        // len beyond the chain.
        let mut h = hdr(op::RW, 1, 2);
        h.len = 1000;
        f.mem
            .write_slice(&h.to_bytes(), GuestAddress(TX_BUF + 0x1000))
            .unwrap();
        f.txq
            .add_chain(&[(TX_BUF + 0x1000, 44, false), (TX_BUF + 0x2000, 10, false)]);
        // len above 64 KiB.
        h.len = u32::MAX;
        f.mem
            .write_slice(&h.to_bytes(), GuestAddress(TX_BUF + 0x3000))
            .unwrap();
        f.txq.add_chain(&[(TX_BUF + 0x3000, 44, false)]);
        // Outside memory; writable header.
        f.txq.add_chain(&[(MEM_SIZE - 10, 44, false)]);
        f.txq.add_chain(&[(TX_BUF, 44, true)]);
        f.evts[TXQ].write(1).unwrap();
        f.run();
        assert_eq!(f.dev.lock().unwrap().counters().bad_tx, 5);
        assert_eq!(f.txq.used_pending(), 5);
    }

    #[test]
    fn small_rx_buffers_are_skipped() {
        let mut f = fixture(true);
        f.rxq.add_chain(&[(RX_BUF, 10, true)]);
        f.rxq.add_chain(&[(RX_BUF, 64, false)]);
        f.rx_outstanding += 2;
        f.send(hdr(op::RW, 1, 2), b"x"); // owes an RST
        assert_eq!(f.rxq.pop_used(), Some((0, 0)));
        assert_eq!(f.rxq.pop_used(), Some((1, 0)));
        assert_eq!(f.dev.lock().unwrap().counters().bad_rx, 2);
        f.provide_rx(1);
        assert_eq!(f.recv().unwrap().0.op, op::RST);
    }

    #[test]
    fn tx_avail_index_jump_fails_device() {
        let mut f = fixture(true);
        f.txq.set_avail_idx(1000);
        f.evts[TXQ].write(1).unwrap();
        f.run();
        let d = f.dev.lock().unwrap();
        assert!(d.common.queues().unwrap().interrupt.needs_reset());
    }

    #[test]
    fn rst_flood_without_rx_buffers_is_bounded() {
        let mut f = fixture(true);
        // 2000 packets for unknown connections, no RX buffers: the device
        // stops taking TX once MAX_QUEUED_RST replies wait.
        for i in 0..8 {
            for j in 0..100u32 {
                let addr = TX_BUF + u64::from(f.txq.next_head()) * 64;
                f.mem
                    .write_slice(&hdr(op::RW, i * 100 + j, 9).to_bytes(), GuestAddress(addr))
                    .unwrap();
                f.txq.add_chain(&[(addr, 44, false)]);
            }
            f.evts[TXQ].write(1).unwrap();
            f.run();
        }
        assert!(f.txq.used_pending() as usize <= super::super::muxer::MAX_QUEUED_RST);
        // Once the guest reads, TX resumes.
        f.provide_rx(128);
        let got = f.recv_all().len();
        assert!(got >= 128);
    }

    #[test]
    fn guest_shutdown_send_half_closes_host_socket() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let (mut s, local) = established_host_conn(&mut f, 1024);
        f.send(hdr(op::RW, 1024, local), b"last words");
        let mut h = hdr(op::SHUTDOWN, 1024, local);
        h.flags = shutdown::SEND;
        f.send(h, &[]);
        s.set_nonblocking(false).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap(); // EOF after the data
        assert_eq!(out, b"last words");
        // The host can still send.
        s.write_all(b"reply").unwrap();
        f.run();
        let pkts = f.recv_all();
        assert!(pkts.iter().any(|(h, p)| h.op == op::RW && p == b"reply"));
    }

    #[test]
    fn guest_full_shutdown_ends_with_rst() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let (mut s, local) = established_host_conn(&mut f, 1024);
        let mut h = hdr(op::SHUTDOWN, 1024, local);
        h.flags = shutdown::SEND | shutdown::RCV;
        f.send(h, &[]);
        let pkts = f.recv_all();
        assert_eq!(pkts.last().unwrap().0.op, op::RST);
        s.set_nonblocking(false).unwrap();
        assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
    }

    #[test]
    fn host_eof_becomes_shutdown_send() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let (s, local) = established_host_conn(&mut f, 1024);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        f.run();
        let pkts = f.recv_all();
        let (h, _) = pkts.iter().find(|(h, _)| h.op == op::SHUTDOWN).unwrap();
        assert_eq!(h.flags & shutdown::SEND, shutdown::SEND);
        assert_eq!(h.src_port, local);
        // Guest answers RST; the connection is gone.
        f.send(hdr(op::RST, 1024, local), &[]);
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
    }

    /// A host client that writes more than the guest's credit and closes
    /// its socket at once: the socket hangs up with data still unread. All
    /// of it reaches the guest before the SHUTDOWN(SEND), which would
    /// otherwise end the guest's stream early (a truncated transfer).
    #[test]
    fn host_close_with_unread_data_delivers_it_all_before_shutdown_send() {
        let mut f = fixture(true);
        f.provide_rx(16);
        let mut s = f.host_connect(1024);
        let local = f.expect_request(1024);
        let mut resp = hdr(op::RESPONSE, 1024, local);
        resp.buf_alloc = 4096;
        f.send(resp, &[]);
        read_available(&mut s);
        let data = pattern(64 << 10);
        s.set_nonblocking(false).unwrap();
        s.write_all(&data).unwrap();
        drop(s);
        let mut received = Vec::new();
        let mut shutdown_flags = 0;
        for _ in 0..1000 {
            f.run();
            for (h, p) in f.recv_all() {
                match h.op {
                    op::RW => {
                        assert_eq!(
                            shutdown_flags & shutdown::SEND,
                            0,
                            "data after SHUTDOWN(SEND)"
                        );
                        received.extend_from_slice(&p);
                    }
                    op::SHUTDOWN => shutdown_flags |= h.flags,
                    _ => {}
                }
            }
            if shutdown_flags & shutdown::SEND != 0 {
                break;
            }
            // The guest application consumed everything so far.
            let mut upd = hdr(op::CREDIT_UPDATE, 1024, local);
            upd.buf_alloc = 4096;
            upd.fwd_cnt = received.len() as u32;
            f.send(upd, &[]);
            if f.rx_outstanding < 8 {
                f.provide_rx(16);
            }
        }
        assert_eq!(shutdown_flags & shutdown::SEND, shutdown::SEND);
        assert_eq!(received.len(), data.len());
        assert!(received == data);
    }

    /// The guest offers one RX buffer with room for the header only.
    fn provide_header_only_rx(f: &mut Fixture) {
        let addr = RX_BUF + u64::from(f.rxq.next_head()) * u64::from(RX_BUF_LEN);
        f.rxq.add_chain(&[(addr, HDR_LEN as u32, true)]);
        f.rx_outstanding += 1;
        f.evts[RXQ].write(1).unwrap();
        f.run();
    }

    /// Issue 14 item 1: RX buffers of exactly the 44-byte header while the
    /// host has data for the guest. The device used to pop and re-queue
    /// the same connection forever with its mutex held (the whole VM
    /// stopped); now the connection waits for a buffer with room, and
    /// packets that fit (another connection's REQUEST) still go out.
    #[test]
    fn vsock_header_only_rx_buffers_with_host_data_pending_do_not_spin() {
        let _dog = watchdog("header-only RX buffers", std::time::Duration::from_secs(20));
        let mut f = fixture(true);
        f.provide_rx(1);
        let (mut s, _local) = established_host_conn(&mut f, 1024);
        s.write_all(b"ping").unwrap();
        f.run();
        provide_header_only_rx(&mut f);
        assert!(
            f.recv().is_none(),
            "no data packet fits a header-only buffer"
        );
        // Progress for what fits: another host CONNECT's REQUEST.
        let _other = f.host_connect(1025);
        f.expect_request(1025);
        // The data goes out once the guest gives room.
        f.provide_rx(1);
        let pkts = f.recv_all();
        assert!(
            pkts.iter().any(|(h, p)| h.op == op::RW && p == b"ping"),
            "{pkts:?}"
        );
    }

    /// Issue 14 item 1, second way in: the host hangs up with data still
    /// buffered for the guest, and the guest's CREDIT_UPDATE says
    /// `buf_alloc = 0`. The SHUTDOWN waits behind the data, the data waits
    /// for credit: the connection waits, nothing spins, and it all goes out
    /// in order once credit comes.
    #[test]
    fn vsock_host_hang_up_with_buffered_data_and_zero_credit_does_not_spin() {
        let _dog = watchdog(
            "hang-up with zero credit",
            std::time::Duration::from_secs(20),
        );
        let mut f = fixture(true);
        f.provide_rx(1);
        let (mut s, local) = established_host_conn(&mut f, 1024);
        s.write_all(b"last words").unwrap();
        drop(s);
        f.run();
        let mut upd = hdr(op::CREDIT_UPDATE, 1024, local);
        upd.buf_alloc = 0;
        f.send(upd, &[]);
        f.provide_rx(4);
        let pkts = f.recv_all();
        assert!(
            pkts.iter()
                .all(|(h, _)| h.op != op::RW && h.op != op::SHUTDOWN),
            "nothing is sent without credit: {pkts:?}"
        );
        f.send(hdr(op::CREDIT_UPDATE, 1024, local), &[]);
        let ops: Vec<u16> = f.recv_all().iter().map(|(h, _)| h.op).collect();
        let rw = ops
            .iter()
            .position(|&o| o == op::RW)
            .expect("data delivered");
        let sd = ops
            .iter()
            .position(|&o| o == op::SHUTDOWN)
            .expect("then SHUTDOWN");
        assert!(rw < sd, "{ops:?}");
    }

    const SHORT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

    /// Lets the short answer timeout pass, then runs the event loop.
    fn after_timeout(f: &mut Fixture) {
        std::thread::sleep(SHORT_TIMEOUT * 2);
        f.run();
    }

    #[test]
    fn unanswered_request_is_reset_and_the_host_socket_closed() {
        let mut f = fixture(true);
        f.dev.lock().unwrap().set_answer_timeout(SHORT_TIMEOUT);
        f.provide_rx(8);
        let mut s = f.host_connect(1024);
        let local = f.expect_request(1024);
        // The guest never answers.
        after_timeout(&mut f);
        let pkts = f.recv_all();
        assert!(
            pkts.iter()
                .any(|(h, _)| h.op == op::RST && h.src_port == local && h.dst_port == 1024),
            "RST to the guest: {pkts:?}"
        );
        let answer = read_to_close(&mut s);
        assert_eq!(
            answer, "ERR guest port 1024 did not answer within 0s\n",
            "no OK line"
        );
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
        assert_eq!(f.dev.lock().unwrap().muxer_counters().timed_out, 1);
        // A late RESPONSE is for an unknown connection: RST.
        f.send(hdr(op::RESPONSE, 1024, local), &[]);
        assert!(f.recv_all().iter().any(|(h, _)| h.op == op::RST));
    }

    #[test]
    fn answered_request_is_not_reset() {
        let mut f = fixture(true);
        f.dev.lock().unwrap().set_answer_timeout(SHORT_TIMEOUT);
        f.provide_rx(8);
        let (mut s, _local) = established_host_conn(&mut f, 1024);
        after_timeout(&mut f);
        assert!(f.recv_all().iter().all(|(h, _)| h.op != op::RST));
        assert_eq!(f.dev.lock().unwrap().connection_count(), 1);
        s.write_all(b"still here").unwrap();
        f.run();
        assert!(f
            .recv_all()
            .iter()
            .any(|(h, p)| h.op == op::RW && p == b"still here"));
    }

    #[test]
    fn guest_ignoring_a_full_shutdown_is_reset() {
        let mut f = fixture(true);
        f.dev.lock().unwrap().set_answer_timeout(SHORT_TIMEOUT);
        f.provide_rx(8);
        let (s, local) = established_host_conn(&mut f, 1024);
        drop(s); // the host client hangs up
        f.run();
        let flags = f
            .recv_all()
            .iter()
            .filter(|(h, _)| h.op == op::SHUTDOWN)
            .fold(0, |acc, (h, _)| acc | h.flags);
        assert_eq!(flags, shutdown::RCV | shutdown::SEND);
        assert_eq!(f.dev.lock().unwrap().connection_count(), 1);
        // The guest never sends its RST.
        after_timeout(&mut f);
        assert!(f
            .recv_all()
            .iter()
            .any(|(h, _)| h.op == op::RST && h.src_port == local));
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
    }

    #[test]
    fn credit_request_gets_credit_update() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let (_s, local) = established_host_conn(&mut f, 1024);
        f.send(hdr(op::RW, 1024, local), &[7u8; 1000]);
        f.send(hdr(op::CREDIT_REQUEST, 1024, local), &[]);
        let pkts = f.recv_all();
        let (h, _) = pkts
            .iter()
            .find(|(h, _)| h.op == op::CREDIT_UPDATE)
            .unwrap();
        assert_eq!(h.buf_alloc, CONN_TX_BUF_SIZE);
        assert_eq!(h.fwd_cnt, 1000);
    }

    #[test]
    fn device_respects_guest_credit() {
        let mut f = fixture(true);
        f.provide_rx(16);
        let mut s = f.host_connect(1024);
        let local = f.expect_request(1024);
        let mut resp = hdr(op::RESPONSE, 1024, local);
        resp.buf_alloc = 100; // the guest can take 100 bytes
        f.send(resp, &[]);
        read_available(&mut s);
        s.write_all(&[1u8; 300]).unwrap();
        f.run();
        let pkts = f.recv_all();
        let data: usize = pkts
            .iter()
            .filter(|(h, _)| h.op == op::RW)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(data, 100);
        assert!(pkts.iter().any(|(h, _)| h.op == op::CREDIT_REQUEST));
        // The guest consumed 100 bytes.
        let mut upd = hdr(op::CREDIT_UPDATE, 1024, local);
        upd.buf_alloc = 100;
        upd.fwd_cnt = 100;
        f.send(upd, &[]);
        let data: usize = f
            .recv_all()
            .iter()
            .filter(|(h, _)| h.op == op::RW)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(data, 100);
    }

    #[test]
    fn guest_exceeding_credit_is_reset() {
        let mut f = fixture(true);
        f.provide_rx(8);
        let listener = UnixListener::bind(format!("{}_5001", f.uds.display())).unwrap();
        f.send(hdr(op::REQUEST, 778, 5001), &[]);
        let (_host, _) = listener.accept().unwrap(); // never reads
        f.recv_all();
        let chunk = vec![0u8; 16 << 10];
        let mut reset = false;
        for _ in 0..(2 * CONN_TX_BUF_SIZE as usize / chunk.len() + 64) {
            f.send(hdr(op::RW, 778, 5001), &chunk);
            if f.recv_all().iter().any(|(h, _)| h.op == op::RST) {
                reset = true;
                break;
            }
        }
        assert!(reset, "a guest ignoring credit gets RST");
        assert_eq!(f.dev.lock().unwrap().connection_count(), 0);
    }

    #[test]
    fn many_connections_at_once() {
        let mut f = fixture(true);
        f.provide_rx(64);
        let mut conns = Vec::new();
        for port in 0..20 {
            conns.push(established_host_conn(&mut f, 2000 + port));
        }
        for (i, (s, _)) in conns.iter_mut().enumerate() {
            s.write_all(format!("conn{i}").as_bytes()).unwrap();
        }
        f.run();
        let pkts = f.recv_all();
        for (i, (_, local)) in conns.iter().enumerate() {
            let (_, p) = pkts
                .iter()
                .find(|(h, _)| h.src_port == *local && h.op == op::RW)
                .unwrap();
            assert_eq!(p, format!("conn{i}").as_bytes());
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn one_mib_guest_to_host() {
        let mut f = fixture(true);
        f.provide_rx(32);
        let listener = UnixListener::bind(format!("{}_5002", f.uds.display())).unwrap();
        f.send(hdr(op::REQUEST, 900, 5002), &[]);
        let (mut host, _) = listener.accept().unwrap();
        host.set_nonblocking(true).unwrap();
        let resp = f.recv_all();
        let (mut buf_alloc, mut fwd_cnt) = (resp[0].0.buf_alloc, resp[0].0.fwd_cnt);
        let data = pattern(1 << 20);
        let (mut sent, mut received) = (0usize, Vec::new());
        let mut rounds = 0;
        while received.len() < data.len() {
            rounds += 1;
            assert!(rounds < 10_000, "stalled at {sent}/{}", received.len());
            let credit = buf_alloc as usize - (sent as u32).wrapping_sub(fwd_cnt) as usize;
            let n = credit.min(16 << 10).min(data.len() - sent);
            if n > 0 {
                f.send(hdr(op::RW, 900, 5002), &data[sent..sent + n]);
                sent += n;
            } else {
                f.run();
            }
            received.extend(read_available(&mut host));
            f.run();
            for (h, _) in f.recv_all() {
                buf_alloc = h.buf_alloc;
                fwd_cnt = h.fwd_cnt;
            }
            if f.rx_outstanding < 8 {
                f.provide_rx(16);
            }
        }
        assert_eq!(received, data);
    }

    #[test]
    fn one_mib_host_to_guest() {
        let mut f = fixture(true);
        f.provide_rx(64);
        let (mut s, local) = established_host_conn(&mut f, 1024);
        let data = pattern(1 << 20);
        let (mut written, mut received) = (0usize, Vec::new());
        let mut consumed_reported = 0usize;
        let mut rounds = 0;
        while received.len() < data.len() {
            rounds += 1;
            assert!(rounds < 10_000, "stalled at {written}/{}", received.len());
            if written < data.len() {
                match s.write(&data[written..(written + (32 << 10)).min(data.len())]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            f.run();
            for (h, p) in f.recv_all() {
                if h.op == op::RW {
                    received.extend_from_slice(&p);
                }
            }
            // The guest application consumed everything: tell the device.
            if received.len() - consumed_reported >= 32 << 10 || received.len() == data.len() {
                let mut upd = hdr(op::CREDIT_UPDATE, 1024, local);
                upd.fwd_cnt = received.len() as u32;
                f.send(upd, &[]);
                consumed_reported = received.len();
            }
            if f.rx_outstanding < 16 {
                f.provide_rx(32);
            }
        }
        assert_eq!(received, data);
    }
}
