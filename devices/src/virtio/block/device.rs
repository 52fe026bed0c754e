//! The virtio-blk device: configuration space (§5.2.4), features (§5.2.3)
//! and the request queue, served on the event loop.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::request::{self, Disk};
use super::{features, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::activation::ACTIVATE_TOKEN;
use crate::virtio::common::{ServeChain, VirtioCommon};
use crate::virtio::{device_type, ActivateError, ActivateParams, VirtioDevice, VIRTIO_F_VERSION_1};

/// `seg_max` in the config space: descriptors of data per request (the
/// queue size minus header and status).
pub const CONFIG_SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// `size_max` in the config space: bytes per data descriptor (Linux's
/// `max_segment_size`); with [`CONFIG_SEG_MAX`] it bounds a request.
pub const CONFIG_SIZE_MAX: u32 = 64 << 10;

/// How to build a [`Block`] device (from `--disk path[,ro]`).
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// The host file backing the disk.
    pub path: PathBuf,
    /// Offer `VIRTIO_BLK_F_RO` and refuse writes.
    pub read_only: bool,
    /// GET_ID answer; at most 20 bytes are used. Default: the file name.
    pub serial: Option<String>,
}

/// Errors of [`Block::new`].
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file cannot be opened.
    #[error("cannot open disk {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backing file's size cannot be read.
    #[error("cannot stat disk {path}: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Counters of the device (read by the VMM's metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed.
    pub requests: u64,
    /// Requests answered with a status other than OK.
    pub errors: u64,
    /// Chains that could not even carry a status byte.
    pub no_status: u64,
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    common: VirtioCommon,
    counters: BlockCounters,
}

impl Block {
    /// Opens the disk. The capacity is the file size rounded down to a
    /// multiple of 512 bytes (a remainder is logged and not reachable by
    /// the guest).
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?;
        let serial = config.serial.clone().unwrap_or_else(|| {
            config
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Self::from_file(file, config.read_only, serial.as_bytes()).map_err(|e| match e {
            BlockError::Metadata { source, .. } => BlockError::Metadata {
                path: config.path.clone(),
                source,
            },
            e => e,
        })
    }

    /// A device over an open file (opened for writing unless `read_only`).
    pub fn from_file(file: File, read_only: bool, serial: &[u8]) -> Result<Self, BlockError> {
        let size = file
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: PathBuf::new(),
                source,
            })?
            .len();
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                "virtio-blk: disk size {size} is not a multiple of 512; the last {} bytes are not visible",
                size % SECTOR_SIZE
            );
        }
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        let mut avail_features =
            VIRTIO_F_VERSION_1 | features::SEG_MAX | features::SIZE_MAX | features::FLUSH;
        if read_only {
            avail_features |= features::RO;
        }
        Ok(Self {
            disk: Disk {
                file,
                capacity: size / SECTOR_SIZE,
                read_only,
                serial: id,
            },
            common: VirtioCommon::new(1, avail_features).map_err(BlockError::EventFd)?,
            counters: BlockCounters::default(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// The counters.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// The configuration space (§5.2.4): capacity (le64), size_max
    /// (le32), seg_max (le32), geometry (4 bytes, unused), blk_size
    /// (le32, 512).
    fn config_bytes(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.disk.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&CONFIG_SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&CONFIG_SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Serves the request queue, at most
    /// [`MAX_BYTES_PER_EVENT`](crate::virtio::common::MAX_BYTES_PER_EVENT)
    /// bytes of data per call (after the first request); called on the
    /// event loop.
    pub fn process_queue(&mut self) {
        let mut serve = Serve {
            disk: &self.disk,
            counters: &mut self.counters,
            moved: 0,
        };
        self.common.drain_queue(0, &mut serve);
    }
}

/// The request queue's chains, run against the disk.
struct Serve<'a> {
    disk: &'a Disk,
    counters: &'a mut BlockCounters,
    moved: u64,
}

impl ServeChain for Serve<'_> {
    fn serve<'m>(
        &mut self,
        chain: crate::virtio::queue::Chain<'m>,
        mem: &'m crate::virtio::GuestMemory,
    ) -> Option<u32> {
        let out = request::handle(chain, mem, self.disk);
        self.counters.requests += 1;
        if let Some(e) = &out.error {
            self.counters.errors += 1;
            tracing::debug!("virtio-blk: request failed: {e}");
        }
        if out.status.is_none() {
            self.counters.no_status += 1;
        }
        self.moved += out.bytes_moved;
        Some(out.used_len)
    }

    fn bytes_moved(&self) -> u64 {
        self.moved
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.common.avail_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.common.set_acked_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, params: ActivateParams) -> Result<(), ActivateError> {
        self.common.activate(params)
    }

    fn queue_positions(&self) -> Option<Vec<crate::virtio::persist::QueuePosition>> {
        self.common.queue_positions()
    }

    fn is_activated(&self) -> bool {
        self.common.is_activated()
    }

    fn reset(&mut self) -> bool {
        self.common.reset();
        true
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_TOKEN => self.common.on_activate(ops),
            token if self.common.on_queue_event(token).is_some() => {}
            other => {
                tracing::warn!("virtio-blk: unexpected event {other}");
                return;
            }
        }
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.common.init(ops);
    }
}

