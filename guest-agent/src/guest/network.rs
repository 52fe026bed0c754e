//! Applying a [`NetworkPlan`] in the guest over an rtnetlink socket:
//! one link dump (only when there is an interface to find by MAC), then
//! the whole configuration in one `sendmsg`; the kernel handles the
//! requests in order during that call and queues one ACK each.

use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use crate::server::network::{encode, link_dump_request, parse_replies, GuestLink, NetworkPlan};
use crate::server::AgentError;

/// Sequence number of the link dump; the configuration requests follow.
const DUMP_SEQ: u32 = 1;
const FIRST_SEQ: u32 = 2;
/// Receive buffer: a dump datagram of a guest's few links, or the ACKs of
/// a batch (an error ACK carries the failed request back).
const RECV_LEN: usize = 32 << 10;

fn io_err(what: &str) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::from_io(format!("network: {what}"), &e)
}

fn links(sock: &Socket, buf: &mut Vec<u8>) -> Result<Vec<GuestLink>, AgentError> {
    sock.send(&encode(vec![link_dump_request()], DUMP_SEQ), 0)
        .map_err(io_err("send link dump"))?;
    let mut links = Vec::new();
    // A dump of a handful of links fits a few datagrams; bounded anyway.
    for _ in 0..64 {
        buf.clear();
        sock.recv(buf, 0).map_err(io_err("receive link dump"))?;
        let r = parse_replies(buf)?;
        links.extend(r.links);
        if let Some((_, errno)) = r.failed.first() {
            return Err(AgentError::Os {
                what: "network: link dump".into(),
                errno: *errno,
            });
        }
        if r.done {
            return Ok(links);
        }
    }
    Err(AgentError::Internal(
        "network: link dump never ended".into(),
    ))
}

/// Brings `lo` up and configures the plan's interfaces.
pub fn configure(plan: &NetworkPlan) -> Result<(), AgentError> {
    let sock = Socket::new(NETLINK_ROUTE).map_err(io_err("netlink socket"))?;
    let mut buf = Vec::with_capacity(RECV_LEN);
    let links = if plan.interfaces.is_empty() {
        Vec::new()
    } else {
        links(&sock, &mut buf)?
    };
    let requests = plan.requests(&links)?;
    let what: Vec<String> = requests.iter().map(|r| r.2.clone()).collect();
    sock.send(&encode(requests, FIRST_SEQ), 0)
        .map_err(io_err("send configuration"))?;
    let mut answered = 0;
    let mut first_error = None;
    while answered < what.len() {
        buf.clear();
        // Every ACK was queued during the send: never wait.
        sock.recv(&mut buf, libc::MSG_DONTWAIT)
            .map_err(io_err("receive acknowledgements"))?;
        let r = parse_replies(&buf)?;
        answered += r.acked.len() + r.failed.len();
        for (seq, errno) in r.failed {
            let i = seq.wrapping_sub(FIRST_SEQ) as usize;
            let req = what.get(i).map_or("?", String::as_str);
            // An address or route the kernel already made is as good.
            if errno == libc::EEXIST {
                crate::agent_log!("network: {req}: already there");
                continue;
            }
            first_error.get_or_insert(AgentError::Os {
                what: format!("network: {req}"),
                errno,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}
