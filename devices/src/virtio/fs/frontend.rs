//! The vhost-user session with the backend: the `vhost` crate's
//! [`Frontend`] on a connected Unix socket, with a deadline on every
//! exchange.
//!
//! The crate's socket reads retry on `EAGAIN`, so a receive timeout on the
//! socket would not end a wait; instead each exchange runs while a
//! watchdog thread waits for it, and shuts the socket down when the
//! deadline passes. The blocked read then sees end-of-file, the crate
//! returns an error, and the session is dead (a backend that does not
//! answer in time is treated as gone).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{FsError, NUM_QUEUES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use crate::virtio::{GuestMemory as Mem, VIRTIO_F_VERSION_1};

/// Protocol features capsa uses when the backend has them:
/// `REPLY_ACK` (every request is acknowledged, so a refusal is seen at
/// once). Nothing else is needed for virtio-fs without DAX.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK;

/// Virtio features passed through from the backend to the guest, besides
/// `VIRTIO_F_VERSION_1` (which the backend must have).
const PASSTHROUGH_FEATURES: u64 = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/// One queue as the backend needs it.
pub struct Ring<'a> {
    /// The queue the transport validated.
    pub queue: &'a Queue,
    /// Signalled by the guest's notifications (the transport's eventfd).
    pub kick: &'a EventFd,
    /// Signalled by the backend when it used buffers.
    pub call: &'a EventFd,
}

/// A vhost-user session.
pub struct Session {
    frontend: Frontend,
    /// The same socket, for the event loop and the watchdog.
    sock: UnixStream,
    timeout: Duration,
    backend_features: u64,
}

impl Session {
    /// The handshake on an already connected `stream`.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self, FsError> {
        let sock = stream.try_clone().map_err(|source| FsError::Io {
            what: "dup the vhost-user socket",
            source,
        })?;
        let mut session = Self {
            frontend: Frontend::from_stream(stream, NUM_QUEUES as u64),
            sock,
            timeout,
            backend_features: 0,
        };
        let features = session.guarded(|f, step| {
            *step = "SET_OWNER";
            f.set_owner().map_err(req(step))?;
            *step = "GET_FEATURES";
            let features = f.get_features().map_err(req(step))?;
            let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
            if features & VIRTIO_F_VERSION_1 == 0 || features & protocol == 0 {
                return Err(FsError::Features(format!(
                    "features {features:#x} lack VIRTIO_F_VERSION_1 or \
                     VHOST_USER_F_PROTOCOL_FEATURES"
                )));
            }
            *step = "GET_PROTOCOL_FEATURES";
            let offered = f.get_protocol_features().map_err(req(step))?;
            let used = offered & WANTED_PROTOCOL_FEATURES;
            *step = "SET_PROTOCOL_FEATURES";
            f.set_protocol_features(used).map_err(req(step))?;
            if used.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            Ok(features)
        })?;
        session.backend_features = features;
        Ok(session)
    }

    /// The features the device offers the guest.
    pub fn guest_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | (self.backend_features & PASSTHROUGH_FEATURES)
    }

    /// The socket, for the event loop to watch.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Hands guest memory and the rings to the backend and enables them;
    /// `acked` are the features the guest acknowledged (a subset of
    /// [`Session::guest_features`]).
    pub fn start(&mut self, mem: &Mem, acked: u64, rings: &[Ring<'_>]) -> Result<(), FsError> {
        let regions = mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| {
                    FsError::Memory(format!(
                        "guest memory at {:#x} is not file-backed (vhost-user needs a memfd)",
                        r.start_addr().0
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let configs = rings
            .iter()
            .map(|r| ring_config(mem, r.queue))
            .collect::<Result<Vec<_>, _>>()?;
        let features =
            (acked & self.guest_features()) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.guarded(|f, step| {
            *step = "SET_FEATURES";
            f.set_features(features).map_err(req(step))?;
            *step = "SET_MEM_TABLE";
            f.set_mem_table(&regions).map_err(req(step))?;
            for (i, (ring, config)) in rings.iter().zip(&configs).enumerate() {
                *step = "SET_VRING_NUM";
                f.set_vring_num(i, config.queue_size).map_err(req(step))?;
                *step = "SET_VRING_ADDR";
                f.set_vring_addr(i, config).map_err(req(step))?;
                *step = "SET_VRING_BASE";
                f.set_vring_base(i, ring.queue.next_avail())
                    .map_err(req(step))?;
                *step = "SET_VRING_CALL";
                f.set_vring_call(i, ring.call).map_err(req(step))?;
                *step = "SET_VRING_KICK";
                f.set_vring_kick(i, ring.kick).map_err(req(step))?;
                *step = "SET_VRING_ENABLE";
                f.set_vring_enable(i, true).map_err(req(step))?;
            }
            Ok(())
        })
    }

    /// Stops the first `queues` rings (device reset): disables them and
    /// asks for their base, which stops the backend's processing.
    pub fn stop(&mut self, queues: usize) -> Result<(), FsError> {
        self.guarded(|f, step| {
            for i in 0..queues {
                *step = "SET_VRING_ENABLE";
                f.set_vring_enable(i, false).map_err(req(step))?;
                *step = "GET_VRING_BASE";
                f.get_vring_base(i).map_err(req(step))?;
            }
            Ok(())
        })
    }

    /// Runs `exchange` under the deadline. `exchange` names the request it
    /// is waiting for in its second argument, for the timeout message.
    fn guarded<T>(
        &mut self,
        exchange: impl FnOnce(&mut Frontend, &mut &'static str) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let (done, wait) = mpsc::channel::<()>();
        let fired = AtomicBool::new(false);
        let fd = self.sock.as_raw_fd();
        let timeout = self.timeout;
        let mut step = "the handshake";
        let frontend = &mut self.frontend;
        let fired_flag = &fired;
        let result = std::thread::scope(|s| {
            let watchdog = s.spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                    fired_flag.store(true, Ordering::SeqCst);
                    // SAFETY: `fd` is the session's socket, open for the
                    // whole scope (owned by `self.sock`); shutdown(2) only
                    // changes the socket's state.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            });
            let result = exchange(frontend, &mut step);
            drop(done);
            let _ = watchdog.join();
            result
        });
        // Once fired, the socket is shut down: the session is over even if
        // the exchange finished just in time.
        if fired.load(Ordering::SeqCst) {
            return Err(FsError::Timeout {
                request: step,
                timeout,
            });
        }
        result
    }
}

/// Maps a `vhost` error of `request` to an [`FsError`].
fn req(request: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |source| FsError::Request { request, source }
}

/// The ring addresses of `queue` in this process's address space, as
/// `SET_VRING_ADDR` wants them.
fn ring_config(mem: &Mem, queue: &Queue) -> Result<VringConfigData, FsError> {
    let host = |gpa: u64, what: &str| {
        mem.get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| FsError::Memory(format!("{what} at {gpa:#x}: {e}")))
    };
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host(queue.desc_table(), "descriptor table")?,
        used_ring_addr: host(queue.used_ring(), "used ring")?,
        avail_ring_addr: host(queue.avail_ring(), "available ring")?,
        log_addr: None,
    })
}