/// Copies `data.len()` bytes of `config` at `offset`; bytes beyond the end
/// read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::block::{req_status, req_type};
    use crate::virtio::test_utils::*;

    const HDR: u64 = 0x100000;
    const DATA: u64 = 0x200000;
    const STATUS: u64 = 0x300000;

    struct Fixture {
        blk: Arc<Mutex<Block>>,
        q: GuestQueue,
        em: TestEventManager,
        evts: Vec<EventFd>,
        mem: crate::virtio::GuestMemory,
        file: tempfile::NamedTempFile,
    }

    fn fixture(read_only: bool, size: usize) -> Fixture {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let blk = Block::new(&BlockConfig {
            path: file.path().to_path_buf(),
            read_only,
            serial: Some("capsa-disk-0".into()),
        })
        .unwrap();
        let blk = Arc::new(Mutex::new(blk));
        let mem = guest_memory();
        let q = GuestQueue::new(&mem, 0x10000, 16);
        let mut em = event_manager(&blk);
        let (params, evts) = activate_params(&mem, &[&q]);
        blk.lock().unwrap().activate(params).unwrap();
        run_until_idle(&mut em, 0);
        Fixture {
            blk,
            q,
            em,
            evts,
            mem,
            file,
        }
    }

    impl Fixture {
        fn header(&self, t: u32, sector: u64) {
            self.mem.write_obj(t, GuestAddress(HDR)).unwrap();
            self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
            self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        }
        fn run(&mut self) -> Option<(u16, u32)> {
            self.evts[0].write(1).unwrap();
            run_until_idle(&mut self.em, 0);
            self.q.pop_used()
        }
        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }
        fn request(
            &mut self,
            t: u32,
            sector: u64,
            data_len: u32,
            data_writable: bool,
        ) -> (u32, u8) {
            self.header(t, sector);
            self.q.add_chain(&[
                (HDR, 16, false),
                (DATA, data_len, data_writable),
                (STATUS, 1, true),
            ]);
            let (_, len) = self.run().expect("request completed");
            (len, self.status())
        }
    }

    #[test]
    fn config_space_reports_capacity() {
        let f = fixture(false, 8192 + 100);
        let b = f.blk.lock().unwrap();
        assert_eq!(b.capacity(), 16);
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 16);
        let mut c = [0u8; 4];
        b.read_config(12, &mut c);
        assert_eq!(u32::from_le_bytes(c), CONFIG_SEG_MAX);
        b.read_config(1000, &mut c);
        assert_eq!(c, [0; 4]);
        b.read_config(u64::MAX, &mut c);
        assert_ne!(b.avail_features() & VIRTIO_F_VERSION_1, 0);
        assert_eq!(b.avail_features() & features::RO, 0);
    }

    /// Issue 14 item 6: five 512 KiB reads (or 256 of them, or 4 GiB
    /// requests) used to be served in one event, starving vsock and the
    /// console; one event now moves at most MAX_BYTES_PER_EVENT and
    /// re-signals the queue for the rest.
    #[test]
    fn block_bytes_per_event_are_bounded() {
        use crate::virtio::common::MAX_BYTES_PER_EVENT;
        let mut f = fixture(false, 4 << 20);
        f.header(req_type::IN, 0);
        let len = 512u32 << 10;
        // Five chains of three descriptors fill the 16-entry table.
        for _ in 0..5 {
            f.q.add_chain(&[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)]);
        }
        f.blk.lock().unwrap().process_queue();
        assert_eq!(
            u64::from(f.q.used_pending()),
            MAX_BYTES_PER_EVENT / u64::from(len)
        );
        for _ in 0..2 {
            f.blk.lock().unwrap().process_queue();
        }
        assert_eq!(f.q.used_pending(), 5);
        assert_eq!(f.blk.lock().unwrap().counters().errors, 0);
    }

    /// Issue 14 item 6: a request over seg_max × size_max (which the
    /// driver was told) is refused before a byte moves; it used to be
    /// served whole, up to 4 GiB in one event.
    #[test]
    fn block_request_over_seg_max_times_size_max_is_ioerr() {
        use crate::virtio::block::request::MAX_REQUEST_BYTES;
        let mut f = fixture(false, 17 << 20);
        f.header(req_type::OUT, 0);
        let half = 8u32 << 20;
        assert!(2 * half as usize > MAX_REQUEST_BYTES);
        f.q.add_chain(&[
            (HDR, 16, false),
            (DATA, half, false),
            (DATA, half, false),
            (STATUS, 1, true),
        ]);
        f.run().unwrap();
        assert_eq!(f.status(), req_status::IOERR);
        let mut first = [0u8; 4];
        std::io::Read::read_exact(&mut f.file.reopen().unwrap(), &mut first).unwrap();
        assert_eq!(first, [0, 1, 2, 3], "nothing was written");
        let mut c = [0u8; 4];
        f.blk.lock().unwrap().read_config(8, &mut c);
        assert_eq!(u32::from_le_bytes(c), CONFIG_SIZE_MAX);
        assert_ne!(
            f.blk.lock().unwrap().avail_features() & features::SIZE_MAX,
            0
        );
    }

    #[test]
    fn read_returns_file_content() {
        let mut f = fixture(false, 8192);
        let (len, status) = f.request(req_type::IN, 2, 1024, true);
        assert_eq!(status, req_status::OK);
        assert_eq!(len, 1025);
        let mut buf = vec![0u8; 1024];
        f.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        let expect: Vec<u8> = (1024..2048).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf, expect);
    }

    #[test]
    fn write_then_read_back() {
        let mut f = fixture(false, 8192);
        f.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let (len, status) = f.request(req_type::OUT, 15, 512, false);
        assert_eq!((len, status), (1, req_status::OK));
        let mut back = vec![0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(f.file.as_file(), &mut back, 15 * 512).unwrap();
        assert_eq!(back, vec![0xab; 512]);
        let (_, status) = f.request(req_type::FLUSH, 0, 0, false);
        // FLUSH with a zero-length data descriptor is still a flush.
        assert_eq!(status, req_status::OK);
    }

    #[test]
    fn read_only_disk_refuses_writes_with_ioerr() {
        let mut f = fixture(true, 8192);
        assert_ne!(f.blk.lock().unwrap().avail_features() & features::RO, 0);
        let (_, status) = f.request(req_type::OUT, 0, 512, false);
        assert_eq!(status, req_status::IOERR);
        let (_, status) = f.request(req_type::IN, 0, 512, true);
        assert_eq!(status, req_status::OK);
    }

    #[test]
    fn get_id_returns_serial() {
        let mut f = fixture(false, 4096);
        let (len, status) = f.request(req_type::GET_ID, 0, 20, true);
        assert_eq!((len, status), (21, req_status::OK));
        let mut id = [0u8; 20];
        f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..12], b"capsa-disk-0");
        assert_eq!(&id[12..], &[0u8; 8]);
    }

    #[test]
    fn unknown_type_is_unsupp() {
        let mut f = fixture(false, 4096);
        let (_, status) = f.request(0xdead, 0, 512, true);
        assert_eq!(status, req_status::UNSUPP);
    }

    #[test]
    fn sector_beyond_capacity_is_ioerr() {
        let mut f = fixture(false, 4096);
        assert_eq!(f.request(req_type::IN, 8, 512, true).1, req_status::IOERR);
        assert_eq!(f.request(req_type::IN, 7, 1024, true).1, req_status::IOERR);
        assert_eq!(
            f.request(req_type::IN, u64::MAX, 512, true).1,
            req_status::IOERR
        );
        assert_eq!(
            f.request(req_type::OUT, u64::MAX / 512 + 1, 512, false).1,
            req_status::IOERR
        );
        assert_eq!(f.request(req_type::IN, 7, 512, true).1, req_status::OK);
    }

    #[test]
    fn unaligned_length_is_ioerr() {
        let mut f = fixture(false, 4096);
        assert_eq!(f.request(req_type::IN, 0, 100, true).1, req_status::IOERR);
        assert_eq!(f.request(req_type::OUT, 0, 513, false).1, req_status::IOERR);
    }

    #[test]
    fn data_with_wrong_write_flag_is_ioerr() {
        let mut f = fixture(false, 4096);
        // A read whose data buffer is device-readable: nothing to read into.
        assert_eq!(f.request(req_type::IN, 0, 512, false).1, req_status::IOERR);
        // A write whose data buffer is device-writable: no data to write.
        let (len, status) = f.request(req_type::OUT, 0, 512, true);
        assert_eq!(status, req_status::IOERR);
        // The status went to the last writable byte; nothing else counted.
        assert_eq!(len, 1);
    }

    #[test]
    fn writable_header_is_ioerr() {
        let mut f = fixture(false, 4096);
        f.header(req_type::IN, 0);
        f.q.add_chain(&[(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)]);
        f.run().unwrap();
        assert_eq!(f.status(), req_status::IOERR);
    }

    #[test]
    fn too_short_chain_without_status_is_dropped() {
        let mut f = fixture(false, 4096);
        f.header(req_type::IN, 0);
        f.q.add_chain(&[(HDR, 16, false)]);
        assert_eq!(f.run(), Some((0, 0)));
        assert_eq!(f.blk.lock().unwrap().counters().no_status, 1);
    }

    #[test]
    fn short_header_is_ioerr() {
        let mut f = fixture(false, 4096);
        f.header(req_type::IN, 0);
        f.q.add_chain(&[(HDR, 8, false), (STATUS, 1, true)]);
        f.run().unwrap();
        assert_eq!(f.status(), req_status::IOERR);
    }

    #[test]
    fn descriptor_outside_memory_is_ioerr() {
        let mut f = fixture(false, 4096);
        f.header(req_type::IN, 0);
        f.q.add_chain(&[
            (HDR, 16, false),
            (MEM_SIZE - 256, 512, true),
            (STATUS, 1, true),
        ]);
        // The writable part is invalid as a whole: no status can be written.
        assert_eq!(f.run(), Some((0, 0)));
        f.header(req_type::OUT, 0);
        f.q.add_chain(&[
            (HDR, 16, false),
            (u64::MAX - 100, 512, false),
            (STATUS, 1, true),
        ]);
        f.run().unwrap();
        assert_eq!(f.status(), req_status::IOERR);
    }

    #[test]
    fn huge_descriptor_length_is_ioerr() {
        let mut f = fixture(false, 4096);
        f.header(req_type::OUT, 0);
        f.q.add_chain(&[
            (HDR, 16, false),
            (DATA, 0x8000_0000, false),
            (STATUS, 1, true),
        ]);
        f.run().unwrap();
        assert_eq!(f.status(), req_status::IOERR);
        // A chain longer than 2^32 bytes (§2.7.5.2) ends where it
        // overflows: the status descriptor is never reached.
        f.header(req_type::OUT, 0);
        f.q.add_chain(&[(HDR, 16, false), (DATA, u32::MAX, false), (STATUS, 1, true)]);
        assert_eq!(f.run(), Some((3, 0)));
        assert_eq!(f.status(), 0xff);
        assert_eq!(f.blk.lock().unwrap().counters().no_status, 1);
    }

    #[test]
    fn looping_chain_terminates() {
        let mut f = fixture(false, 4096);
        f.header(req_type::IN, 0);
        // 0 -> 1 -> 0 -> ... : the chain iterator stops after queue-size
        // descriptors.
        f.q.write_desc(0, HDR, 16, F_NEXT, 1);
        f.q.write_desc(1, DATA, 512, F_NEXT | F_WRITE, 0);
        f.q.publish(0);
        let (head, _) = f.run().unwrap();
        assert_eq!(head, 0);
        // The writable part (16 × 512 bytes) ends in a data byte, and the
        // header is re-read at each lap: the request is not valid data.
        assert!(f.blk.lock().unwrap().counters().errors <= 1);
    }

    #[test]
    fn long_chain_is_bounded_by_queue_size() {
        let mut f = fixture(false, 1 << 20);
        f.header(req_type::IN, 0);
        let mut bufs = vec![(HDR, 16u32, false)];
        for i in 0..14 {
            bufs.push((DATA + i * 512, 512, true));
        }
        bufs.push((STATUS, 1, true));
        f.q.add_chain(&bufs);
        let (_, len) = f.run().unwrap();
        assert_eq!(len, 14 * 512 + 1);
        assert_eq!(f.status(), req_status::OK);
    }

    #[test]
    fn head_index_out_of_range_fails_device() {
        let mut f = fixture(false, 4096);
        f.q.publish(500);
        f.evts[0].write(1).unwrap();
        run_until_idle(&mut f.em, 0);
        let b = f.blk.lock().unwrap();
        assert!(b.common.queues().unwrap().interrupt.needs_reset());
    }

    #[test]
    fn avail_index_jump_fails_device() {
        let mut f = fixture(false, 4096);
        f.q.set_avail_idx(17);
        assert_eq!(f.run(), None);
        let b = f.blk.lock().unwrap();
        assert!(b.common.queues().unwrap().broken);
        assert!(b.common.queues().unwrap().interrupt.needs_reset());
    }

    #[test]
    fn queue_notification_before_activation_is_ignored() {
        let blk = Block::from_file(tempfile::tempfile().unwrap(), false, b"x").unwrap();
        let blk = Arc::new(Mutex::new(blk));
        let mut em = event_manager(&blk);
        run_until_idle(&mut em, 0);
        blk.lock().unwrap().process_queue();
    }

    #[test]
    fn through_the_mmio_transport() {
        use crate::virtio::{attach, status};
        use crate::BusDevice;
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(4096).unwrap();
        let blk = Block::new(&BlockConfig {
            path: file.path().into(),
            read_only: false,
            serial: None,
        })
        .unwrap();
        let mem = guest_memory();
        let att = attach(blk, mem.clone()).unwrap();
        let mut em = TestEventManager::new().unwrap();
        use event_manager::SubscriberOps;
        em.add_subscriber(att.subscriber.clone());
        let mut t = att.transport.lock().unwrap();
        let w =
            |t: &mut crate::virtio::MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        let mut q = GuestQueue::new(&mem, 0x10000, 16);
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, q.desc as u32);
        w(&mut t, 0x90, q.avail as u32);
        w(&mut t, 0xa0, q.used as u32);
        w(&mut t, 0x44, 1);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        drop(t);
        run_until_idle(&mut em, 0);
        mem.write_obj(req_type::GET_ID, GuestAddress(HDR)).unwrap();
        q.add_chain(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
        // The guest's QueueNotify reaches the bus (no ioeventfd here).
        att.transport
            .lock()
            .unwrap()
            .write(0x50, &0u32.to_le_bytes());
        run_until_idle(&mut em, 0);
        assert_eq!(q.pop_used(), Some((0, 21)));
        assert!(att.irq_evt.read().unwrap() >= 1);
        let mut isr = [0u8; 4];
        att.transport.lock().unwrap().read(0x60, &mut isr);
        assert_eq!(isr[0] & 1, 1);
    }
}
