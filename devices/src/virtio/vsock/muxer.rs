//! The hybrid Unix-socket backend (Firecracker's `unix/muxer`): owns the
//! listening socket, host connections in their `CONNECT` handshake, and the
//! table of [`VsockConnection`]s keyed by `(host port, guest port)`.
//!
//! The device gives it the guest's packets ([`Muxer::send_pkt`]) and asks
//! it for packets to deliver ([`Muxer::recv_pkt`]); the event loop gives it
//! socket readiness ([`Muxer::handle_event`]). It never touches queues. The
//! epoll interest of each socket is kept by the muxer and applied by the
//! device ([`Muxer::apply_epoll`]), which owns the `EventOps`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};

use super::csm::{ConnState, VsockConnection};
use super::packet::VsockHeader;
use super::{op, HOST_CID, TYPE_STREAM};

/// Most connections at once (established or waiting).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that connected but have not finished `CONNECT <port>\n`;
/// one more evicts the oldest (see [`Muxer::handle_event`]).
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// How long a host client has, from its connect, to finish its `CONNECT`
/// line before it gets `ERR` and is closed (clients write it at once).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted `CONNECT <port>\n` line, in bytes.
pub const MAX_CONNECT_LINE: usize = 32;
/// RSTs for unknown connections waiting for RX buffers; while full, the
/// device stops taking TX packets (back-pressure instead of growth).
pub const MAX_QUEUED_RST: usize = 256;
/// Event data of the listening socket.
pub const LISTENER_TOKEN: u32 = 100;
/// Event data of connection and handshake sockets.
pub const CONN_TOKEN: u32 = 101;
/// How long the guest has to answer a host-initiated REQUEST with RESPONSE
/// or RST, and to answer a full SHUTDOWN with RST, before the device resets
/// the connection itself (closing the host socket). Firecracker allows 2 s;
/// capsa allows more because guest kernel mode may run emulated (PVM
/// hosts), where a loaded guest can take seconds to answer.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Host clients accepted per listener event.
const ACCEPTS_PER_EVENT: usize = 32;

/// VsockConnection key: (host-side port, guest-side port).
pub type ConnKey = (u32, u32);

/// A host client that has not sent its `CONNECT` line yet.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    /// When it was accepted.
    since: Instant,
}

/// Counters of the backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxerCounters {
    /// Guest packets dropped: wrong CIDs.
    pub bad_addr: u64,
    /// RSTs sent for packets of unknown connections or refused requests.
    pub rst_sent: u64,
    /// Guest connects to `<uds>_P` that failed.
    pub connect_failed: u64,
    /// Host handshakes refused (bad line, limits, driver not ready, no
    /// line in time, evicted by a newer client).
    pub handshake_refused: u64,
    /// Host `CONNECT`s that the guest refused (RST: no listener on the
    /// port) or never answered; each got an `ERR` line.
    pub connect_refused: u64,
    /// Connections reset because the guest did not answer a REQUEST or a
    /// full SHUTDOWN in time.
    pub timed_out: u64,
}

/// The backend.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, VsockConnection>,
    conn_fds: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    rst_queue: VecDeque<VsockHeader>,
    rx_ready: VecDeque<ConnKey>,
    in_rx_ready: HashSet<ConnKey>,
    registered: HashMap<RawFd, EventSet>,
    dirty: HashSet<RawFd>,
    /// Sockets closed since the last `apply_epoll`: kept open until their
    /// epoll registration is removed (event-manager must see the fd).
    graveyard: Vec<UnixStream>,
    local_port_last: u32,
    answer_timeout: Duration,
    handshake_timeout: Duration,
    /// Whether the guest's driver has activated the device: before, and
    /// after a reset, nobody could answer a REQUEST.
    driver_ready: bool,
    counters: MuxerCounters,
}

