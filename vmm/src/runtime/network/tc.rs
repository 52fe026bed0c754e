//! The traffic-control messages that join two interfaces of one network
//! namespace (Kata Containers' "tcfilter" model, `tc-mirred(8)`): an
//! ingress qdisc on each, and on each a u32 filter matching every frame
//! whose action is "mirred egress redirect" to the other. A frame that
//! arrives on one leaves through the other, unchanged, before the
//! namespace's own stack sees it.
//!
//! As `tc` says it, for `A` → `B` (and the same the other way):
//!
//! ```text
//! tc qdisc add dev A ingress
//! tc filter add dev A parent ffff: protocol all prio 1 u32 match u8 0 0 \
//!     action mirred egress redirect dev B
//! ```
//!
//! u32 rather than matchall: hosts' kernels are built with `cls_u32` far
//! more often (this project's CI host has no `cls_matchall`).

use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

/// `ETH_P_ALL` (`include/uapi/linux/if_ether.h`): every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// Priority of the filter.
const PRIORITY: u16 = 1;

/// The handle of an ingress qdisc, `ffff:`, which its filters name as
/// their parent.
pub const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// The ingress qdisc of link `index` (`RTM_NEWQDISC`/`RTM_DELQDISC`).
pub fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_HANDLE;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// A filter on link `from`'s ingress that redirects every frame to the
/// egress of link `to` (`RTM_NEWTFILTER`).
pub fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_HANDLE;
    // tcm_info: priority in the upper half, protocol (network order) below.
    m.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    // `match u8 0 0`: mask 0 matches every frame.
    selector.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    // The frame is consumed by the redirect (TC_ACT_STOLEN).
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;

    #[test]
    fn filter_round_trips_with_the_redirect() {
        let mut m =
            NetlinkMessage::from(RouteNetlinkMessage::NewTrafficFilter(redirect_filter(2, 5)));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(back)) =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
                .unwrap()
                .payload
        else {
            panic!("not a filter");
        };
        assert_eq!(back.header.index, 2);
        assert_eq!(back.header.info, 0x0001_0300);
        let text = format!("{back:?}");
        assert!(text.contains("EgressRedir"), "{text}");
        assert!(text.contains("ifindex: 5"), "{text}");
        assert!(text.contains("Kind(\"u32\")"), "{text}");
    }

    #[test]
    fn ingress_qdisc_handle_and_parent() {
        let m = ingress_qdisc(7);
        assert_eq!(u32::from(m.header.handle), 0xffff_0000);
        assert_eq!(u32::from(m.header.parent), 0xffff_fff1);
    }
}
