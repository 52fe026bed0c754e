//! The container's network in the guest: `create`'s [`NetworkSpec`]
//! checked into a [`NetworkPlan`], and the plan turned into rtnetlink
//! requests (`rtnetlink(7)`) that the guest sends in **one** `sendmsg`:
//! guest system calls are slow (guest kernel mode may be emulated), so
//! the whole configuration is one batch, answered by one ACK per request.
//!
//! Order of the batch: `lo` up; for each interface: name, MAC, MTU and up
//! in one `RTM_NEWLINK`; its addresses (`RTM_NEWADDR`, IPv6 without
//! duplicate address detection: the host side's address is the same one
//! and is not on this link); then its routes (`RTM_NEWROUTE`, after the
//! addresses whose prefix routes make the gateways reachable).

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::error::AgentError;
use crate::protocol::{InterfaceSpec, NetworkSpec};

/// Interfaces one container may have (capsa attaches one virtio-net
/// device).
pub const MAX_INTERFACES: usize = 1;
/// Addresses and routes per interface.
pub const MAX_ENTRIES: usize = 64;
/// ifindex of `lo`: the first device the kernel registers.
pub const LOOPBACK_INDEX: u32 = 1;

/// A checked interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Name to give it in the guest.
    pub name: String,
    /// Its MAC address: how the guest device is found.
    pub mac: [u8; 6],
    /// MTU in bytes.
    pub mtu: u32,
    /// (address, prefix length).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes.
    pub routes: Vec<RoutePlan>,
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination network.
    pub destination: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop (same family).
    pub gateway: Option<IpAddr>,
    /// Metric.
    pub metric: Option<u32>,
}

/// The checked network of a container; empty: loopback only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The interfaces.
    pub interfaces: Vec<InterfacePlan>,
}