impl Muxer {
    /// Binds the listening socket at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            conn_fds: HashMap::new(),
            handshakes: HashMap::new(),
            rst_queue: VecDeque::new(),
            rx_ready: VecDeque::new(),
            in_rx_ready: HashSet::new(),
            registered: HashMap::new(),
            dirty: HashSet::new(),
            graveyard: Vec::new(),
            local_port_last: 1 << 30,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            driver_ready: false,
            counters: MuxerCounters::default(),
        })
    }

    /// The listening socket (watched by the device from `init`).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Counters.
    pub fn counters(&self) -> MuxerCounters {
        self.counters
    }

    /// Number of connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sets how long the guest has to answer a REQUEST or a full SHUTDOWN
    /// (default [`DEFAULT_ANSWER_TIMEOUT`]); applies to packets sent from
    /// now on.
    pub fn set_answer_timeout(&mut self, timeout: Duration) {
        self.answer_timeout = timeout;
    }

    /// Sets how long a host client has to finish its `CONNECT` line
    /// (default [`HANDSHAKE_TIMEOUT`]).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// The earliest time by which the guest owes an answer or a host
    /// client its `CONNECT` line, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self
            .handshakes
            .values()
            .map(|h| h.since + self.handshake_timeout);
        self.conns
            .values()
            .filter_map(VsockConnection::deadline)
            .chain(handshakes)
            .min()
    }

    /// Resets every connection whose guest did not answer in time (an RST
    /// goes to the guest; a host client still waiting for `OK` gets an
    /// `ERR` line) and closes host clients that did not finish their
    /// `CONNECT` line in time.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some(c) = self.conns.get_mut(&key) {
                tracing::debug!("vsock: guest port {} did not answer in time; reset", key.1);
                self.counters.timed_out += 1;
                c.set_deadline(None);
                if c.state() == ConnState::LocalInit {
                    self.counters.connect_refused += 1;
                    let waited = self.answer_timeout.as_secs_f64();
                    if c.request_pending() {
                        // The REQUEST never left (no RX buffers): the guest
                        // knows of no connection to reset.
                        c.refuse_host(&format!(
                            "guest vsock driver took no packet within {waited:.0}s"
                        ));
                        c.close();
                    } else {
                        c.refuse_host(&format!(
                            "guest port {} did not answer within {waited:.0}s",
                            key.1
                        ));
                        c.kill();
                    }
                } else {
                    c.kill();
                }
            }
            self.touch(key);
        }
        let slow: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.since + self.handshake_timeout <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in slow {
            self.refuse_handshake(fd, "no CONNECT line in time");
        }
    }

    /// Tells the backend whether the guest's driver has the device active
    /// (virtio `DRIVER_OK` and queues set up). While it has not, a host
    /// `CONNECT` gets `ERR` at once instead of waiting for a guest that may
    /// take long to boot, or never do; the client retries (as
    /// `capsa-agent`'s client does).
    pub fn set_driver_ready(&mut self, ready: bool) {
        self.driver_ready = ready;
    }

    /// Whether a packet waits for an RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_ready.is_empty()
    }

    /// Whether the device must stop taking TX packets until RX drains.
    pub fn tx_blocked(&self) -> bool {
        self.rst_queue.len() >= MAX_QUEUED_RST
    }

    /// A local port for a host-initiated connection, in `[2^30, 2^31)` as
    /// Firecracker picks them, not in use by a connection.
    fn allocate_local_port(&mut self) -> u32 {
        loop {
            self.local_port_last =
                ((self.local_port_last.wrapping_add(1)) & !(1 << 31)) | (1 << 30);
            let p = self.local_port_last;
            if !self.conns.keys().any(|&(l, _)| l == p) {
                return p;
            }
        }
    }

    fn queue_rst(&mut self, h: &VsockHeader) {
        self.counters.rst_sent += 1;
        self.rst_queue.push_back(VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// Handles a packet the guest sent (§5.10.6).
    pub fn send_pkt(&mut self, h: &VsockHeader, payload: &[u8]) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            // Not from this guest or not for the host: drop, never answer.
            self.counters.bad_addr += 1;
            tracing::debug!("vsock: dropped packet {}->{}", h.src_cid, h.dst_cid);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                self.queue_rst(h);
            }
            return;
        }
        if h.op == op::REQUEST {
            if let Some(c) = self.conns.get_mut(&key) {
                c.kill();
                self.touch(key);
                return;
            }
            return self.guest_connect(h);
        }
        match self.conns.get_mut(&key) {
            Some(c) => {
                let connecting = c.state() == ConnState::LocalInit;
                c.on_guest_packet(h, payload);
                if connecting && c.state() != ConnState::Established {
                    self.counters.connect_refused += 1;
                }
                self.touch(key);
            }
            None if h.op != op::RST => self.queue_rst(h),
            None => {}
        }
    }

    /// Guest → host: connects to `<uds_path>_<port>`.
    fn guest_connect(&mut self, h: &VsockHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return self.queue_rst(h);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {path:?} failed: {e}");
                self.counters.connect_failed += 1;
                return self.queue_rst(h);
            }
        };
        let key = (h.dst_port, h.src_port);
        let fd = stream.as_raw_fd();
        let conn = VsockConnection::new_guest_initiated(stream, self.guest_cid, key.0, key.1, h);
        self.conns.insert(key, conn);
        self.conn_fds.insert(fd, key);
        self.touch(key);
    }

    /// Re-evaluates a connection after anything happened to it: RX
    /// scheduling, epoll interest, removal once dead.
    fn touch(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        let fd = c.stream.as_raw_fd();
        if c.state() == ConnState::Dead {
            if let Some(c) = self.conns.remove(&key) {
                self.conn_fds.remove(&fd);
                self.graveyard.push(c.stream);
                self.dirty.insert(fd);
            }
            return;
        }
        if c.has_pending_rx() && self.in_rx_ready.insert(key) {
            self.rx_ready.push_back(key);
        }
        self.dirty.insert(fd);
    }

    /// The next packet for the guest, with at most `max_payload` bytes of
    /// payload. Each connection waiting to send is asked once per call:
    /// one that has nothing that fits (only data, and `max_payload` is 0)
    /// goes back to the end of the line, and `None` means that nothing
    /// fits this buffer (issue 14 item 1: never a loop over the same
    /// connection).
    pub fn recv_pkt(&mut self, max_payload: usize) -> Option<(VsockHeader, Vec<u8>)> {
        if let Some(h) = self.rst_queue.pop_front() {
            return Some((h, Vec::new()));
        }
        for _ in 0..self.rx_ready.len() {
            let key = self.rx_ready.pop_front()?;
            self.in_rx_ready.remove(&key);
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = c.next_rx_packet(max_payload);
            match pkt.as_ref().map(|(h, _)| h.op) {
                // Room for more host data now.
                Some(op::RW) => c.fill_from_host(false),
                // The guest owes a RESPONSE, or its RST after a full
                // SHUTDOWN: start the clock.
                Some(op::REQUEST) => c.set_deadline(Some(Instant::now() + self.answer_timeout)),
                Some(op::SHUTDOWN) if c.shut_down_by_host() && c.deadline().is_none() => {
                    c.set_deadline(Some(Instant::now() + self.answer_timeout))
                }
                _ => {}
            }
            self.touch(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Handles readiness of a socket: the listener, a handshake or a
    /// connection.
    pub fn handle_event(&mut self, fd: RawFd, set: EventSet) {
        if fd == self.listener.as_raw_fd() {
            return self.accept();
        }
        if self.handshakes.contains_key(&fd) {
            return self.read_handshake(fd);
        }
        let Some(&key) = self.conn_fds.get(&fd) else {
            tracing::debug!("vsock: event for unknown fd {fd}");
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            if set.contains(EventSet::OUT) {
                c.flush_host();
            }
            if set.intersects(
                EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
            ) {
                c.fill_from_host(set.intersects(EventSet::HANG_UP | EventSet::ERROR));
            }
        }
        self.touch(key);
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock: accept: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.handshakes.len() >= MAX_PENDING_HANDSHAKES {
                // Clients that connect and say nothing must not lock the
                // others out: the one that has waited longest goes (a
                // client writes its line at once, so that is the idlest).
                let oldest = self
                    .handshakes
                    .iter()
                    .min_by_key(|(_, h)| h.since)
                    .map(|(fd, _)| *fd);
                if let Some(fd) = oldest {
                    self.refuse_handshake(fd, "too many pending connections");
                }
            }
            let fd = stream.as_raw_fd();
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                    since: Instant::now(),
                },
            );
            self.dirty.insert(fd);
        }
    }

    fn refuse_handshake(&mut self, fd: RawFd, why: &str) {
        self.counters.handshake_refused += 1;
        if let Some(mut hs) = self.handshakes.remove(&fd) {
            let _ = hs.stream.write_all(format!("ERR {why}\n").as_bytes());
            self.graveyard.push(hs.stream);
            self.dirty.insert(fd);
        }
    }

    /// Reads `CONNECT <port>\n` byte-wise bounded; data after the newline
    /// is kept for the guest.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let room = MAX_CONNECT_LINE - hs.line.len();
        match hs.stream.read(&mut buf[..room.max(1)]) {
            Ok(0) => {
                // The client left before finishing the line.
                if let Some(hs) = self.handshakes.remove(&fd) {
                    self.graveyard.push(hs.stream);
                    self.dirty.insert(fd);
                }
                return;
            }
            Ok(n) => hs.line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return self.refuse_handshake(fd, "read error"),
        }
        let Some(nl) = hs.line.iter().position(|&b| b == b'\n') else {
            if hs.line.len() >= MAX_CONNECT_LINE {
                return self.refuse_handshake(fd, "CONNECT line too long");
            }
            return;
        };
        let port = parse_connect(&hs.line[..nl]);
        let Some(port) = port else {
            return self.refuse_handshake(fd, "expected CONNECT <port>");
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return self.refuse_handshake(fd, "too many connections");
        }
        if !self.driver_ready {
            return self.refuse_handshake(fd, "guest vsock driver not ready (booting?)");
        }
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let local_port = self.allocate_local_port();
        let mut conn = VsockConnection::new_host_initiated(
            hs.stream,
            self.guest_cid,
            local_port,
            port,
            &hs.line[nl + 1..],
        );
        // Bounded from the CONNECT on, also while no RX buffer takes the
        // REQUEST; delivering the REQUEST restarts the clock.
        conn.set_deadline(Some(Instant::now() + self.answer_timeout));
        let key = (local_port, port);
        self.conns.insert(key, conn);
        self.conn_fds.insert(fd, key);
        self.touch(key);
    }

    /// Applies pending epoll changes through the device's `ops`, then
    /// closes the sockets that were waiting for it.
    pub fn apply_epoll(&mut self, ops: &mut EventOps) {
        for fd in std::mem::take(&mut self.dirty) {
            let want = if let Some(&key) = self.conn_fds.get(&fd) {
                self.conns.get(&key).and_then(VsockConnection::interest)
            } else if self.handshakes.contains_key(&fd) {
                Some(EventSet::IN)
            } else {
                None
            };
            let have = self.registered.get(&fd).copied();
            let r = match (have, want) {
                (None, Some(w)) => ops.add(Events::with_data_raw(fd, CONN_TOKEN, w)),
                (Some(h), Some(w)) if h != w => {
                    ops.modify(Events::with_data_raw(fd, CONN_TOKEN, w))
                }
                (Some(h), None) => ops.remove(Events::with_data_raw(fd, CONN_TOKEN, h)),
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::error!("vsock: epoll update of fd {fd}: {e:?}");
            }
            match want {
                Some(w) => self.registered.insert(fd, w),
                None => self.registered.remove(&fd),
            };
        }
        self.graveyard.clear();
    }

    /// The sockets of host clients in their handshake and of connections,
    /// in fd order (the fuzz harness plays the event loop with them).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn socket_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self
            .handshakes
            .keys()
            .chain(self.conn_fds.keys())
            .copied()
            .collect();
        fds.sort_unstable();
        fds
    }

    /// What [`Muxer::apply_epoll`] does without an epoll: closes the
    /// sockets that wait for their deregistration.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn close_graveyard(&mut self) {
        self.dirty.clear();
        self.graveyard.clear();
    }

    /// Device reset: drops every connection; host clients still waiting
    /// for `OK` get an `ERR` line. Host `CONNECT`s are refused until the
    /// driver is ready again.
    pub fn reset(&mut self) {
        self.driver_ready = false;
        self.rst_queue.clear();
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(&key) {
                if c.state() == ConnState::LocalInit {
                    self.counters.connect_refused += 1;
                    c.refuse_host("guest vsock device reset");
                }
                c.close();
            }
            self.touch(key);
        }
    }
}

