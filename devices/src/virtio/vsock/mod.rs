//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid Unix-socket
//! backend (Firecracker `docs/vsock.md`).
//!
//! Layout, after Firecracker's, flattened where a folder held one file:
//! - [`device`]: the virtio device — queues, config space, the event loop
//!   side; it moves packets between the queues and the backend and knows
//!   nothing about sockets.
//! - [`packet`]: parsing what the guest put on the TX queue and writing
//!   packets into RX buffers.
//! - [`muxer`]: the Unix-socket backend: the listening socket, host-side
//!   handshakes, the connection table, the choice of the next RX packet.
//! - [`csm`]: the state machine of one connection (credit, shutdown,
//!   buffers).
//!
//! # The hybrid protocol as capsa implements it
//!
//! The host CID is 2 ([`HOST_CID`]); the guest's is configured (≥ 3).
//!
//! - **Host → guest.** The VMM listens on the Unix socket `uds_path`. A host
//!   client connects and writes `CONNECT <port>\n` (decimal, at most
//!   [`muxer::MAX_CONNECT_LINE`] bytes). The device picks a local port
//!   `host_port` in `[2^30, 2^31)` and sends the guest a REQUEST from
//!   `(2, host_port)` to `(guest_cid, port)`. On the guest's RESPONSE the
//!   client reads `OK <host_port>\n` and then the byte stream. Every other
//!   outcome is an `ERR <reason>\n` line, then the socket is closed —
//!   never a silent close: the guest's RST (nothing listens on the port),
//!   no answer within the answer timeout, a driver that is not active
//!   (answered at once: the guest may take long to boot), a device reset,
//!   more than [`muxer::MAX_CONNECTIONS`] connections. At most
//!   [`muxer::MAX_PENDING_HANDSHAKES`] clients may be in their handshake;
//!   one more evicts the oldest, and each has
//!   [`muxer::HANDSHAKE_TIMEOUT`] to send its line.
//! - **Guest → host.** A guest connect to host port P makes the VMM connect
//!   to the Unix socket `<uds_path>_P`; if that fails, the guest gets an
//!   RST.
//! - **Flow control** (§5.10.6.3): the device advertises
//!   [`csm::CONN_TX_BUF_SIZE`] bytes of buffer per connection and its
//!   forwarded count; data the guest sends beyond the credit is a protocol
//!   violation and resets the connection. Towards the guest the device
//!   never sends more than the guest's advertised free space, and stops
//!   reading the host socket while it has nothing to send into.
//! - **Shutdown** (§5.10.6.5): a guest SHUTDOWN with the SEND flag becomes
//!   `shutdown(SHUT_WR)` on the Unix socket once buffered data is written
//!   (the host reads EOF); with the RCV flag, `shutdown(SHUT_RD)` (host
//!   writes fail with EPIPE). Both flags: the connection ends with an RST
//!   once buffered data is written. Host EOF becomes SHUTDOWN(SEND) to the
//!   guest, sent after the last byte the host wrote; a host hang-up
//!   SHUTDOWN(RCV) at once, then SHUTDOWN(SEND) once the socket's unread
//!   data has been delivered (a client may write and close at once).
//! - **Reset.** A device reset closes every connection (host clients still
//!   waiting for `OK` get `ERR`), and CONNECTs are refused until the driver
//!   activates the device again. The event queue is never used (capsa
//!   does not snapshot, so TRANSPORT_RESET is never needed).

pub mod csm;
pub mod device;
pub mod muxer;
pub mod packet;

pub use device::{Vsock, VsockDeviceConfig, VsockError};

/// The host's CID (§5.10.4, `VMADDR_CID_HOST` in
/// `include/uapi/linux/vm_sockets.h`).
pub const HOST_CID: u64 = 2;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX queue (device → driver), §5.10.2.
pub const RXQ: usize = 0;
/// Index of the TX queue (driver → device).
pub const TXQ: usize = 1;
/// Index of the event queue.
pub const EVQ: usize = 2;

/// Largest payload of one packet, in bytes (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`
/// in Linux's `include/linux/virtio_vsock.h`, 64 KiB).
pub const MAX_PKT_PAYLOAD: usize = 64 << 10;

/// `VIRTIO_VSOCK_TYPE_STREAM` (§5.10.6, `include/uapi/linux/virtio_vsock.h`).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (§5.10.6, `enum virtio_vsock_op` in
/// `include/uapi/linux/virtio_vsock.h`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// Shutdown, with [`super::shutdown`] flags.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Unsolicited credit update.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Request for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags (§5.10.6.5, `VIRTIO_VSOCK_SHUTDOWN_*`).
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
}
