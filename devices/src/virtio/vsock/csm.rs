//! The state machine of one vsock connection (Firecracker's `csm`): the
//! host Unix stream, the flow-control counters of §5.10.6.3 and the
//! control packets owed to the guest.
//!
//! Memory per connection is bounded: at most [`CONN_TX_BUF_SIZE`] bytes of
//! guest data wait for the host socket (the guest may not send more than
//! that credit), at most [`CONN_RX_BUF_SIZE`] bytes of host data wait for
//! the guest.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::VsockHeader;
use super::{op, shutdown, HOST_CID, TYPE_STREAM};

/// Buffer space advertised to the guest per connection (`buf_alloc`), in
/// bytes: guest data not yet written to the host socket.
pub const CONN_TX_BUF_SIZE: u32 = 256 << 10;
/// Host data read ahead of the guest, per connection, in bytes.
pub const CONN_RX_BUF_SIZE: usize = 64 << 10;
/// Forwarded bytes after which the device tells the guest its new
/// `fwd_cnt` unprompted (a quarter of the buffer).
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_TX_BUF_SIZE / 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected; REQUEST owed or sent, RESPONSE awaited.
    LocalInit,
    /// Data flows.
    Established,
    /// An RST is owed to the guest; then the connection is dropped.
    Killing,
    /// Gone; the muxer removes it.
    Dead,
}

/// One connection between a guest port and a host Unix stream.
#[derive(Debug)]
pub struct VsockConnection {
    /// The host end.
    pub stream: UnixStream,
    /// Host-side vsock port.
    pub local_port: u32,
    /// Guest-side vsock port.
    pub peer_port: u32,
    guest_cid: u64,
    state: ConnState,
    need_request: bool,
    need_response: bool,
    need_credit_update: bool,
    need_credit_request: bool,
    shutdown_owed: u32,
    shutdown_sent: u32,
    /// Bytes for the host that are not stream data (the `OK` line).
    host_prefix: Vec<u8>,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_buf: VecDeque<u8>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    host_eof: bool,
    host_hup: bool,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    host_write_shut: bool,
    /// When the guest must have answered (a RESPONSE to our REQUEST, an RST
    /// to our full SHUTDOWN); the muxer resets the connection after it.
    deadline: Option<Instant>,
    /// The host client got its `ERR` line.
    host_refused: bool,
}

