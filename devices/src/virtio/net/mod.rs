//! virtio-net (virtio 1.2 §5.1), backed by a TAP device.
//!
//! - [`device`]: the virtio device — features, configuration space (MAC,
//!   MTU), activation and the event loop side; it moves frames between the
//!   queues and a [`Backend`] and knows nothing about TAP devices.
//! - [`rx`]: writing one frame into the driver's receive buffers, with or
//!   without `VIRTIO_NET_F_MRG_RXBUF` (§5.1.6.3, §5.1.6.4).
//! - [`tx`]: reading one frame out of a transmit descriptor chain and
//!   checking its header against the negotiated features (§5.1.6.2).
//! - [`tap`]: the TAP backend (`/dev/net/tun` with `IFF_TAP |
//!   IFF_NO_PI | IFF_VNET_HDR`): every read and write carries one frame
//!   preceded by a [`VNET_HDR_LEN`]-byte `virtio_net_hdr_v1`, so the
//!   guest's checksum and segmentation offload requests travel to the
//!   host kernel as they are, and the host kernel's to the guest.
//!
//! One queue pair, no control queue. Offered features: `VERSION_1`, `MAC`,
//! `MTU`, `MRG_RXBUF`, and the offloads that a TAP device honours end to
//! end: `CSUM`/`HOST_TSO4`/`HOST_TSO6` (the guest leaves checksums and
//! segmentation to the host kernel) and `GUEST_CSUM`/`GUEST_TSO4`/
//! `GUEST_TSO6` (the host kernel hands the guest partial checksums and
//! 64 KiB segments; enabled on the TAP with `TUNSETOFFLOAD` only for
//! what the driver acked). The link status feature is not offered: the
//! link is always up.

pub mod device;
pub mod rx;
pub mod tap;
pub mod tx;

pub use device::{Net, NetConfig, NetCounters};
pub use tap::{Tap, TapError};

use std::os::fd::AsRawFd;

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device → driver), §5.1.2.
pub const RXQ: usize = 0;
/// Index of the transmit queue (driver → device), §5.1.2.
pub const TXQ: usize = 1;

/// Length of the header in front of every frame, in bytes: `struct
/// virtio_net_hdr_v1` (§5.1.6: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers). With `VIRTIO_F_VERSION_1` the
/// header always has `num_buffers`, merged buffers or not.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest frame (Ethernet header and payload, no virtio header) in
/// bytes: a 64 KiB GSO packet with its Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65550;
/// Largest header + frame a queue or the backend carries, in bytes.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Smallest MTU offered in the configuration space (IPv4's minimum,
/// RFC 791); the largest is what [`MAX_FRAME_LEN`] allows.
pub const MIN_MTU: u16 = 68;

/// Feature bits (§5.1.3, `include/uapi/linux/virtio_net.h`).
pub mod features {
    /// `VIRTIO_NET_F_CSUM`: the device takes packets with a partial checksum.
    pub const CSUM: u64 = 1 << 0;
    /// `VIRTIO_NET_F_GUEST_CSUM`: the driver takes packets with a partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `VIRTIO_NET_F_MTU`: config `mtu` is valid.
    pub const MTU: u64 = 1 << 3;
    /// `VIRTIO_NET_F_MAC`: config `mac` is valid.
    pub const MAC: u64 = 1 << 5;
    /// `VIRTIO_NET_F_GUEST_TSO4`: the driver takes TCPv4 segments.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// `VIRTIO_NET_F_GUEST_TSO6`: the driver takes TCPv6 segments.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// `VIRTIO_NET_F_HOST_TSO4`: the device takes TCPv4 segments.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// `VIRTIO_NET_F_HOST_TSO6`: the device takes TCPv6 segments.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// `VIRTIO_NET_F_MRG_RXBUF`: the driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
}

/// `virtio_net_hdr.flags` (§5.1.6, `include/uapi/linux/virtio_net.h`).
pub mod hdr_flags {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: `csum_start`/`csum_offset` are valid.
    pub const NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was checked (RX only).
    pub const DATA_VALID: u8 = 2;
}

/// `virtio_net_hdr.gso_type` (§5.1.6, `include/uapi/linux/virtio_net.h`).
pub mod gso {
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub const TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub const TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_ECN` (a flag on the type).
    pub const ECN: u8 = 0x80;
}

/// Where the device's frames go: one frame per read and per write, each
/// preceded by a [`VNET_HDR_LEN`]-byte header. [`Tap`] is the real one;
/// the tests and the fuzz harness use a datagram socket pair.
///
/// The file descriptor must be non-blocking: the device watches it on the
/// event loop for `EPOLLIN`.
pub trait Backend: AsRawFd + Send {
    /// Reads one header + frame into `buf`; `WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one header + frame.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Which offloaded frames the backend may hand to [`read_frame`]
    /// (`TUN_F_*` bits, as `TUNSETOFFLOAD` takes them).
    ///
    /// [`read_frame`]: Backend::read_frame
    fn set_offloads(&mut self, tun_flags: u32) -> std::io::Result<()>;
}
