//! The virtio-fs device (§5.11): configuration space, features, and the
//! glue between the transport, the event loop and the vhost-user
//! [`Session`].

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::frontend::{Ring, Session};
use super::{encode_tag, FsConfig, FsError, NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::virtio::activation::{Activation, ACTIVATE_TOKEN};
use crate::virtio::{device_type, ActivateError, ActivateParams, Interrupt, VirtioDevice};

/// Event data of queue `i`'s call eventfd: `CALL_TOKEN_BASE + i`.
const CALL_TOKEN_BASE: u32 = 1;
/// Event data of the vhost-user socket.
const SOCKET_TOKEN: u32 = 100;

/// Length of the configuration space: `tag[36]` and
/// `le32 num_request_queues` (§5.11.4; `notify_buf_size` only exists with
/// `VIRTIO_FS_F_NOTIFICATION`, which is not offered).
const CONFIG_LEN: usize = TAG_LEN + 4;

/// Called once when the backend is lost for good (it closed the socket,
/// refused or botched a request, or did not answer in time), with why.
/// The VMM ends the VM: the guest's file system requests would never be
/// answered.
pub type BackendLost = Box<dyn FnMut(&FsError) + Send>;

/// A virtio-fs device served by a vhost-user backend.
pub struct Fs {
    config: [u8; CONFIG_LEN],
    session: Session,
    acked_features: u64,
    activation: Activation,
    call_evts: Vec<EventFd>,
    /// Handed over by `activate`, set up on the event loop.
    pending: Option<ActivateParams>,
    /// The interrupt line while the backend runs the rings.
    running: Option<Arc<Interrupt>>,
    failed: bool,
    on_lost: Option<BackendLost>,
    used_signals: u64,
}

impl Fs {
    /// Connects to the backend and negotiates (see the module docs), so
    /// that a missing or broken backend is an error before the guest runs.
    pub fn new(config: &FsConfig, on_lost: BackendLost) -> Result<Self, FsError> {
        let tag = encode_tag(&config.tag)?;
        let stream = UnixStream::connect(&config.socket).map_err(|source| FsError::Connect {
            path: config.socket.clone(),
            source,
        })?;
        let mut fs = Self::build(tag, Session::handshake(stream, config.timeout)?)?;
        fs.on_lost = Some(on_lost);
        Ok(fs)
    }

    /// [`Fs::new`] on a socket already connected to the backend (e.g.
    /// inherited from the process that started the backend); `timeout` as
    /// [`FsConfig::timeout`].
    pub fn with_stream(
        tag: &str,
        stream: UnixStream,
        timeout: Duration,
        on_lost: BackendLost,
    ) -> Result<Self, FsError> {
        let tag = encode_tag(tag)?;
        let mut fs = Self::build(tag, Session::handshake(stream, timeout)?)?;
        fs.on_lost = Some(on_lost);
        Ok(fs)
    }

    fn build(tag: [u8; TAG_LEN], session: Session) -> Result<Self, FsError> {
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[..TAG_LEN].copy_from_slice(&tag);
        cfg[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let eventfd = |source| FsError::Io {
            what: "eventfd",
            source,
        };
        let call_evts = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(eventfd)?;
        Ok(Self {
            config: cfg,
            session,
            acked_features: 0,
            activation: Activation::new().map_err(eventfd)?,
            call_evts,
            pending: None,
            running: None,
            failed: false,
            on_lost: None,
            used_signals: 0,
        })
    }

    /// Whether the backend was lost (the device is failed for good).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Used-buffer notifications of the backend turned into interrupts.
    pub fn used_signals(&self) -> u64 {
        self.used_signals
    }

    /// Marks the device failed, once: `DEVICE_NEEDS_RESET` on its
    /// interrupt line, then the [`BackendLost`] handler.
    fn fail(&mut self, e: FsError) {
        if self.failed {
            return;
        }
        self.failed = true;
        tracing::error!("{e}; the virtio-fs device is failed");
        let interrupt = self
            .running
            .take()
            .or_else(|| self.pending.take().map(|p| p.interrupt));
        if let Some(i) = interrupt {
            i.set_needs_reset();
        }
        if let Some(mut handler) = self.on_lost.take() {
            handler(&e);
        }
    }

    /// Starts the backend on the queues `activate` handed over.
    fn start(&mut self, params: ActivateParams) {
        let rings: Vec<Ring<'_>> = params
            .queues
            .iter()
            .zip(&params.queue_evts)
            .zip(&self.call_evts)
            .map(|((queue, kick), call)| Ring { queue, kick, call })
            .collect();
        let started = self.session.start(&params.mem, self.acked_features, &rings);
        drop(rings);
        match started {
            Ok(()) => {
                tracing::debug!("virtio-fs: backend runs the queues");
                self.running = Some(params.interrupt);
            }
            Err(e) => {
                self.pending = Some(params);
                self.fail(e);
            }
        }
    }

    /// The socket became readable or hung up. No request is outstanding
    /// when the event loop runs (exchanges are synchronous and hold the
    /// device), so anything but a stale event means the backend is gone.
    fn on_socket_event(&mut self, ops: &mut EventOps) {
        if !self.failed {
            let fd = self.session.socket().as_raw_fd();
            let mut byte = 0u8;
            // SAFETY: a one-byte peek into a local buffer on the session's
            // socket, which it keeps open.
            let n = unsafe {
                libc::recv(
                    fd,
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            let e = std::io::Error::last_os_error();
            match n {
                // A reply consumed meanwhile by an exchange on a vCPU
                // thread (device reset): nothing to do.
                -1 if e.kind() == std::io::ErrorKind::WouldBlock => return,
                0 => self.fail(FsError::Disconnected(String::new())),
                -1 => self.fail(FsError::Disconnected(format!(": {e}"))),
                _ => self.fail(FsError::Disconnected(
                    " (it sent a message nobody asked for)".into(),
                )),
            }
        }
        // A closed socket stays readable: stop watching it.
        let _ = ops.remove(Events::empty(self.session.socket()));
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.session.guest_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError> {
        if self.failed {
            return Err(ActivateError::Backend(
                "the virtio-fs backend was lost".into(),
            ));
        }
        if self.pending.is_some() || self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if params.queues.len() != NUM_QUEUES || params.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: params.queues.len(),
            });
        }
        self.pending = Some(params);
        self.activation.signal().map_err(ActivateError::EventFd)
    }

    fn can_snapshot(&self) -> Result<(), String> {
        let tag = &self.config[..TAG_LEN];
        let tag =
            String::from_utf8_lossy(&tag[..tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN)]);
        Err(format!(
            "virtio-fs share {tag:?} cannot be snapshotted: a vhost-user backend's state is not saved (not supported yet)"
        ))
    }

    fn is_activated(&self) -> bool {
        self.pending.is_some() || self.running.is_some()
    }

    fn reset(&mut self) -> bool {
        if self.failed {
            return false;
        }
        self.pending = None;
        if self.running.take().is_some() {
            if let Err(e) = self.session.stop(NUM_QUEUES) {
                self.fail(e);
                return false;
            }
        }
        true
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => {
                self.activation.on_activate(ops, None);
                if let Some(params) = self.pending.take() {
                    if !self.failed {
                        self.start(params);
                    }
                }
            }
            SOCKET_TOKEN => self.on_socket_event(ops),
            token => {
                let idx = token.wrapping_sub(CALL_TOKEN_BASE) as usize;
                let Some(evt) = self.call_evts.get(idx) else {
                    tracing::warn!("virtio-fs: unexpected event {token}");
                    return;
                };
                let _ = evt.read();
                if let Some(interrupt) = &self.running {
                    self.used_signals += 1;
                    interrupt.signal_used_queue();
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        for (i, evt) in self.call_evts.iter().enumerate() {
            let token = CALL_TOKEN_BASE + i as u32;
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                tracing::error!("virtio-fs: cannot watch call eventfd {i}: {e:?}");
            }
        }
        let sock = Events::with_data(
            self.session.socket(),
            SOCKET_TOKEN,
            EventSet::IN | EventSet::READ_HANG_UP,
        );
        if let Err(e) = ops.add(sock) {
            tracing::error!("virtio-fs: cannot watch the backend socket: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;
    use crate::virtio::fs::fake_backend::{
        code, read_region, FakeBackend, Fault, BACKEND_FEATURES,
    };
    use crate::virtio::fs::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
    use crate::virtio::test_utils::*;
    use crate::virtio::{GuestMemory, INT_VRING, VIRTIO_F_VERSION_1};

    /// Requests of a full handshake and start: 4 + 2 + 6 per queue.
    const START_REQUESTS: usize = 6 + 6 * NUM_QUEUES;

    type Lost = Arc<Mutex<Vec<String>>>;

    fn config(backend: &FakeBackend, timeout: Duration) -> FsConfig {
        FsConfig {
            tag: "capsa".into(),
            socket: backend.path().to_owned(),
            timeout,
        }
    }

    fn new_fs(backend: &FakeBackend, timeout: Duration) -> (Result<Fs, FsError>, Lost) {
        let lost: Lost = Arc::default();
        let l = lost.clone();
        let fs = Fs::new(
            &config(backend, timeout),
            Box::new(move |e| l.lock().unwrap().push(e.to_string())),
        );
        (fs, lost)
    }

    struct Running {
        fs: Arc<std::sync::Mutex<Fs>>,
        em: TestEventManager,
        mem: GuestMemory,
        queues: Vec<GuestQueue>,
        kicks: Vec<EventFd>,
        irq: Arc<Interrupt>,
    }

    /// Builds the device on `backend` and activates it as the transport
    /// would, with memfd-backed memory; runs the event loop once.
    fn activate(fs: Fs) -> Running {
        let mem = memfd_guest_memory();
        let queues: Vec<GuestQueue> = (0..NUM_QUEUES)
            .map(|i| GuestQueue::new(&mem, 0x10000 * (i as u64 + 1), 16))
            .collect();
        let fs = Arc::new(std::sync::Mutex::new(fs));
        let mut em = event_manager(&fs);
        let refs: Vec<&GuestQueue> = queues.iter().collect();
        let (params, kicks) = activate_params(&mem, &refs);
        let irq = params.interrupt.clone();
        {
            let mut d = fs.lock().unwrap();
            let features = d.avail_features();
            d.set_acked_features(features);
            d.activate(params).unwrap();
        }
        run_until_idle(&mut em, 10);
        Running {
            fs,
            em,
            mem,
            queues,
            kicks,
            irq,
        }
    }

    #[test]
    fn config_space_holds_tag_and_queue_count() {
        let backend = FakeBackend::start(None);
        let (fs, _) = new_fs(&backend, Duration::from_secs(5));
        let fs = fs.unwrap();
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE; NUM_QUEUES]);
        let mut b = [0xaau8; 48];
        fs.read_config(0, &mut b);
        assert_eq!(&b[..5], b"capsa");
        assert!(b[5..TAG_LEN].iter().all(|&x| x == 0));
        assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 1);
        assert!(b[40..].iter().all(|&x| x == 0), "beyond the config: zero");
        let mut b = [0xaau8; 4];
        fs.read_config(36, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        fs.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        // Offered: VERSION_1 plus the ring features the backend has; never
        // PROTOCOL_FEATURES (a vhost-user bit, not the guest's).
        assert_eq!(
            fs.avail_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX
        );
        backend.wait_for_requests(4);
        let log = backend.log.lock().unwrap();
        assert_eq!(
            log.requests,
            [
                code::SET_OWNER,
                code::GET_FEATURES,
                code::GET_PROTOCOL_FEATURES,
                code::SET_PROTOCOL_FEATURES
            ]
        );
        // Only REPLY_ACK is taken of what the backend offers.
        assert_eq!(log.protocol_features, Some(0x8));
    }

    #[test]
    fn start_hands_memfd_rings_and_eventfds_to_backend() {
        let mut backend = FakeBackend::start(None);
        let (fs, lost) = new_fs(&backend, Duration::from_secs(5));
        let mut r = activate(fs.unwrap());
        assert!(lost.lock().unwrap().is_empty());
        assert!(!r.fs.lock().unwrap().failed());
        {
            let log = backend.log.lock().unwrap();
            let mut expected = vec![
                code::SET_OWNER,
                code::GET_FEATURES,
                code::GET_PROTOCOL_FEATURES,
                code::SET_PROTOCOL_FEATURES,
                code::SET_FEATURES,
                code::SET_MEM_TABLE,
            ];
            for _ in 0..NUM_QUEUES {
                expected.extend([
                    code::SET_VRING_NUM,
                    code::SET_VRING_ADDR,
                    code::SET_VRING_BASE,
                    code::SET_VRING_CALL,
                    code::SET_VRING_KICK,
                    code::SET_VRING_ENABLE,
                ]);
            }
            assert_eq!(log.requests, expected);
            assert_eq!(expected.len(), START_REQUESTS);
            assert_eq!(
                log.features,
                Some(BACKEND_FEATURES & !(1 << 30) | (1 << 30)),
                "the guest's features plus PROTOCOL_FEATURES"
            );
            // The memory table: one region, the memfd, at the frontend's
            // address of guest address 0.
            let region = r.mem.iter().next().unwrap();
            let host = r.mem.get_host_address(GuestAddress(0)).unwrap() as u64;
            assert_eq!(log.regions, [(0, region.len(), host, 0)]);
            assert_eq!(log.region_files.len(), 1);
            // The backend sees what the guest writes, through the fd.
            r.mem
                .write_slice(b"shared page", GuestAddress(0x4000))
                .unwrap();
            assert_eq!(
                read_region(&log.region_files[0], 0x4000, 11),
                b"shared page"
            );
            // Rings at the frontend addresses of the guest's rings.
            for (i, q) in r.queues.iter().enumerate() {
                let (idx, desc, used, avail) = log.vring_addrs[i];
                assert_eq!(idx, i as u32);
                assert_eq!(desc - host, q.desc);
                assert_eq!(used - host, q.used);
                assert_eq!(avail - host, q.avail);
                assert_eq!(log.vring_nums[i], (i as u32, 16));
                assert_eq!(log.enables[i], (i as u32, 1));
            }
            // Kicks: the transport's eventfds reach the backend.
            r.kicks[1].write(1).unwrap();
            let (idx, kick) = &log.kicks[1];
            assert_eq!(*idx, 1);
            let mut v = [0u8; 8];
            (&*kick).read_exact(&mut v).unwrap();
            assert_eq!(u64::from_ne_bytes(v), 1);
            // Calls: the backend's signal becomes a used-buffer interrupt.
            (&log.calls[1].1).write_all(&1u64.to_ne_bytes()).unwrap();
        }
        run_until_idle(&mut r.em, 10);
        assert_eq!(r.irq.status() & INT_VRING, INT_VRING);
        assert_eq!(r.irq.irq_evt().read().unwrap(), 1);
        assert_eq!(r.fs.lock().unwrap().used_signals(), 1);
        drop(r);
        backend.join();
    }

    #[test]
    fn non_file_backed_memory_fails_activation() {
        let backend = FakeBackend::start(None);
        let (fs, lost) = new_fs(&backend, Duration::from_secs(5));
        let fs = Arc::new(std::sync::Mutex::new(fs.unwrap()));
        let mut em = event_manager(&fs);
        let mem = guest_memory(); // anonymous
        let queues: Vec<GuestQueue> = (0..NUM_QUEUES)
            .map(|i| GuestQueue::new(&mem, 0x10000 * (i as u64 + 1), 16))
            .collect();
        let refs: Vec<&GuestQueue> = queues.iter().collect();
        let (params, _kicks) = activate_params(&mem, &refs);
        let irq = params.interrupt.clone();
        fs.lock().unwrap().activate(params).unwrap();
        run_until_idle(&mut em, 10);
        assert!(fs.lock().unwrap().failed());
        assert!(irq.needs_reset());
        let lost = lost.lock().unwrap();
        assert_eq!(lost.len(), 1);
        assert!(lost[0].contains("not file-backed"), "{}", lost[0]);
    }

    #[test]
    fn wrong_queue_count_is_refused() {
        let backend = FakeBackend::start(None);
        let (fs, _) = new_fs(&backend, Duration::from_secs(5));
        let mut fs = fs.unwrap();
        let mem = memfd_guest_memory();
        let q = GuestQueue::new(&mem, 0x10000, 16);
        let (params, _) = activate_params(&mem, &[&q]);
        assert!(matches!(
            fs.activate(params),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(!fs.is_activated());
    }

    /// Runs handshake and start against a backend with `fault` at request
    /// `n`; returns the error seen (at `new` or reported as lost).
    fn fault_at(n: usize, fault: Fault, timeout: Duration) -> String {
        let mut backend = FakeBackend::start(Some((n, fault)));
        let (fs, lost) = new_fs(&backend, timeout);
        let message = match fs {
            Err(e) => e.to_string(),
            Ok(fs) => {
                let r = activate(fs);
                let failed = r.fs.lock().unwrap().failed();
                assert!(failed, "{fault:?} at request {n} went unnoticed");
                assert!(
                    r.irq.needs_reset(),
                    "{fault:?} at {n}: no DEVICE_NEEDS_RESET"
                );
                let lost = lost.lock().unwrap();
                assert_eq!(lost.len(), 1, "{fault:?} at {n}: reported {lost:?}");
                lost[0].clone()
            }
        };
        backend.disconnect();
        backend.join();
        message
    }

    #[test]
    fn disconnect_at_every_step_fails_cleanly() {
        for n in 1..=START_REQUESTS {
            let e = fault_at(n, Fault::Close, Duration::from_secs(5));
            assert!(e.contains("virtio-fs"), "step {n}: {e}");
        }
    }

    #[test]
    fn hostile_replies_at_every_step_fail_cleanly() {
        for fault in [
            Fault::Garbage,
            Fault::WrongRequest,
            Fault::BadVersion,
            Fault::HugeSize,
            Fault::Truncated,
            Fault::Nack,
            Fault::StrayFd,
        ] {
            for n in 1..=START_REQUESTS {
                if fault == Fault::Nack && n == 3 {
                    // 1 is a valid set of protocol features (MQ).
                    continue;
                }
                // SET_PROTOCOL_FEATURES (4) is sent before REPLY_ACK is on:
                // it has no answer to corrupt, and what the backend writes
                // instead arrives unasked and fails the device later. A
                // reply shorter than announced leaves the frontend waiting
                // for the rest: the deadline ends it.
                let e = fault_at(n, fault, Duration::from_millis(200));
                assert!(e.contains("virtio-fs"), "{fault:?} at {n}: {e}");
            }
        }
    }

    #[test]
    fn backend_that_never_answers_times_out() {
        // The handshake (GET_FEATURES) and the start (SET_MEM_TABLE).
        for (n, request) in [(2, "GET_FEATURES"), (6, "SET_MEM_TABLE")] {
            let t = Instant::now();
            let e = fault_at(n, Fault::Hang, Duration::from_millis(300));
            assert!(e.contains(&format!("no answer to {request}")), "{e}");
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn missing_backend_is_a_connect_error() {
        let (fs, _) = new_fs_at(Path::new("/nonexistent/vhost.sock"));
        let e = fs.err().unwrap().to_string();
        assert!(
            e.contains("cannot connect") && e.contains("/nonexistent/vhost.sock"),
            "{e}"
        );
    }

    fn new_fs_at(path: &Path) -> (Result<Fs, FsError>, Lost) {
        let lost: Lost = Arc::default();
        let cfg = FsConfig {
            tag: "capsa".into(),
            socket: path.to_owned(),
            timeout: Duration::from_secs(1),
        };
        (Fs::new(&cfg, Box::new(|_| {})), lost)
    }

    #[test]
    fn a_connected_stream_works_as_the_socket_path_does() {
        let mut backend = FakeBackend::start(None);
        let stream = std::os::unix::net::UnixStream::connect(backend.path()).unwrap();
        let lost: Lost = Arc::default();
        let l = lost.clone();
        let fs = Fs::with_stream(
            "tag",
            stream,
            Duration::from_secs(5),
            Box::new(move |e| l.lock().unwrap().push(e.to_string())),
        )
        .unwrap();
        let mut r = activate(fs);
        assert!(!r.fs.lock().unwrap().failed());
        assert_eq!(backend.log.lock().unwrap().requests.len(), START_REQUESTS);
        backend.disconnect();
        run_until_idle(&mut r.em, 50);
        assert_eq!(lost.lock().unwrap().len(), 1);
        backend.join();
    }

    #[test]
    fn backend_disconnect_while_running_is_reported_once() {
        let mut backend = FakeBackend::start(None);
        let (fs, lost) = new_fs(&backend, Duration::from_secs(5));
        let mut r = activate(fs.unwrap());
        assert!(!r.fs.lock().unwrap().failed());
        backend.disconnect();
        run_until_idle(&mut r.em, 50);
        assert!(r.fs.lock().unwrap().failed());
        assert!(r.irq.needs_reset());
        let lost = lost.lock().unwrap();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains("disconnected"), "{}", lost[0]);
        // Calls after the loss raise nothing; reset cannot revive it.
        let mut d = r.fs.lock().unwrap();
        assert!(!d.reset());
        drop(d);
        backend.join();
    }

    #[test]
    fn unasked_message_while_running_fails_the_device() {
        let backend = FakeBackend::start(None);
        let (fs, lost) = new_fs(&backend, Duration::from_secs(5));
        let mut r = activate(fs.unwrap());
        backend.write_unasked(&[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        run_until_idle(&mut r.em, 50);
        assert!(r.fs.lock().unwrap().failed());
        let lost = lost.lock().unwrap();
        assert!(lost[0].contains("nobody asked"), "{}", lost[0]);
    }

    #[test]
    fn reset_stops_the_rings_and_reactivation_restarts_them() {
        let backend = FakeBackend::start(None);
        let (fs, lost) = new_fs(&backend, Duration::from_secs(5));
        let r = activate(fs.unwrap());
        assert!(r.fs.lock().unwrap().reset());
        {
            let log = backend.log.lock().unwrap();
            let tail: Vec<u32> = log.requests[START_REQUESTS..].to_vec();
            assert_eq!(
                tail,
                [
                    code::SET_VRING_ENABLE,
                    code::GET_VRING_BASE,
                    code::SET_VRING_ENABLE,
                    code::GET_VRING_BASE
                ]
            );
        }
        assert!(!r.fs.lock().unwrap().is_activated());
        // The reply to GET_VRING_BASE woke the event loop: a stale event,
        // not a disconnect.
        let Running {
            fs,
            mut em,
            mem,
            queues,
            ..
        } = r;
        run_until_idle(&mut em, 10);
        assert!(!fs.lock().unwrap().failed());
        let refs: Vec<&GuestQueue> = queues.iter().collect();
        let (params, _kicks) = activate_params(&mem, &refs);
        fs.lock().unwrap().activate(params).unwrap();
        run_until_idle(&mut em, 10);
        assert!(!fs.lock().unwrap().failed());
        assert!(lost.lock().unwrap().is_empty());
        let log = backend.log.lock().unwrap();
        // The handshake is not repeated: stop (4) and start again.
        assert_eq!(
            log.requests.len(),
            START_REQUESTS + 4 + (START_REQUESTS - 4)
        );
        assert_eq!(log.region_files.len(), 2);
    }
}
