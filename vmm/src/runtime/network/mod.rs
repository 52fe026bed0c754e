//! The container's network, host side (docs/runtime.md § "Network"): a
//! step of `create` that runs before the VMM starts.
//!
//! Engines build a container's network before calling the runtime: a
//! network namespace with an interface in it (a veth whose peer is on the
//! engine's bridge, with an address, routes and published ports set up by
//! NAT on the host), named in `config.json` as the `network` entry of
//! `linux.namespaces` with a `path`. A VM cannot join a namespace, so
//! capsa carries the interface into the guest, as Kata Containers does:
//!
//! 1. On a short-lived thread that enters that namespace (`setns`), read
//!    the engine's interface: name, MAC, MTU, addresses, routes.
//! 2. Create a TAP there ([`TAP_NAME`], with a virtio-net header), set its
//!    MTU, bring it up.
//! 3. Join the TAP and the interface with tc: an ingress qdisc on both and
//!    a u32 filter on each whose action redirects every frame to the
//!    other's egress ([`tc`]). The engine's bridge, NAT and port publishing
//!    work unchanged: frames the bridge sends to the interface reach the
//!    guest, and the guest's frames leave through the interface.
//! 4. The TAP's descriptor goes to the jailed VMM, which stays in its own
//!    empty network namespace; the guest's virtio-net device gets the
//!    interface's MAC and MTU, and the agent configures the addresses and
//!    routes (`create`'s `network`). The interface itself keeps its MAC:
//!    its peer's bridge learns that MAC from the guest's frames, and the
//!    namespace's own stack never sees a frame again.
//!
//! The TAP is not persistent: it disappears when the VMM, its last holder,
//! exits. If `create` fails after step 3, [`HostNetwork`]'s drop removes
//! the ingress qdisc of the interface (and its filter with it). Leftover
//! tc state from a previous VMM in the same namespace (an engine may reuse
//! a namespace for a pod) is replaced, not an error; a TAP of a VMM that
//! still runs there is ([`NetworkError::InUse`]): two VMs cannot share one
//! interface.
//!
//! A spec without a network namespace asks for the host's network, which a
//! VM cannot share: [`mode`] refuses it. A new namespace (no path), or one
//! with only `lo`: loopback only.

pub mod netlink;
pub mod tc;

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use capsa_agent::protocol::{InterfaceSpec, RouteSpec};
use capsa_devices::virtio::net::Tap;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use netlink::{Netlink, NetlinkError};

/// Name of the TAP that capsa creates in the container's namespace.
pub const TAP_NAME: &str = "tap0_capsa";

/// The message of a host-network spec.
pub const HOST_NETWORK_UNSUPPORTED: &str = "linux.namespaces: no network namespace: \
     sharing the host's network with a VM is not supported (give the container a network \
     namespace, e.g. the engine's default network or --network none)";

/// What the spec's network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// Join the engine's namespace at this path (its interface, if any,
    /// is carried into the guest).
    Join(PathBuf),
    /// A new, empty namespace: loopback only.
    LoopbackOnly,
}

/// Errors of the network step.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The spec shares the host's network.
    #[error("{HOST_NETWORK_UNSUPPORTED}")]
    HostNetwork,
    /// The namespace cannot be entered.
    #[error("network namespace {path}: {source}")]
    Namespace {
        /// `linux.namespaces[network].path`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("network namespace {path}: {what}: {source}")]
    Netlink {
        /// The namespace.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// Why.
        source: NetlinkError,
    },
    /// Another VM container's TAP is in the namespace (containers of one
    /// pod sharing a network namespace).
    #[error(
        "network namespace {path}: another VM container already uses it ({TAP_NAME} exists): \
         VM containers cannot share a network namespace (e.g. in one pod)"
    )]
    InUse {
        /// The namespace.
        path: PathBuf,
    },
    /// The TAP cannot be made.
    #[error("network namespace {path}: {source}")]
    Tap {
        /// The namespace.
        path: PathBuf,
        /// Why.
        source: capsa_devices::virtio::net::TapError,
    },
    /// The thread working in the namespace failed.
    #[error("network setup thread: {0}")]
    Thread(String),
}

/// The spec's network ([`NetworkMode`]); a spec without a network
/// namespace (`--network host`) is [`NetworkError::HostNetwork`].
pub fn mode(spec: &Spec) -> Result<NetworkMode, NetworkError> {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    match ns {
        None => Err(NetworkError::HostNetwork),
        Some(n) => match n.path() {
            Some(p) if !p.as_os_str().is_empty() => Ok(NetworkMode::Join(p.clone())),
            _ => Ok(NetworkMode::LoopbackOnly),
        },
    }
}

