//! virtio-fs (virtio 1.2 §5.11) as a vhost-user frontend: the guest's FUSE
//! requests are served by a separate backend process (`virtiofsd`) that
//! reads the virtqueues straight from guest memory.
//!
//! The VMM keeps the parts of the device that belong to the transport: the
//! configuration space (the tag and the number of request queues,
//! §5.11.4), feature negotiation with the guest, and the interrupt line.
//! Everything else goes to the backend over the vhost-user protocol
//! (QEMU's `docs/interop/vhost-user.rst`) with the `vhost` crate's
//! [`Frontend`](vhost::vhost_user::Frontend):
//!
//! - at [`Fs::new`]: `SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`,
//!   `SET_PROTOCOL_FEATURES` (so a missing or broken backend fails before
//!   the guest boots);
//! - when the guest writes `DRIVER_OK` (on the event loop, see
//!   [`activation`](super::activation)): `SET_FEATURES`, `SET_MEM_TABLE`
//!   (every guest RAM region with its memfd and offset: guest memory must
//!   be file-backed and mapped shared, as capsa's is), then per queue
//!   `SET_VRING_NUM`, `SET_VRING_ADDR` (host virtual addresses of the
//!   rings), `SET_VRING_BASE`, `SET_VRING_CALL`, `SET_VRING_KICK`,
//!   `SET_VRING_ENABLE`;
//! - at a device reset: `SET_VRING_ENABLE 0` and `GET_VRING_BASE` per
//!   queue (which stops the rings).
//!
//! Notifications: the kick eventfd of each queue is the transport's
//! QueueNotify eventfd (the one the VMM registers with `KVM_IOEVENTFD`),
//! handed to the backend as is. The call eventfds are the device's own:
//! the event loop turns each signal into a used-buffer interrupt, because
//! virtio-mmio needs InterruptStatus set before the irqfd fires (§4.2.2),
//! which a backend writing the irqfd directly would skip.
//!
//! The backend is not trusted to stay alive or to answer: every exchange
//! runs under a deadline (a watchdog shuts the socket down when it
//! passes), every reply is validated by the `vhost` crate, and the socket
//! is watched on the event loop, where readability or hang-up while no
//! request is outstanding means the backend went away. Any of these fails
//! the device for good (`DEVICE_NEEDS_RESET`, §2.1.2) and calls the
//! [`BackendLost`] handler: the guest's FUSE requests would otherwise wait
//! forever, so the VMM ends the VM with the error.

mod device;
mod frontend;

#[cfg(test)]
mod fake_backend;

use std::path::PathBuf;
use std::time::Duration;

pub use device::{BackendLost, Fs};

/// Length of the tag field of the configuration space (§5.11.4): UTF-8,
/// NUL-padded, not NUL-terminated when it uses all 36 bytes.
pub const TAG_LEN: usize = 36;

/// Request queues the device offers (`num_request_queues`, §5.11.4).
pub const NUM_REQUEST_QUEUES: u32 = 1;

/// Queues: the high-priority queue (index 0) and the request queues
/// (§5.11.2; no notification queue, `VIRTIO_FS_F_NOTIFICATION` is not
/// offered).
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;

/// Maximum size of each queue (virtiofsd accepts up to 1024 entries).
pub const QUEUE_SIZE: u16 = 1024;

/// How long one exchange with the backend (the handshake, starting or
/// stopping the rings) may take before the backend counts as hung.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `VIRTIO_RING_F_INDIRECT_DESC` (§6): offered when the backend has it.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX` (§6): offered when the backend has it.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// How to build an [`Fs`] device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG /mnt`): 1 to
    /// [`TAG_LEN`] bytes of UTF-8 without NUL.
    pub tag: String,
    /// The backend's vhost-user socket (virtiofsd `--socket-path` or
    /// `--fd`).
    pub socket: PathBuf,
    /// Deadline of one exchange with the backend
    /// ([`DEFAULT_BACKEND_TIMEOUT`]).
    pub timeout: Duration,
}

/// Errors of the virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag cannot be put in the configuration space.
    #[error("invalid virtio-fs tag {tag:?}: {why}")]
    Tag {
        /// The tag.
        tag: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The backend's socket cannot be connected to.
    #[error("cannot connect to the virtio-fs backend at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A vhost-user request failed: the backend refused it, answered
    /// something invalid, or closed the connection.
    #[error("virtio-fs backend: {request} failed: {source}")]
    Request {
        /// The request (`GET_FEATURES`, `SET_MEM_TABLE`, …).
        request: &'static str,
        /// What the `vhost` crate saw.
        source: vhost::Error,
    },
    /// The backend did not answer within the deadline.
    #[error("virtio-fs backend: no answer to {request} within {timeout:?}")]
    Timeout {
        /// The request that was waiting.
        request: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The backend lacks a feature the device needs.
    #[error("virtio-fs backend: {0}")]
    Features(String),
    /// Guest memory cannot be shared with the backend (not file-backed, or
    /// a ring address outside it).
    #[error("virtio-fs: {0}")]
    Memory(String),
    /// The backend closed its socket (or wrote to it unasked) while the
    /// device was running.
    #[error("virtio-fs backend disconnected{0}")]
    Disconnected(String),
    /// An eventfd or socket operation of the VMM failed.
    #[error("virtio-fs: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The configuration space's tag field for `tag` (§5.11.4), or why it
/// cannot be one.
pub fn encode_tag(tag: &str) -> Result<[u8; TAG_LEN], FsError> {
    let bad = |why| FsError::Tag {
        tag: tag.to_owned(),
        why,
    };
    if tag.is_empty() {
        return Err(bad("empty"));
    }
    if tag.len() > TAG_LEN {
        return Err(bad("longer than 36 bytes"));
    }
    if tag.bytes().any(|b| b == 0) {
        return Err(bad("contains NUL"));
    }
    let mut out = [0u8; TAG_LEN];
    out[..tag.len()].copy_from_slice(tag.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_fit_the_config_space() {
        let t = encode_tag("capsa").unwrap();
        assert_eq!(&t[..5], b"capsa");
        assert!(t[5..].iter().all(|&b| b == 0));
        let full = "x".repeat(TAG_LEN);
        assert_eq!(encode_tag(&full).unwrap(), [b'x'; TAG_LEN]);
        for bad in ["", "a\0b"] {
            assert!(
                matches!(encode_tag(bad), Err(FsError::Tag { .. })),
                "{bad:?}"
            );
        }
        let long = "x".repeat(TAG_LEN + 1);
        let e = encode_tag(&long).unwrap_err().to_string();
        assert!(e.contains("36 bytes"), "{e}");
    }
}
