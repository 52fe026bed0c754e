//! The vsock backend's connection state machine ([`Muxer`] and its
//! [`csm`](crate::virtio::vsock::csm)) driven by the input as a sequence of
//! operations of both sides: the guest's packets (REQUEST, RESPONSE, RW,
//! CREDIT_UPDATE/REQUEST, SHUTDOWN, RST, with any ports, credit and
//! flags), the guest taking packets into buffers of any room, and a real
//! host peer — clients of the listening socket with their `CONNECT` line,
//! and a host service on `<uds>_1024` that accepts the guest's connects —
//! writing, reading, shutting down and closing. The harness plays the
//! event loop: it hands socket readiness of its choosing to the muxer.
//!
//! Checked after every operation: a packet for the guest comes from the
//! host CID to the guest's, only RW packets carry payload (`len` is set
//! when the packet is written into the buffer) and the payload fits the
//! room the guest gave; the connection table stays
//! within [`MAX_CONNECTIONS`].
//!
//! The input is a sequence of operations, each an opcode byte then its
//! arguments (see [`Op`]); at most [`MAX_OPS`] are run.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::guest::Input;
use super::unique_socket_path;
use crate::virtio::vsock::muxer::{Muxer, MAX_CONNECTIONS};
use crate::virtio::vsock::packet::VsockHeader;
use crate::virtio::vsock::{op, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};

/// Most operations per input.
pub const MAX_OPS: usize = 256;
/// Most host-side sockets the harness holds (each connect to the muxer's
/// listener is a blocking `connect(2)`: fewer than its backlog).
const MAX_PEERS: usize = 16;
/// The guest's CID.
const GUEST_CID: u64 = 3;
/// The port of the host service the guest can connect to.
const SERVICE_PORT: u32 = 1024;

/// The operations, by opcode (`byte % 10`).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// 0, 1: the guest sends a packet.
    GuestPacket,
    /// 2: the guest offers an RX buffer.
    GuestRx,
    /// 3: a host client connects to the listener (and writes a line).
    HostConnect,
    /// 4: readiness of one of the muxer's sockets.
    Event,
    /// 5: the host service accepts a guest connect.
    ServiceAccept,
    /// 6: a host socket writes.
    HostWrite,
    /// 7: a host socket reads.
    HostRead,
    /// 8: a host socket shuts down or closes.
    HostClose,
    /// 9: time passes, the device resets, the driver comes and goes.
    Control,
}

impl Op {
    fn from_byte(b: u8) -> Op {
        match b % 10 {
            0 | 1 => Op::GuestPacket,
            2 => Op::GuestRx,
            3 => Op::HostConnect,
            4 => Op::Event,
            5 => Op::ServiceAccept,
            6 => Op::HostWrite,
            7 => Op::HostRead,
            8 => Op::HostClose,
            _ => Op::Control,
        }
    }
}

/// The harness's state: the muxer and the host side.
struct Harness {
    muxer: Muxer,
    uds: PathBuf,
    service_path: PathBuf,
    service: UnixListener,
    peers: Vec<UnixStream>,
    /// (host port, guest port) of the packets the guest received: the
    /// guest answers on them.
    seen: Vec<(u32, u32)>,
}

/// Runs the operations of `data`.
pub fn vsock_conn(data: &[u8]) {
    let Some(mut h) = Harness::new() else {
        return;
    };
    let mut input = Input::new(data);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        h.step(&mut input);
        h.muxer.close_graveyard();
        assert!(h.muxer.connection_count() <= MAX_CONNECTIONS);
    }
    h.finish();
}

impl Harness {
    fn new() -> Option<Harness> {
        let uds = unique_socket_path("conn");
        let mut service_path = uds.clone().into_os_string();
        service_path.push(format!("_{SERVICE_PORT}"));
        let service_path = PathBuf::from(service_path);
        let service = UnixListener::bind(&service_path).ok()?;
        // A small backlog, as a busy host service may have: a guest that
        // connects more often than the service accepts must not block.
        // SAFETY: listen(2) on a socket we own; no memory is passed.
        unsafe { libc::listen(service.as_raw_fd(), 1) };
        service.set_nonblocking(true).ok()?;
        let mut muxer = Muxer::new(GUEST_CID, &uds).ok()?;
        muxer.set_driver_ready(true);
        Some(Harness {
            muxer,
            uds,
            service_path,
            service,
            peers: Vec::new(),
            seen: Vec::new(),
        })
    }

    fn finish(self) {
        let _ = std::fs::remove_file(&self.uds);
        let _ = std::fs::remove_file(&self.service_path);
    }