/// The guest's side of a [`HostNetwork`], as the VMM process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The TAP's descriptor number in the VMM process (inherited).
    pub tap_fd: i32,
    /// The interface the agent configures.
    pub interface: InterfaceSpec,
}

/// The engine's interface carried into the guest: the TAP's descriptor
/// for the VMM and the interface for the agent. Dropping it before
/// [`HostNetwork::keep`] undoes the tc setup (the TAP goes with the
/// descriptor).
#[derive(Debug)]
pub struct HostNetwork {
    /// The TAP (close-on-exec; the VMM inherits it through `--keep-fd`).
    pub tap: OwnedFd,
    /// What the guest must look like.
    pub interface: InterfaceSpec,
    /// The MAC as bytes (the virtio-net device's config).
    pub mac: [u8; 6],
    netns: PathBuf,
    engine_index: u32,
    armed: bool,
}

impl HostNetwork {
    /// What the VMM process and the agent get (the TAP inherited under
    /// its number here).
    pub fn guest(&self) -> GuestNetwork {
        GuestNetwork {
            tap_fd: std::os::fd::AsRawFd::as_raw_fd(&self.tap),
            interface: self.interface.clone(),
        }
    }

    /// `create` succeeded: the setup stays (it ends with the VMM's TAP and
    /// the engine's namespace).
    pub fn keep(&mut self) {
        self.armed = false;
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let index = self.engine_index;
        let r = in_netns(&self.netns, move || {
            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
            nl.request(
                RouteNetlinkMessage::DelQueueDiscipline(tc::ingress_qdisc(index)),
                0,
            )
            .map_err(|e| e.to_string())
        });
        if let Err(e) = r.and_then(|r| r.map_err(NetworkError::Thread)) {
            tracing::warn!("undoing the network setup in {}: {e}", self.netns.display());
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at
/// `path` (the calling thread's namespaces stay as they are).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetworkError> {
    let ns = std::fs::File::open(path).map_err(|source| NetworkError::Namespace {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetworkError::Namespace {
                    path: path.to_owned(),
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetworkError::Thread("panicked".into()))?
    })
}

/// The interface of the namespace that is carried into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInterface {
    /// ifindex in the namespace.
    pub index: u32,
    /// Name, MAC, MTU, addresses, routes.
    pub spec: InterfaceSpec,
    /// The MAC as bytes.
    pub mac: [u8; 6],
}

fn nl_err(path: &Path, what: &str) -> impl FnOnce(NetlinkError) -> NetworkError {
    let path = path.to_owned();
    let what = what.to_string();
    move |source| NetworkError::Netlink { path, what, source }
}

/// Sets up the namespace at `netns` (steps 1–3 of the module docs).
/// `Ok(None)`: it has no interface but `lo` (loopback only).
pub fn prepare(netns: &Path) -> Result<Option<HostNetwork>, NetworkError> {
    let path = netns.to_owned();
    in_netns(netns, || -> Result<_, NetworkError> {
        let mut nl = Netlink::open().map_err(nl_err(&path, "open"))?;
        let Some(engine) = read_engine_interface(&mut nl).map_err(nl_err(&path, "read"))? else {
            return Ok(None);
        };
        // The TAP lives as long as a VMM holds it: one here is a live VM's.
        if link_index(&mut nl, TAP_NAME).is_ok() {
            return Err(NetworkError::InUse { path: path.clone() });
        }
        let tap = Tap::create(TAP_NAME).map_err(|source| NetworkError::Tap {
            path: path.clone(),
            source,
        })?;
        let net = HostNetwork {
            tap: tap.into_fd(),
            interface: engine.spec.clone(),
            mac: engine.mac,
            netns: path.clone(),
            engine_index: engine.index,
            armed: true,
        };
        let tap_index = link_index(&mut nl, TAP_NAME).map_err(nl_err(&path, "find the TAP"))?;
        join(&mut nl, engine.index, tap_index, engine.spec.mtu)
            .map_err(|(what, e)| nl_err(&path, &what)(e))?;
        // Moved out to the caller, armed: a failure above dropped it here,
        // which undid the tc setup.
        Ok(Some(net))
    })?
}

/// Brings the TAP up with `mtu` and adds the two redirects (replacing an
/// ingress qdisc left on the engine's interface by an earlier VMM).
fn join(nl: &mut Netlink, engine: u32, tap: u32, mtu: u32) -> Result<(), (String, NetlinkError)> {
    let mut up = LinkMessage::default();
    up.header.index = tap;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    up.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(up), 0)
        .map_err(|e| ("bring the TAP up".to_string(), e))?;
    // Stale state from an earlier VMM in a reused namespace: ENOENT or
    // EINVAL when there is none.
    let _ = nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(tc::ingress_qdisc(engine)),
        0,
    );
    for (index, what) in [(engine, "engine interface"), (tap, "TAP")] {
        nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(tc::ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| (format!("add an ingress qdisc to the {what}"), e))?;
    }
    for (from, to, what) in [
        (engine, tap, "engine interface → TAP"),
        (tap, engine, "TAP → engine interface"),
    ] {
        nl.request(
            RouteNetlinkMessage::NewTrafficFilter(tc::redirect_filter(from, to)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| (format!("add the redirect {what}"), e))?;
    }
    Ok(())
}