fn invalid(field: String, msg: impl std::fmt::Display) -> AgentError {
    AgentError::InvalidParams(format!("{field}: {msg}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses `ADDRESS/PREFIX`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

impl NetworkPlan {
    /// Checks `spec`; every error names the field (`network.interfaces[0].mac`).
    pub fn parse(spec: Option<&NetworkSpec>) -> Result<Self, AgentError> {
        let Some(spec) = spec else {
            return Ok(Self::default());
        };
        if spec.interfaces.len() > MAX_INTERFACES {
            return Err(invalid(
                "network.interfaces".into(),
                format!("at most {MAX_INTERFACES} interface(s)"),
            ));
        }
        let interfaces = spec
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, s)| parse_interface(&format!("network.interfaces[{i}]"), s))
            .collect::<Result<_, _>>()?;
        Ok(Self { interfaces })
    }
}

fn parse_interface(at: &str, s: &InterfaceSpec) -> Result<InterfacePlan, AgentError> {
    let name_ok = !s.name.is_empty()
        && s.name.len() <= 15
        && s.name != "."
        && s.name != ".."
        && !s
            .name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if !name_ok {
        return Err(invalid(format!("{at}.name"), "not a valid interface name"));
    }
    let mac = parse_mac(&s.mac).ok_or_else(|| invalid(format!("{at}.mac"), "not a MAC address"))?;
    if !(68..=65535).contains(&s.mtu) {
        return Err(invalid(format!("{at}.mtu"), "must be 68 to 65535"));
    }
    if s.addresses.len() > MAX_ENTRIES || s.routes.len() > MAX_ENTRIES {
        return Err(invalid(
            at.to_string(),
            format!("at most {MAX_ENTRIES} addresses and {MAX_ENTRIES} routes"),
        ));
    }
    let addresses = s
        .addresses
        .iter()
        .enumerate()
        .map(|(j, a)| {
            parse_cidr(a)
                .ok_or_else(|| invalid(format!("{at}.addresses[{j}]"), "not ADDRESS/PREFIX"))
        })
        .collect::<Result<_, _>>()?;
    let routes = s
        .routes
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let field = format!("{at}.routes[{j}]");
            let (destination, prefix_len) = parse_cidr(&r.destination)
                .ok_or_else(|| invalid(format!("{field}.destination"), "not ADDRESS/PREFIX"))?;
            let gateway = match &r.gateway {
                Some(g) => {
                    let g: IpAddr = g
                        .parse()
                        .map_err(|_| invalid(format!("{field}.gateway"), "not an IP address"))?;
                    if g.is_ipv4() != destination.is_ipv4() {
                        return Err(invalid(
                            format!("{field}.gateway"),
                            "not of the destination's family",
                        ));
                    }
                    Some(g)
                }
                None => None,
            };
            Ok(RoutePlan {
                destination,
                prefix_len,
                gateway,
                metric: r.metric,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(InterfacePlan {
        name: s.name.clone(),
        mac,
        mtu: s.mtu,
        addresses,
        routes,
    })
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// `RTM_NEWLINK` bringing link `index` up, with `attributes`.
fn link_up(index: u32, attributes: Vec<LinkAttribute>) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = attributes;
    RouteNetlinkMessage::NewLink(m)
}

/// One rtnetlink request: the message, the netlink flags it needs beyond
/// `NLM_F_REQUEST | NLM_F_ACK`, and what it does (for errors).
pub type Request = (RouteNetlinkMessage, u16, String);

/// The requests configuring `iface` as guest link `index` whose current
/// name is `current_name`.
fn interface_requests(iface: &InterfacePlan, index: u32, current_name: &str) -> Vec<Request> {
    let mut out = Vec::new();
    // The name and MAC change while the link is down; the kernel applies
    // them before the flags of the same request.
    let mut attrs = vec![
        LinkAttribute::Address(iface.mac.to_vec()),
        LinkAttribute::Mtu(iface.mtu),
    ];
    if iface.name != current_name {
        attrs.push(LinkAttribute::IfName(iface.name.clone()));
    }
    out.push((
        link_up(index, attrs),
        0,
        format!(
            "set link {current_name} (MAC, MTU {}, name {}) up",
            iface.mtu, iface.name
        ),
    ));
    for &(ip, prefix_len) in &iface.addresses {
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = prefix_len;
        m.header.scope = AddressScope::Universe;
        m.header.index = index;
        if ip.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(ip));
        } else {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        m.attributes.push(AddressAttribute::Address(ip));
        out.push((
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add address {ip}/{prefix_len} on {}", iface.name),
        ));
    }
    for r in &iface.routes {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&r.destination);
        m.header.destination_prefix_length = r.prefix_len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if r.prefix_len > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_address(r.destination)));
        }
        if let Some(g) = r.gateway {
            m.attributes.push(RouteAttribute::Gateway(route_address(g)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        if let Some(metric) = r.metric {
            m.attributes.push(RouteAttribute::Priority(metric));
        }
        let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        out.push((
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            format!(
                "add route {}/{}{via} dev {}",
                r.destination, r.prefix_len, iface.name
            ),
        ));
    }
    out
}

/// A guest link as a link dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLink {
    /// ifindex.
    pub index: u32,
    /// Current name.
    pub name: String,
    /// MAC address (empty for `lo`).
    pub mac: Vec<u8>,
}

