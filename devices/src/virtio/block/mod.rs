//! virtio-blk (virtio 1.2 §5.2), backed by a host file.
//!
//! - [`device`]: the device (features, config space, activation, the event
//!   loop side).
//! - [`request`]: parsing and executing one request chain; every error maps
//!   to a `VIRTIO_BLK_S_*` status in one place
//!   ([`request::RequestError::status`]).
//!
//! Offered features: `VIRTIO_F_VERSION_1`, `VIRTIO_BLK_F_SEG_MAX`,
//! `VIRTIO_BLK_F_SIZE_MAX`, `VIRTIO_BLK_F_FLUSH`, and `VIRTIO_BLK_F_RO`
//! for a read-only disk. `seg_max` × `size_max` bounds a request's data
//! ([`request::MAX_REQUEST_BYTES`], 15.9 MiB): a driver that honours them
//! never sends more, and a larger request is answered `IOERR` unread.
//! A write to a read-only disk is answered `VIRTIO_BLK_S_IOERR` (§5.2.6.2
//! allows IOERR or UNSUPP; IOERR makes Linux report EIO, which is what a
//! caller expects from a read-only medium).

pub mod device;
pub mod request;

pub use device::{Block, BlockConfig, BlockError};

/// Sector size of the virtio-blk protocol in bytes (§5.2.6: `sector` is in
/// 512-byte units whatever the device's block size).
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the GET_ID answer in bytes (`VIRTIO_BLK_ID_BYTES`,
/// `include/uapi/linux/virtio_blk.h`).
pub const ID_BYTES: usize = 20;
/// Maximum size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (§5.2.3, `include/uapi/linux/virtio_blk.h`).
pub mod features {
    /// `VIRTIO_BLK_F_SIZE_MAX`: config `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `VIRTIO_BLK_F_SEG_MAX`: config `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// `VIRTIO_BLK_F_RO`: the device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `VIRTIO_BLK_F_FLUSH`: the device handles `VIRTIO_BLK_T_FLUSH`.
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (§5.2.6, `include/uapi/linux/virtio_blk.h`).
pub mod req_type {
    /// `VIRTIO_BLK_T_IN`: read.
    pub const IN: u32 = 0;
    /// `VIRTIO_BLK_T_OUT`: write.
    pub const OUT: u32 = 1;
    /// `VIRTIO_BLK_T_FLUSH`.
    pub const FLUSH: u32 = 4;
    /// `VIRTIO_BLK_T_GET_ID`: the serial, 20 bytes.
    pub const GET_ID: u32 = 8;
}

/// Status byte values (§5.2.6, `include/uapi/linux/virtio_blk.h`).
pub mod req_status {
    /// `VIRTIO_BLK_S_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_BLK_S_IOERR`.
    pub const IOERR: u8 = 1;
    /// `VIRTIO_BLK_S_UNSUPP`.
    pub const UNSUPP: u8 = 2;
}