fn link_index(nl: &mut Netlink, name: &str) -> Result<u32, NetlinkError> {
    for l in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        if let RouteNetlinkMessage::NewLink(l) = l {
            if l.attributes
                .contains(&LinkAttribute::IfName(name.to_string()))
            {
                return Ok(l.header.index);
            }
        }
    }
    Err(NetlinkError::Refused(libc::ENODEV))
}

/// The interface to carry: the one named `eth0` if there is one, else the
/// first that is not loopback (nor a TAP of capsa's). Others are left
/// alone (logged).
fn read_engine_interface(nl: &mut Netlink) -> Result<Option<EngineInterface>, NetlinkError> {
    let mut candidates = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        if l.header.flags.contains(LinkFlags::Loopback) {
            continue;
        }
        let mut name = String::new();
        let mut mac = None;
        let mut mtu = 1500;
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
                }
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        let Some(mac) = mac else {
            continue;
        };
        if name == TAP_NAME {
            continue;
        }
        candidates.push((l.header.index, name, mac, mtu));
    }
    let chosen = candidates
        .iter()
        .position(|c| c.1 == "eth0")
        .or(if candidates.is_empty() { None } else { Some(0) });
    let Some(i) = chosen else {
        return Ok(None);
    };
    let (index, name, mac, mtu) = candidates.swap_remove(i);
    for c in &candidates {
        tracing::warn!(
            "network: interface {} is not carried into the VM (only one is)",
            c.1
        );
    }
    let addresses = read_addresses(nl, index)?;
    let routes = read_routes(nl, index)?;
    Ok(Some(EngineInterface {
        index,
        mac,
        spec: InterfaceSpec {
            name,
            mac: mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            mtu,
            addresses,
            routes,
        },
    }))
}

/// Global addresses of link `index` (`ip addr`), as `ADDRESS/PREFIX`;
/// link-local and host-scope ones are the guest kernel's own business.
fn read_addresses(nl: &mut Netlink, index: u32) -> Result<Vec<String>, NetlinkError> {
    let mut out = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if a.header.index != index || a.header.scope != AddressScope::Universe {
            continue;
        }
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            out.push(format!("{ip}/{}", a.header.prefix_len));
        }
    }
    Ok(out)
}