/// Connects to the Unix socket `path` without blocking. A blocking
/// `connect(2)` waits while the listener's accept backlog is full: a guest
/// connecting to a host service that accepts slowly, or not at all, then
/// stopped the event loop with the device locked (found by the
/// `vsock_conn` fuzz target, issue 14 item 12). A full backlog is now an
/// `EAGAIN` error, and the guest gets an RST.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; no memory is passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len();
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe {
        libc::connect(
            fd,
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>` (an optional trailing `\r` is accepted).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 item 12 (found by the `vsock_conn` fuzz target): a guest
    /// connecting more often than a host service accepts blocked the event
    /// loop in `connect(2)` once the service's backlog was full. The
    /// connects beyond the backlog now fail at once with an RST.
    #[test]
    fn guest_connect_to_a_host_service_with_a_full_backlog_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let service = UnixListener::bind(dir.path().join("v.sock_1024")).unwrap();
        // SAFETY: listen(2) on a socket we own; no memory is passed.
        assert_eq!(unsafe { libc::listen(service.as_raw_fd(), 1) }, 0);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut m = Muxer::new(3, &uds).unwrap();
            for src_port in 1000..1008 {
                let h = VsockHeader {
                    src_cid: 3,
                    dst_cid: HOST_CID,
                    src_port,
                    dst_port: 1024,
                    type_: TYPE_STREAM,
                    op: op::REQUEST,
                    buf_alloc: 1 << 18,
                    ..Default::default()
                };
                m.send_pkt(&h, &[]);
            }
            let _ = done_tx.send((m.connection_count(), m.counters()));
        });
        let (conns, counters) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the guest's connects blocked the muxer");
        assert!((1..8).contains(&conns), "{conns} connections");
        assert_eq!(counters.connect_failed as usize, 8 - conns);
        assert_eq!(counters.rst_sent as usize, 8 - conns);
        drop(service);
    }

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT +1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"\xff\xfe"), None);
    }
}