    fn step(&mut self, input: &mut Input) {
        match Op::from_byte(input.byte()) {
            Op::GuestPacket => self.guest_packet(input),
            Op::GuestRx => self.guest_rx(input),
            Op::HostConnect => self.host_connect(input),
            Op::Event => self.event(input),
            Op::ServiceAccept => {
                if self.peers.len() < MAX_PEERS {
                    if let Ok((s, _)) = self.service.accept() {
                        let _ = s.set_nonblocking(true);
                        self.peers.push(s);
                    }
                }
            }
            Op::HostWrite => self.host_write(input),
            Op::HostRead => {
                let mut buf = vec![0u8; 1 << (input.byte() % 17)];
                if let Some(p) = self.peer(input) {
                    let _ = p.read(&mut buf);
                }
            }
            Op::HostClose => self.host_close(input),
            Op::Control => self.control(input),
        }
    }

    fn peer(&mut self, input: &mut Input) -> Option<&mut UnixStream> {
        let i = usize::from(input.byte());
        let n = self.peers.len();
        (n > 0).then(|| &mut self.peers[i % n])
    }

    /// Header: a selector byte, then what it asks for (module docs of
    /// the vsock device: ports, op, flags, credit).
    fn guest_packet(&mut self, input: &mut Input) {
        let sel = input.byte();
        let (src_cid, dst_cid) = if sel & 1 != 0 {
            (input.u64(), input.u64())
        } else {
            (GUEST_CID, HOST_CID)
        };
        let type_ = if sel & 2 != 0 {
            input.u16()
        } else {
            TYPE_STREAM
        };
        let (src_port, dst_port) = match (sel >> 2) & 3 {
            0 => (1000 + u32::from(input.byte() % 4), SERVICE_PORT),
            1 if !self.seen.is_empty() => {
                let (host, guest) = self.seen[usize::from(input.byte()) % self.seen.len()];
                (guest, host)
            }
            2 => (1000 + u32::from(input.byte() % 4), SERVICE_PORT + 1),
            _ => (input.u32(), input.u32()),
        };
        let op = u16::from(input.byte() % 9);
        let flags = u32::from(input.byte());
        let buf_alloc = match input.byte() % 4 {
            0 => 0,
            1 => 256 << 10,
            2 => u32::from(input.u16()),
            _ => input.u32(),
        };
        let fwd_cnt = match input.byte() % 3 {
            0 => 0,
            1 => u32::from(input.u16()),
            _ => input.u32(),
        };
        let payload: Vec<u8> = if op == op::RW {
            let n = match sel >> 6 {
                0 => usize::from(input.byte()),
                1 => usize::from(input.u16()),
                _ => MAX_PKT_PAYLOAD,
            };
            let mut p = input.bytes(n).to_vec();
            p.resize(n, 0);
            p
        } else {
            Vec::new()
        };
        let h = VsockHeader {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len: payload.len() as u32,
            type_,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        self.muxer.send_pkt(&h, &payload);
    }

    fn guest_rx(&mut self, input: &mut Input) {
        let room = match input.byte() % 4 {
            0 => 0,
            1 => usize::from(input.byte()),
            2 => usize::from(input.u16()),
            _ => MAX_PKT_PAYLOAD,
        };
        let Some((h, payload)) = self.muxer.recv_pkt(room) else {
            return;
        };
        assert!(payload.len() <= room, "payload beyond the buffer's room");
        // `len` is filled in by `packet::write_rx`; only data has payload.
        assert!(
            h.op == op::RW || payload.is_empty(),
            "payload on op {}",
            h.op
        );
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(h.type_, TYPE_STREAM);
        if self.seen.len() < 32 && h.op != op::RST {
            self.seen.push((h.src_port, h.dst_port));
        }
    }

    fn host_connect(&mut self, input: &mut Input) {
        let sel = input.byte();
        if self.peers.len() >= MAX_PEERS {
            return;
        }
        let Ok(mut s) = UnixStream::connect(&self.uds) else {
            return;
        };
        let _ = s.set_nonblocking(true);
        let line: Vec<u8> = match sel % 4 {
            0 => b"CONNECT 1024\n".to_vec(),
            1 => format!("CONNECT {}\n", input.u32()).into_bytes(),
            2 => {
                let n = usize::from(input.byte() % 48);
                input.bytes(n).to_vec()
            }
            _ => Vec::new(),
        };
        let _ = s.write_all(&line);
        self.peers.push(s);
        let listener = self.muxer.listener().as_raw_fd();
        self.muxer.handle_event(listener, EventSet::IN);
    }

    fn event(&mut self, input: &mut Input) {
        let i = usize::from(input.byte());
        let bits = input.byte();
        let fds = self.muxer.socket_fds();
        if fds.is_empty() {
            return;
        }
        let mut set = EventSet::empty();
        for (bit, s) in [
            EventSet::IN,
            EventSet::OUT,
            EventSet::HANG_UP,
            EventSet::READ_HANG_UP,
            EventSet::ERROR,
        ]
        .into_iter()
        .enumerate()
        {
            if bits & (1 << bit) != 0 {
                set |= s;
            }
        }
        self.muxer.handle_event(fds[i % fds.len()], set);
    }

    fn host_write(&mut self, input: &mut Input) {
        let sel = input.byte();
        let data: Vec<u8> = if sel & 1 != 0 {
            // A burst that fills socket buffers and the guest's credit.
            vec![0x5a; usize::from(sel) << 10]
        } else {
            let n = usize::from(input.byte());
            input.bytes(n).to_vec()
        };
        if let Some(p) = self.peer(input) {
            let _ = p.write(&data);
        }
    }

    fn host_close(&mut self, input: &mut Input) {
        let how = input.byte() % 4;
        let i = usize::from(input.byte());
        if self.peers.is_empty() {
            return;
        }
        let i = i % self.peers.len();
        match how {
            0 => drop(self.peers.swap_remove(i)),
            1 => drop(self.peers[i].shutdown(Shutdown::Write)),
            2 => drop(self.peers[i].shutdown(Shutdown::Read)),
            _ => drop(self.peers[i].shutdown(Shutdown::Both)),
        }
    }

    fn control(&mut self, input: &mut Input) {
        match input.byte() % 5 {
            0 => self.muxer.expire(Instant::now()),
            1 => {
                let later = Duration::from_secs(u64::from(input.byte()));
                self.muxer.expire(Instant::now() + later);
            }
            2 => self.muxer.reset(),
            3 => self.muxer.set_driver_ready(true),
            _ => self.muxer.set_driver_ready(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Rng;
    use super::*;

    /// One operation with arguments that hit the interesting cases often:
    /// CIDs and type right, ports known, ops and credit from the field.
    fn operation(rng: &mut Rng, out: &mut Vec<u8>) {
        let opcode = rng.below(10) as u8;
        out.push(opcode);
        match Op::from_byte(opcode) {
            Op::GuestPacket => {
                let ports = [0u8, 1, 1, 2][rng.below(4) as usize] << 2;
                let size = [0u8, 1][rng.below(2) as usize] << 6;
                out.push(ports | size);
                out.push(rng.below(4) as u8);
                // op: REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_*.
                out.push([1u8, 2, 3, 4, 5, 5, 5, 6, 7][rng.below(9) as usize]);
                out.push(rng.below(4) as u8);
                out.push(1);
                out.push(rng.below(3) as u8);
                out.extend(rng.bytes(4));
                let n = rng.below(300) as usize;
                out.extend(rng.bytes(n));
            }
            _ => out.extend(rng.bytes(4)),
        }
    }

    #[test]
    fn seeded_fuzz_vsock_conn() {
        let mut rng = Rng(0x5eed_0c5a_0c0a);
        let start = std::time::Instant::now();
        let n = 300;
        for _ in 0..n {
            let mut d = Vec::new();
            for _ in 0..rng.below(60) {
                operation(&mut rng, &mut d);
            }
            vsock_conn(&d);
        }
        eprintln!(
            "seeded fuzz: {n} vsock_conn inputs in {:?}",
            start.elapsed()
        );
    }

    /// The harness reaches an established guest-initiated connection and
    /// moves bytes both ways through it.
    #[test]
    fn vsock_conn_reaches_an_established_connection() {
        let mut h = Harness::new().unwrap();
        // Guest REQUEST 1000 -> 1024, with credit.
        let request = [0u8, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0];
        let mut input = Input::new(&request);
        h.step(&mut input);
        h.step(&mut Input::new(&[5]));
        assert_eq!(h.peers.len(), 1, "the service accepted the guest's connect");
        assert_eq!(h.muxer.connection_count(), 1);
        // The RESPONSE reaches the guest.
        h.step(&mut Input::new(&[2, 3]));
        assert_eq!(h.seen, vec![(SERVICE_PORT, 1000)]);
        // The service writes; readiness; the guest receives the bytes.
        h.peers[0].write_all(b"hello").unwrap();
        let fds = h.muxer.socket_fds();
        h.muxer.handle_event(fds[0], EventSet::IN);
        let (hdr, payload) = h.muxer.recv_pkt(4096).unwrap();
        assert_eq!((hdr.op, payload.as_slice()), (op::RW, &b"hello"[..]));
        h.finish();
    }
}