impl NetworkPlan {
    /// The requests for the whole configuration, given the guest's links
    /// (from [`link_dump_request`]); errors when an interface's MAC is on
    /// no guest link.
    pub fn requests(&self, links: &[GuestLink]) -> Result<Vec<Request>, AgentError> {
        let mut out = vec![(
            link_up(LOOPBACK_INDEX, Vec::new()),
            0,
            "set link lo up".into(),
        )];
        for (i, iface) in self.interfaces.iter().enumerate() {
            let link = links
                .iter()
                .find(|l| l.mac == iface.mac)
                .ok_or_else(|| AgentError::Os {
                    what: format!(
                        "network.interfaces[{i}]: no guest network device has MAC {}",
                        format_mac(&iface.mac)
                    ),
                    errno: libc::ENODEV,
                })?;
            out.extend(interface_requests(iface, link.index, &link.name));
        }
        Ok(out)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The request dumping the guest's links.
pub fn link_dump_request() -> Request {
    (
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
        "dump links".into(),
    )
}

/// Serializes `requests` back to back (one `sendmsg`), numbered from
/// `first_seq`, each with `NLM_F_REQUEST | NLM_F_ACK` and its own flags.
pub fn encode(requests: Vec<Request>, first_seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    for (i, (msg, flags, _)) in requests.into_iter().enumerate() {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = first_seq.wrapping_add(i as u32);
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let at = buf.len();
        buf.resize(at + m.buffer_len(), 0);
        m.serialize(&mut buf[at..]);
    }
    buf
}

/// What one received datagram said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replies {
    /// Links of a dump.
    pub links: Vec<GuestLink>,
    /// Sequence numbers acknowledged with success.
    pub acked: Vec<u32>,
    /// `(sequence number, errno)` of failed requests.
    pub failed: Vec<(u32, i32)>,
    /// A dump ended (`NLMSG_DONE`).
    pub done: bool,
}

/// `NLMSG_ERROR` (`include/uapi/linux/netlink.h`): an ACK when its error is 0.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;
/// `RTM_NEWLINK` (`include/uapi/linux/rtnetlink.h`): one link of a dump.
const RTM_NEWLINK: u16 = 16;
/// `IFLA_ADDRESS`, `IFLA_IFNAME` (`include/uapi/linux/if_link.h`).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
/// `sizeof(struct nlmsghdr)`, `sizeof(struct ifinfomsg)`.
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The link of an `RTM_NEWLINK` payload (`struct ifinfomsg` + attributes).
fn parse_link(p: &[u8]) -> Option<GuestLink> {
    if p.len() < IFINFOMSG_LEN {
        return None;
    }
    let mut link = GuestLink {
        index: u32_at(p, 4),
        name: String::new(),
        mac: Vec::new(),
    };
    let mut attrs = &p[IFINFOMSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match u16_at(attrs, 2) {
            IFLA_ADDRESS => link.mac = data.to_vec(),
            IFLA_IFNAME => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                link.name = String::from_utf8_lossy(&data[..end]).into_owned();
            }
            _ => {}
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    Some(link)
}

/// Parses the messages of one datagram from the kernel: ACKs, errors, the
/// end of a dump and the links of a link dump; other messages are
/// skipped. (Parsed by hand: only these few fields are needed, and the
/// agent stays small.)
pub fn parse_replies(mut buf: &[u8]) -> Result<Replies, AgentError> {
    let mut r = Replies::default();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(AgentError::Internal("malformed netlink reply".into()));
        }
        let seq = u32_at(buf, 8);
        let payload = &buf[NLMSG_HDRLEN..len];
        match u16_at(buf, 4) {
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(AgentError::Internal("short netlink error".into()));
                }
                match i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) {
                    0 => r.acked.push(seq),
                    code => r.failed.push((seq, code.saturating_neg())),
                }
            }
            NLMSG_DONE => r.done = true,
            RTM_NEWLINK => r.links.extend(parse_link(payload)),
            _ => {}
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RouteSpec;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            interfaces: vec![InterfaceSpec {
                name: "eth0".into(),
                mac: "02:42:ac:11:00:02".into(),
                mtu: 1500,
                addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
                routes: vec![
                    RouteSpec {
                        destination: "0.0.0.0/0".into(),
                        gateway: Some("10.88.0.1".into()),
                        metric: None,
                    },
                    RouteSpec {
                        destination: "::/0".into(),
                        gateway: Some("fd00::1".into()),
                        metric: Some(1024),
                    },
                ],
            }],
        }
    }

    #[test]
    fn no_network_is_loopback_only() {
        let plan = NetworkPlan::parse(None).unwrap();
        let reqs = plan.requests(&[]).unwrap();
        assert_eq!(reqs.len(), 1);
        let buf = encode(reqs, 7);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        assert_eq!(m.header.sequence_number, 7);
        assert_eq!(m.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload else {
            panic!("not a link message");
        };
        assert_eq!(l.header.index, LOOPBACK_INDEX);
        assert!(l.header.flags.contains(LinkFlags::Up));
    }

    #[test]
    fn a_full_interface_is_one_batch_in_order() {
        let plan = NetworkPlan::parse(Some(&spec())).unwrap();
        let links = [GuestLink {
            index: 2,
            name: "eth0".into(),
            mac: vec![0x02, 0x42, 0xac, 0x11, 0, 2],
        }];
        let reqs = plan.requests(&links).unwrap();
        let buf = encode(reqs, 1);
        // Walk the batch back.
        let mut kinds = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).unwrap();
            let len = m.header.length as usize;
            kinds.push(match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    format!("link {}", l.header.index)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                    format!("addr {} /{}", a.header.index, a.header.prefix_len)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                    format!("route /{}", r.header.destination_prefix_length)
                }
                other => format!("{other:?}"),
            });
            rest = &rest[(len + 3) & !3..];
        }
        assert_eq!(
            kinds,
            [
                "link 1",
                "link 2",
                "addr 2 /16",
                "addr 2 /64",
                "route /0",
                "route /0"
            ]
        );
    }

    #[test]
    fn a_renamed_interface_gets_its_name() {
        let plan = NetworkPlan::parse(Some(&spec())).unwrap();
        let reqs = interface_requests(&plan.interfaces[0], 3, "eth1");
        let RouteNetlinkMessage::NewLink(l) = &reqs[0].0 else {
            panic!()
        };
        assert!(l.attributes.contains(&LinkAttribute::IfName("eth0".into())));
    }

    #[test]
    fn missing_device_and_bad_fields_are_named() {
        let plan = NetworkPlan::parse(Some(&spec())).unwrap();
        let e = plan.requests(&[]).unwrap_err().to_string();
        assert!(e.contains("02:42:ac:11:00:02"), "{e}");
        let bad = |f: &dyn Fn(&mut InterfaceSpec)| {
            let mut s = spec();
            f(&mut s.interfaces[0]);
            NetworkPlan::parse(Some(&s)).unwrap_err().to_string()
        };
        assert!(bad(&|i| i.mac = "02:42".into()).contains("interfaces[0].mac"));
        assert!(bad(&|i| i.name = "a/b".into()).contains("interfaces[0].name"));
        assert!(bad(&|i| i.mtu = 10).contains("interfaces[0].mtu"));
        assert!(bad(&|i| i.addresses.push("10.0.0.1/33".into())).contains("addresses[2]"));
        assert!(
            bad(&|i| i.routes[0].gateway = Some("fd00::1".into())).contains("routes[0].gateway")
        );
        let mut two = spec();
        two.interfaces.push(two.interfaces[0].clone());
        assert!(NetworkPlan::parse(Some(&two)).is_err());
    }

    #[test]
    fn replies_are_parsed() {
        // An ACK (error 0) for seq 3 and an EEXIST for seq 4.
        let mut buf = Vec::new();
        for (seq, code) in [(3u32, 0i32), (4, -libc::EEXIST)] {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]); // the request's header
            buf.extend(m);
        }
        // A link of a dump: ifinfomsg (index 2), IFLA_IFNAME, IFLA_ADDRESS.
        let mut link = Vec::new();
        link.extend_from_slice(&[0u8; 4]);
        link.extend_from_slice(&2i32.to_ne_bytes());
        link.extend_from_slice(&[0u8; 8]);
        link.extend_from_slice(&9u16.to_ne_bytes());
        link.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        link.extend_from_slice(b"eth0\0\0\0\0");
        link.extend_from_slice(&10u16.to_ne_bytes());
        link.extend_from_slice(&IFLA_ADDRESS.to_ne_bytes());
        link.extend_from_slice(&[2, 0x42, 0xac, 0x11, 0, 2, 0, 0]);
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + link.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend(link);
        buf.extend(m);
        let r = parse_replies(&buf).unwrap();
        assert_eq!(
            r.links,
            [GuestLink {
                index: 2,
                name: "eth0".into(),
                mac: vec![2, 0x42, 0xac, 0x11, 0, 2]
            }]
        );
        assert_eq!(r.acked, [3]);
        assert_eq!(r.failed, [(4, libc::EEXIST)]);
        assert!(parse_replies(&[0xff; 20]).is_err());
    }
}
