//! A small synchronous rtnetlink client (`rtnetlink(7)`) over
//! `netlink-sys`, with messages from `netlink-packet-route`: one request
//! at a time, answered by its ACK or its dump. No async runtime: `create`
//! runs it on a short-lived thread inside the container's network
//! namespace.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A failed netlink exchange.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket failed.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Refused(i32),
    /// The kernel's answer cannot be parsed.
    #[error("malformed netlink answer: {0}")]
    Malformed(String),
}

impl NetlinkError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused(e) => Some(*e),
            _ => None,
        }
    }
}

/// Receive buffer size: dumps come in datagrams of at most ~32 KiB.
const RECV_LEN: usize = 64 << 10;
/// Datagrams read for one answer before giving up (a dump of a namespace
/// with a handful of interfaces needs a few).
const MAX_DATAGRAMS: usize = 4096;

/// An `NETLINK_ROUTE` socket bound in the calling thread's network
/// namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_LEN),
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Reads datagrams until `f` says the answer to `seq` is complete.
    fn receive(
        &mut self,
        seq: u32,
        mut f: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        for _ in 0..MAX_DATAGRAMS {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0)?;
            let mut rest = &self.buf[..];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    return Err(NetlinkError::Malformed(format!(
                        "message of {len} bytes in {}",
                        rest.len()
                    )));
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                    .map_err(|e| NetlinkError::Malformed(e.to_string()))?;
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if msg.header.sequence_number != seq {
                    continue;
                }
                if f(msg.payload)? {
                    return Ok(());
                }
            }
        }
        Err(NetlinkError::Malformed("answer never ended".into()))
    }

    /// Sends `msg` with `flags` (plus `NLM_F_REQUEST | NLM_F_ACK`) and
    /// waits for its ACK.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(code) => Err(NetlinkError::Refused(-code.get())),
            },
            _ => Ok(false),
        })
    }

    /// Dumps the objects `msg` asks for (`NLM_F_DUMP`).
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(code) => Err(NetlinkError::Refused(-code.get())),
            },
            _ => Ok(false),
        })?;
        Ok(out)
    }
}