impl VsockConnection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state: ConnState::LocalInit,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            need_credit_request: false,
            shutdown_owed: 0,
            shutdown_sent: 0,
            host_prefix: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_buf: VecDeque::new(),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_eof: false,
            host_hup: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            host_write_shut: false,
            deadline: None,
            host_refused: false,
        }
    }

    /// A host-initiated connection: a REQUEST is owed to the guest.
    /// `early_data` is what the host wrote after its CONNECT line.
    pub fn new_host_initiated(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        early_data: &[u8],
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.need_request = true;
        c.rx_buf.extend(early_data);
        c
    }

    /// A guest-initiated connection, accepted: a RESPONSE is owed.
    pub fn new_guest_initiated(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        peer: &VsockHeader,
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.state = ConnState::Established;
        c.need_response = true;
        c.update_peer_credit(peer);
        c
    }

    /// The state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// When the guest must have answered, if it owes an answer.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Sets or clears the time by which the guest must answer.
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at;
    }

    /// Whether both directions are shut towards the guest (SHUTDOWN with
    /// RCV and SEND sent): only the guest's RST is still awaited.
    pub fn shut_down_by_host(&self) -> bool {
        self.shutdown_sent == shutdown::RCV | shutdown::SEND
    }

    /// Whether the REQUEST to the guest is still owed (not sent yet).
    pub fn request_pending(&self) -> bool {
        self.state == ConnState::LocalInit && self.need_request
    }

    /// Credit the guest advertised, minus what is in flight.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes `buf_alloc`/`fwd_cnt` from any packet of the guest.
    pub fn update_peer_credit(&mut self, h: &VsockHeader) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Resets the connection towards the guest (RST owed, then dropped);
    /// a host client still waiting for `OK` gets an `ERR` line.
    pub fn kill(&mut self) {
        self.refuse_host("connection reset");
        if self.state != ConnState::Dead {
            self.state = ConnState::Killing;
        }
    }

    /// Drops the connection without telling the guest (it sent RST).
    pub fn close(&mut self) {
        self.state = ConnState::Dead;
    }

    /// Tells a host client still waiting for `OK <port>` why it will not
    /// get it: `ERR <why>\n`, best effort (a fresh socket takes a line),
    /// before the connection is closed or killed. Never a silent close of
    /// a `CONNECT` (capsa's addition to Firecracker's protocol).
    pub fn refuse_host(&mut self, why: &str) {
        if self.state != ConnState::LocalInit || self.host_refused {
            return;
        }
        self.host_refused = true;
        let _ = self.stream.write_all(format!("ERR {why}\n").as_bytes());
    }

    /// Handles a packet of the guest for this connection.
    pub fn on_guest_packet(&mut self, h: &VsockHeader, payload: &[u8]) {
        self.update_peer_credit(h);
        match (self.state, h.op) {
            (ConnState::LocalInit, op::RST) => {
                // No listener on the port (yet): the guest kernel resets.
                self.refuse_host(&format!(
                    "guest port {} refused the connection (nothing listens there)",
                    self.peer_port
                ));
                self.close();
            }
            (_, op::RST) => self.close(),
            (ConnState::Killing | ConnState::Dead, _) => {}
            (ConnState::LocalInit, op::RESPONSE) if !self.need_request => {
                self.state = ConnState::Established;
                self.deadline = None;
                self.host_prefix = format!("OK {}\n", self.local_port).into_bytes();
                self.flush_host();
            }
            (ConnState::LocalInit, _) => {
                self.refuse_host(&format!(
                    "guest port {} answered the request with op {}",
                    self.peer_port, h.op
                ));
                self.kill();
            }
            (ConnState::Established, op::RW) => {
                if self.peer_shut_send {
                    return self.kill();
                }
                self.guest_data(payload);
            }
            (ConnState::Established, op::CREDIT_UPDATE) => {}
            (ConnState::Established, op::CREDIT_REQUEST) => self.need_credit_update = true,
            (ConnState::Established, op::SHUTDOWN) => {
                if h.flags & shutdown::RCV != 0 && !self.peer_shut_rcv {
                    self.peer_shut_rcv = true;
                    self.rx_buf.clear();
                    let _ = self.stream.shutdown(Shutdown::Read);
                }
                if h.flags & shutdown::SEND != 0 {
                    self.peer_shut_send = true;
                }
                self.flush_host();
            }
            (ConnState::Established, _) => self.kill(),
        }
    }

    /// Guest data for the host: written now if the socket takes it,
    /// buffered otherwise; beyond the advertised credit the guest broke
    /// §5.10.6.3 and the connection is reset.
    fn guest_data(&mut self, payload: &[u8]) {
        if self.tx_buf.len() + payload.len() > CONN_TX_BUF_SIZE as usize {
            tracing::debug!("vsock: guest exceeded credit on port {}", self.local_port);
            return self.kill();
        }
        self.tx_buf.extend(payload);
        self.flush_host();
    }

    /// Writes what is owed to the host socket (the OK line, then data);
    /// applies a guest SEND shutdown once everything is out.
    pub fn flush_host(&mut self) {
        if matches!(self.state, ConnState::Killing | ConnState::Dead) {
            return;
        }
        while !self.host_prefix.is_empty() {
            match self.stream.write(&self.host_prefix) {
                Ok(n) => {
                    self.host_prefix.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill(),
            }
        }
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return self.kill(),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill(),
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.need_credit_update = true;
        }
        if self.tx_buf.is_empty() && self.peer_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.peer_shut_send && self.peer_shut_rcv && self.tx_buf.is_empty() {
            // §5.10.6.5: the guest shut both directions; end with an RST.
            self.kill();
        }
    }

    /// Reads host data ahead, bounded by the RX buffer and the guest's
    /// credit. Notes EOF and hang-up.
    pub fn fill_from_host(&mut self, hup: bool) {
        if hup {
            self.host_hup = true;
        }
        let mut buf = [0u8; 16 << 10];
        while self.wants_host_read() {
            let room = CONN_RX_BUF_SIZE - self.rx_buf.len();
            let credit = (self.peer_credit() as usize).saturating_sub(self.rx_buf.len());
            let n = room.min(credit).min(buf.len());
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    self.host_eof = true;
                }
                Ok(n) => self.rx_buf.extend(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.host_eof = true;
                    self.host_hup = true;
                }
            }
        }
        self.update_shutdown_owed();
    }

    fn update_shutdown_owed(&mut self) {
        if self.state != ConnState::Established {
            return;
        }
        // A hang-up says the host reads no more (RCV), but data it wrote
        // before closing may still wait in the socket, unread for want of
        // guest credit: SEND only once a read has returned EOF.
        let mut flags = 0;
        if self.host_eof {
            flags |= shutdown::SEND;
        }
        if self.host_hup {
            flags |= shutdown::RCV;
        }
        self.shutdown_owed |= flags & !self.shutdown_sent;
    }

    fn wants_host_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.rx_buf.len() < CONN_RX_BUF_SIZE
            && (self.peer_credit() as usize) > self.rx_buf.len()
    }

    /// The epoll interest on the host socket, or `None` to stop watching
    /// it (nothing to read or write: a hung-up socket must not be watched,
    /// or it would wake the loop forever).
    pub fn interest(&self) -> Option<EventSet> {
        if matches!(self.state, ConnState::Killing | ConnState::Dead) {
            return None;
        }
        let mut set = EventSet::empty();
        if self.wants_host_read() {
            set |= EventSet::IN;
        }
        if !self.host_prefix.is_empty() || !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// Whether a packet is owed to the guest.
    pub fn has_pending_rx(&self) -> bool {
        match self.state {
            ConnState::Dead => false,
            ConnState::Killing => true,
            ConnState::LocalInit => self.need_request,
            ConnState::Established => {
                self.need_response
                    || self.need_credit_update
                    || self.need_credit_request
                    || self.shutdown_owed != 0
                    || (!self.rx_buf.is_empty() && !self.peer_shut_rcv && self.peer_credit() > 0)
            }
        }
    }

    fn header(&mut self, op: u16) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest with at most `max_payload` bytes of
    /// data. An RST leaves the connection [`ConnState::Dead`].
    pub fn next_rx_packet(&mut self, max_payload: usize) -> Option<(VsockHeader, Vec<u8>)> {
        match self.state {
            ConnState::Dead => None,
            ConnState::Killing => {
                self.state = ConnState::Dead;
                Some((self.header(op::RST), Vec::new()))
            }
            ConnState::LocalInit => self.need_request.then(|| {
                self.need_request = false;
                (self.header(op::REQUEST), Vec::new())
            }),
            ConnState::Established => {
                if self.need_response {
                    self.need_response = false;
                    return Some((self.header(op::RESPONSE), Vec::new()));
                }
                let n = self
                    .rx_buf
                    .len()
                    .min(max_payload)
                    .min(self.peer_credit() as usize);
                if n > 0 && !self.peer_shut_rcv {
                    let data: Vec<u8> = self.rx_buf.drain(..n).collect();
                    self.rx_cnt += Wrapping(n as u32);
                    self.need_credit_update = false;
                    if self.peer_credit() == 0 {
                        // §5.10.6.3: ask for fresh credit instead of polling.
                        self.need_credit_request = true;
                    }
                    return Some((self.header(op::RW), data));
                }
                if self.shutdown_owed != 0 && (self.rx_buf.is_empty() || self.peer_shut_rcv) {
                    let mut h = self.header(op::SHUTDOWN);
                    h.flags = self.shutdown_owed;
                    self.shutdown_sent |= self.shutdown_owed;
                    self.shutdown_owed = 0;
                    return Some((h, Vec::new()));
                }
                if self.need_credit_update {
                    self.need_credit_update = false;
                    return Some((self.header(op::CREDIT_UPDATE), Vec::new()));
                }
                if self.need_credit_request {
                    self.need_credit_request = false;
                    return Some((self.header(op::CREDIT_REQUEST), Vec::new()));
                }
                None
            }
        }
    }
}
