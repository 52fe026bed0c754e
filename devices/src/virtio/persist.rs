//! Snapshot state of a virtio-mmio device: the transport's registers, each
//! virtqueue as the driver set it up and where the device is in its rings,
//! the interrupt line, and the device's configuration space.
//!
//! A device's own host-side state is not carried: capsa's devices keep
//! none that a guest could observe across a pause, except what the
//! configuration space shows (a disk's capacity, the vsock CID, the MAC).
//! What a restore does with the rest:
//! - virtio-blk, virtio-rng: nothing (requests are served to completion
//!   on the event loop before a snapshot is taken);
//! - virtio-vsock: the host-side connections are gone; the device sends
//!   `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on its event queue (§5.10.6.5)
//!   once restored, and the guest drops its connections (listeners stay);
//! - virtio-net: frames in flight are lost, as on a wire;
//! - virtio-fs (vhost-user): refused; the backend's state is not saved.
//!
//! Everything read from a snapshot is checked before use
//! ([`MmioTransport::restore_state`](super::MmioTransport::restore_state)):
//! the device type, features and queue sizes against the device built
//! from the new command line, and each ready queue's rings against guest
//! memory (§2.7 alignment, inside memory), exactly as a QueueReady write
//! is checked.

use serde::{Deserialize, Serialize};

/// Bytes of configuration space saved per device (offsets `0x100` to
/// `0x1ff` of the register window; capsa's devices have fewer).
pub const CONFIG_SPACE_LEN: usize = 0x100;

/// One virtqueue (§2.7) as the driver configured it through the
/// virtio-mmio registers (§4.2.2), with the device's ring positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// QueueNumMax: the device's largest size for this queue.
    pub max_size: u16,
    /// QueueNum: the size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the available ring (QueueDriver).
    pub avail: u64,
    /// Guest-physical address of the used ring (QueueDevice).
    pub used: u64,
    /// Next available-ring index the device will read (only meaningful
    /// while the device is active).
    pub next_avail: u16,
    /// Next used-ring index the device will write.
    pub next_used: u16,
}

/// Where a device is in one queue's rings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuePosition {
    /// Next available-ring index to read.
    pub next_avail: u16,
    /// Next used-ring index to write.
    pub next_used: u16,
}

/// The state of one virtio-mmio device (§4.2.2 registers, §2.1 status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// DeviceID (§5): checked against the device on restore.
    pub device_type: u32,
    /// The features the device offered.
    pub avail_features: u64,
    /// The features the driver acked.
    pub acked_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// Device status (§2.1) as the driver wrote it.
    pub status: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the device had set `DEVICE_NEEDS_RESET`.
    pub needs_reset: bool,
    /// Whether the device was active (its queues in use).
    pub activated: bool,
    /// Every queue, in index order.
    pub queues: Vec<QueueState>,
    /// The first [`CONFIG_SPACE_LEN`] bytes of the configuration space.
    pub config: Vec<u8>,
}

/// Errors saving or restoring a device.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The device cannot be snapshotted (e.g. a vhost-user device).
    #[error("{0}")]
    Unsupported(String),
    /// The saved state does not fit the device built from the command line.
    #[error("{0}")]
    Mismatch(String),
    /// The saved state is invalid (a corrupt or hostile snapshot).
    #[error("invalid saved state: {0}")]
    Invalid(String),
}
