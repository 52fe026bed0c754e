//! Fuzz harnesses (used by `devices/fuzz` and by a seeded stable test):
//! each takes arbitrary bytes as the whole guest memory — descriptor
//! tables, rings, headers and data — and runs a device over it. They must
//! never panic, hang or allocate without bound.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::block::Block;
use super::net::tap::SocketBackend;
use super::net::{features as net_features, Net, NetConfig};
use super::vsock::{Vsock, VsockDeviceConfig};
use super::{ActivateParams, GuestMemory, Interrupt, VirtioDevice};

/// Guest memory size of the harnesses, in bytes.
pub const FUZZ_MEM_SIZE: usize = 64 << 10;
const QSIZE: u16 = 16;

fn memory(data: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), FUZZ_MEM_SIZE)]).expect("memory");
    let n = data.len().min(FUZZ_MEM_SIZE);
    let _ = mem.write_slice(&data[..n], GuestAddress(0));
    mem
}

/// Queue `i`: descriptor table at `i * 0x1000`, avail ring at `+0x400`,
/// used ring at `+0x800`.
fn queue(i: u64) -> Queue {
    let mut q = Queue::new(QSIZE).expect("queue");
    let base = i * 0x1000;
    let _ = q.try_set_desc_table_address(GuestAddress(base));
    let _ = q.try_set_avail_ring_address(GuestAddress(base + 0x400));
    let _ = q.try_set_used_ring_address(GuestAddress(base + 0x800));
    q.set_ready(true);
    q
}

fn params(mem: &GuestMemory, n: u64) -> ActivateParams {
    ActivateParams {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        )),
        queues: (0..n).map(queue).collect(),
        queue_evts: (0..n)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect(),
    }
}

/// A 64 KiB in-memory disk.
fn disk() -> File {
    // SAFETY: the name is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"capsa-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and is owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(64 << 10).expect("set_len");
    f
}

/// virtio-blk: the request queue over `data`.
pub fn blk_request(data: &[u8]) {
    let mem = memory(data);
    let mut blk =
        Block::from_file(disk(), data.first().is_some_and(|b| b & 1 == 1), b"fuzz").expect("block");
    blk.activate(params(&mem, 1)).expect("activate");
    blk.process_queue();
    blk.process_queue();
}

/// virtio-vsock: the TX path (packet parsing, the muxer) and the RX path
/// over `data`.
pub fn vsock_packets(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "capsa-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mem = memory(data);
    let mut dev = Vsock::new(&VsockDeviceConfig {
        guest_cid: 3,
        uds_path: dir.clone(),
    })
    .expect("vsock");
    dev.activate(params(&mem, 3)).expect("activate");
    dev.process_tx();
    dev.process_rx();
    dev.process_tx();
    drop(dev);
    let _ = std::fs::remove_file(&dir);
}

/// virtio-net: the TX path (header checks, frames to the backend) over
/// `data`, then the RX path with frames the host sends (cut from the same
/// bytes). The first byte picks the features the driver acked.
pub fn net_tx(data: &[u8]) {
    let mem = memory(data);
    let (backend, peer) = SocketBackend::pair().expect("socketpair");
    let mut dev = Net::new(
        Box::new(backend),
        NetConfig {
            mac: [0x52, 0x54, 0, 0, 0, 1],
            mtu: 1500,
        },
    )
    .expect("net");
    let pick = data.first().copied().unwrap_or(0);
    let mut acked = super::VIRTIO_F_VERSION_1;
    if pick & 1 != 0 {
        acked |= net_features::CSUM | net_features::HOST_TSO4 | net_features::HOST_TSO6;
    }
    if pick & 2 != 0 {
        acked |= net_features::MRG_RXBUF;
    }
    dev.set_acked_features(acked);
    dev.activate(params(&mem, 2)).expect("activate");
    dev.process_tx();
    // Frames towards the guest: a few slices of the input.
    for chunk in data.chunks(1500).take(4) {
        // SAFETY: `chunk` is valid for reads of its length.
        unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&peer),
                chunk.as_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT,
            )
        };
    }
    dev.process_rx();
    dev.process_tx();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*, seeded: the same inputs on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Inputs that look like queues: small descriptor indices, lengths and
    /// addresses inside memory, so that the parsers are reached often.
    fn input(rng: &mut Rng) -> Vec<u8> {
        let mut d = vec![0u8; 0x3000];
        for b in d.iter_mut() {
            *b = rng.next() as u8;
        }
        for q in 0..3usize {
            let base = q * 0x1000;
            for i in 0..QSIZE as usize {
                let desc = base + 16 * i;
                let addr = 0x3000 + (rng.next() % 0xc000);
                d[desc..desc + 8].copy_from_slice(&addr.to_le_bytes());
                let len = (rng.next() % 0x1200) as u32;
                d[desc + 8..desc + 12].copy_from_slice(&len.to_le_bytes());
                d[desc + 12] &= 3;
                d[desc + 14] = (rng.next() % u64::from(QSIZE)) as u8;
                d[desc + 15] = 0;
            }
            d[base + 0x402] = (rng.next() % 20) as u8;
            d[base + 0x403] = 0;
            for i in 0..QSIZE as usize {
                d[base + 0x404 + 2 * i] = (rng.next() % u64::from(QSIZE)) as u8;
                d[base + 0x405 + 2 * i] = 0;
            }
        }
        // Plausible vsock headers in the data area.
        for _ in 0..16 {
            let at = 0x3000 + (rng.next() % 0xc000) as usize;
            if at + 44 < d.len() {
                d[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
                d[at + 8..at + 16].copy_from_slice(&2u64.to_le_bytes());
                d[at + 28] = 1;
                d[at + 30] = (rng.next() % 9) as u8;
            }
        }
        d
    }

    #[test]
    fn seeded_fuzz_blk_vsock_net() {
        let mut rng = Rng(0x5eed_ca95_a000);
        let start = std::time::Instant::now();
        let n = 300;
        for _ in 0..n {
            let d = input(&mut rng);
            blk_request(&d);
            vsock_packets(&d);
            net_tx(&d);
        }
        eprintln!(
            "seeded fuzz: {n} inputs x 3 targets in {:?}",
            start.elapsed()
        );
    }
}