/// Routes of the main table through link `index` (`ip route`, `ip -6
/// route`) that the guest does not make by itself: not those the kernel
/// adds for an address (`proto kernel`), no multicast or local ones.
fn read_routes(nl: &mut Netlink, index: u32) -> Result<Vec<RouteSpec>, NetlinkError> {
    let mut out = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))? {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if let Some(route) = route_spec(&r, index) {
            out.push(route);
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The route to carry, if `r` is one through link `index`.
pub fn route_spec(r: &RouteMessage, index: u32) -> Option<RouteSpec> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || r.header.kind != RouteType::Unicast
        || r.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut oif = None;
    let mut destination = None;
    let mut gateway = None;
    let mut metric = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => destination = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let destination = match (destination, r.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
        (None, AddressFamily::Inet6) => IpAddr::from([0u16; 8]),
        _ => return None,
    };
    if let IpAddr::V6(d) = destination {
        // Link-local and multicast routes the guest kernel makes itself.
        if d.segments()[0] & 0xffc0 == 0xfe80 || d.segments()[0] & 0xff00 == 0xff00 {
            return None;
        }
    }
    Some(RouteSpec {
        destination: format!("{destination}/{}", r.header.destination_prefix_length),
        gateway: gateway.map(|g| g.to_string()),
        metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    #[test]
    fn modes() {
        let s = spec(json!([{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]));
        assert_eq!(mode(&s).unwrap(), NetworkMode::Join("/run/netns/x".into()));
        let s = spec(json!([{"type": "network"}]));
        assert_eq!(mode(&s).unwrap(), NetworkMode::LoopbackOnly);
        let s = spec(json!([{"type": "pid"}, {"type": "mount"}]));
        let e = mode(&s).unwrap_err().to_string();
        assert!(
            e.contains("sharing the host's network with a VM is not supported"),
            "{e}"
        );
        let s: Spec = serde_json::from_value(json!({"ociVersion": "1.0.2"})).unwrap();
        assert!(matches!(mode(&s), Err(NetworkError::HostNetwork)));
    }

    #[test]
    fn routes_that_are_carried() {
        let route = |family, dst: Option<RouteAddress>, len, proto, gw: Option<RouteAddress>| {
            let mut r = RouteMessage::default();
            r.header.address_family = family;
            r.header.destination_prefix_length = len;
            r.header.table = RouteHeader::RT_TABLE_MAIN;
            r.header.kind = RouteType::Unicast;
            r.header.protocol = proto;
            if let Some(d) = dst {
                r.attributes.push(RouteAttribute::Destination(d));
            }
            if let Some(g) = gw {
                r.attributes.push(RouteAttribute::Gateway(g));
            }
            r.attributes.push(RouteAttribute::Oif(2));
            r
        };
        let default = route(
            AddressFamily::Inet,
            None,
            0,
            RouteProtocol::Boot,
            Some(RouteAddress::Inet([10, 88, 0, 1].into())),
        );
        assert_eq!(
            route_spec(&default, 2),
            Some(RouteSpec {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.88.0.1".into()),
                metric: None
            })
        );
        assert_eq!(route_spec(&default, 3), None);
        let prefix = route(
            AddressFamily::Inet,
            Some(RouteAddress::Inet([10, 88, 0, 0].into())),
            16,
            RouteProtocol::Kernel,
            None,
        );
        assert_eq!(route_spec(&prefix, 2), None);
        let ll = route(
            AddressFamily::Inet6,
            Some(RouteAddress::Inet6("fe80::".parse().unwrap())),
            64,
            RouteProtocol::Boot,
            None,
        );
        assert_eq!(route_spec(&ll, 2), None);
        let v6 = route(
            AddressFamily::Inet6,
            None,
            0,
            RouteProtocol::Ra,
            Some(RouteAddress::Inet6("fd00::1".parse().unwrap())),
        );
        assert_eq!(route_spec(&v6, 2).unwrap().destination, "::/0");
    }

    /// Namespaces made by the test itself (`ip netns add`), removed on drop.
    struct TestNetns(Vec<String>);
    impl Drop for TestNetns {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", n])
                    .status();
            }
        }
    }

    fn ip(args: &[&str]) {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    /// An ARP request "who has `target`" from `mac`/`ip`, behind a zero
    /// virtio-net header, as the guest would send it.
    fn arp_request(mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; capsa_devices::virtio::net::VNET_HDR_LEN];
        f.extend([0xff; 6]);
        f.extend(mac);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend(mac);
        f.extend(sender);
        f.extend([0; 6]);
        f.extend(target);
        f.resize(f.len() + 18, 0);
        f
    }

    /// An "engine" namespace with `eth0` (a veth: MAC 02:42:0a:fa:07:02,
    /// MTU 1400, 10.250.7.2/24, fd00:7::2/64, default route via
    /// 10.250.7.1) whose peer, 10.250.7.1, sits in a "bridge" namespace.
    /// Returns the namespaces (removed on drop), the engine namespace's
    /// name and path.
    fn engine_with_peer() -> (TestNetns, String, PathBuf) {
        let tag = std::process::id();
        let (engine, bridge) = (format!("capsa-t-e{tag}"), format!("capsa-t-b{tag}"));
        let ns = TestNetns(vec![engine.clone(), bridge.clone()]);
        ip(&["netns", "add", &engine]);
        ip(&["netns", "add", &bridge]);
        let veth = format!("cv{tag}");
        ip(&[
            "-n", &bridge, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &engine,
        ]);
        ip(&["-n", &bridge, "addr", "add", "10.250.7.1/24", "dev", &veth]);
        ip(&["-n", &bridge, "link", "set", &veth, "up"]);
        ip(&[
            "-n",
            &engine,
            "link",
            "set",
            "eth0",
            "address",
            "02:42:0a:fa:07:02",
            "mtu",
            "1400",
            "up",
        ]);
        ip(&["-n", &engine, "addr", "add", "10.250.7.2/24", "dev", "eth0"]);
        ip(&[
            "-n",
            &engine,
            "addr",
            "add",
            "fd00:7::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&[
            "-n",
            &engine,
            "route",
            "add",
            "default",
            "via",
            "10.250.7.1",
        ]);
        let path = PathBuf::from(format!("/run/netns/{engine}"));

        (ns, engine, path)
    }

    /// Reads the TAP until an ARP reply (op 2) to `mac` comes (at most
    /// 5 s); returns its frame without the virtio-net header.
    fn await_arp_reply(tap: &OwnedFd, mac: [u8; 6]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match nix::unistd::read(tap, &mut buf) {
                Ok(n) => {
                    let f = &buf[capsa_devices::virtio::net::VNET_HDR_LEN..n];
                    if f.len() >= 22 && f[12..14] == [0x08, 0x06] && f[21] == 2 && f[..6] == mac {
                        return f.to_vec();
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no ARP reply through the TAP"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("read TAP: {e}"),
            }
        }
    }

    /// The whole host side in namespaces of the test's own
    /// ([`engine_with_peer`]): `prepare` reads the interface, and a
    /// frame written to the TAP (as the VMM writes the guest's) crosses to
    /// the peer, whose ARP answer comes back through the TAP; dropping
    /// the unkept setup removes the tc state.
    #[test]
    fn plumbing_in_test_namespaces() {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "this test needs root (ip netns)"
        );
        let (_ns, engine, path) = engine_with_peer();

        let mut net = prepare(&path).unwrap().expect("an interface");
        let i = &net.interface;
        assert_eq!(
            (i.name.as_str(), i.mac.as_str(), i.mtu),
            ("eth0", "02:42:0a:fa:07:02", 1400)
        );
        assert!(i.addresses.contains(&"10.250.7.2/24".to_string()), "{i:?}");
        assert!(i.addresses.contains(&"fd00:7::2/64".to_string()), "{i:?}");
        assert_eq!(
            i.routes,
            [RouteSpec {
                destination: "0.0.0.0/0".into(),
                gateway: Some("10.250.7.1".into()),
                metric: None
            }]
        );
        assert_eq!(net.mac, [0x02, 0x42, 0x0a, 0xfa, 0x07, 0x02]);

        // Guest → TAP → eth0 → peer; the peer's ARP reply → eth0 → TAP.
        let frame = arp_request(net.mac, [10, 250, 7, 2], [10, 250, 7, 1]);
        let n = nix::unistd::write(&net.tap, &frame).unwrap();
        assert_eq!(n, frame.len());
        let reply = await_arp_reply(&net.tap, net.mac);
        assert_eq!(&reply[28..32], &[10, 250, 7, 1], "the peer answered");

        // A second `prepare` in the same namespace (a reused pod
        // namespace) while the first is kept: the stale qdisc is replaced.
        net.keep();
        // While its VMM holds the TAP, the namespace is taken.
        let busy = prepare(&path).unwrap_err();
        assert!(matches!(busy, NetworkError::InUse { .. }), "{busy}");
        drop(net);
        let again = prepare(&path).unwrap().expect("an interface");
        // Not kept: dropping it removes the ingress qdisc from eth0.
        drop(again);
        let out = std::process::Command::new("tc")
            .args(["-n", &engine, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("ingress"), "{text}");
    }

    #[test]
    fn a_namespace_with_only_lo_is_loopback_only() {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "this test needs root (ip netns)"
        );
        let name = format!("capsa-t-lo{}", std::process::id());
        let _ns = TestNetns(vec![name.clone()]);
        ip(&["netns", "add", &name]);
        assert!(prepare(Path::new(&format!("/run/netns/{name}")))
            .unwrap()
            .is_none());
        let e = prepare(Path::new("/run/netns/capsa-no-such-ns")).unwrap_err();
        assert!(e.to_string().contains("capsa-no-such-ns"), "{e}");
    }
}
