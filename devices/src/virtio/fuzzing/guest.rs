//! Guest memory built from fuzz input: split virtqueues (virtio 1.2 §2.7)
//! whose descriptor chains — direct, or through indirect tables (§2.7.5.3,
//! `VIRTQ_DESC_F_INDIRECT`) — are decoded from the input, so that short
//! inputs already reach the devices' parsers with real headers.
//!
//! # Layout of the 64 KiB of guest memory
//!
//! | range | what |
//! |---|---|
//! | `q * 0x1000` (q < 3) | queue q: descriptor table (16 × 16 bytes) |
//! | `q * 0x1000 + 0x400` | queue q: available ring |
//! | `q * 0x1000 + 0x800` | queue q: used ring |
//! | `0x3000..0x4000` | indirect tables, 0x100 bytes (16 descriptors) each |
//! | `0x4000..0x10000` | buffers, allocated in input order |
//!
//! # Input format, per queue (read by [`decode_queue`])
//!
//! `n_chains` (byte, mod 9); per chain `n_desc` (byte, 1 + mod 4), then
//! per descriptor a *kind* byte:
//! - bit 0: device-writable (`VIRTQ_DESC_F_WRITE`);
//! - bit 1: an indirect table: the descriptor points at the next free table
//!   whose `1 + byte mod 4` descriptors follow (each decoded like this one,
//!   bit 1 then meaning a nested indirect flag, which §2.7.5.3.1 forbids);
//! - bits 2-3: the length: 0 → one byte, 1 → `u16 mod 0x1000`, 2 → 44 +
//!   one byte (a vsock header and a little), 3 → a raw `u32`;
//! - bit 4: a wild address (a raw `u64`) instead of a fresh buffer;
//! - bit 5: a wild `next` index (one byte) instead of the next slot;
//! - bit 6: raw flags (a `u16`) instead of the ones the bits above give;
//!
//! then, for a readable descriptor with a fresh buffer, its contents
//! (`len` bytes of input, capped at what is left). After the chains, one
//! byte: bit 7 set → the available index is a raw `u16` that follows.
//! Missing input reads as zero bytes.

use vm_memory::{Bytes, GuestAddress};

use super::super::GuestMemory;

/// Guest memory size, in bytes.
pub const MEM_SIZE: usize = 64 << 10;
/// Queue size of every harness queue.
pub const QSIZE: u16 = 16;
/// First indirect table.
const INDIRECT_BASE: u64 = 0x3000;
/// Bytes per indirect table (16 descriptors).
const INDIRECT_SLOT: u64 = 0x100;
/// First buffer byte.
const DATA_BASE: u64 = 0x4000;

/// `VIRTQ_DESC_F_NEXT`, `VIRTQ_DESC_F_WRITE`, `VIRTQ_DESC_F_INDIRECT`
/// (§2.7.5, `include/uapi/linux/virtio_ring.h`).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Descriptor kind bits (see the module docs).
pub mod kind {
    /// Device-writable.
    pub const WRITE: u8 = 1;
    /// Points at an indirect table.
    pub const INDIRECT: u8 = 2;
    /// Length: one byte.
    pub const LEN_BYTE: u8 = 0;
    /// Length: a `u16` mod 0x1000.
    pub const LEN_U16: u8 = 1 << 2;
    /// Length: 44 + one byte.
    pub const LEN_HDR: u8 = 2 << 2;
    /// Length: a raw `u32`.
    pub const LEN_RAW: u8 = 3 << 2;
    /// A raw `u64` address.
    pub const WILD_ADDR: u8 = 1 << 4;
    /// A raw `next` index.
    pub const WILD_NEXT: u8 = 1 << 5;
    /// Raw flags.
    pub const RAW_FLAGS: u8 = 1 << 6;
}

/// The input, read front to back; reads past its end give zeroes.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    /// The next `N` bytes, zero-padded past the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in &mut a {
            *b = self.byte();
        }
        a
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(end - start);
        &self.data[start..end]
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }
}

/// Where the decoder writes: the memory and its allocators.
pub struct Builder<'m> {
    mem: &'m GuestMemory,
    next_data: u64,
    next_table: u64,
}

impl<'m> Builder<'m> {
    /// A builder over `mem` (of [`MEM_SIZE`] bytes).
    pub fn new(mem: &'m GuestMemory) -> Self {
        Self {
            mem,
            next_data: DATA_BASE,
            next_table: INDIRECT_BASE,
        }
    }

    /// A fresh buffer of `len` bytes, clipped to the end of memory (the
    /// descriptor keeps its length: a buffer running off the end is a case
    /// to try too).
    fn alloc(&mut self, len: u32) -> u64 {
        let at = self.next_data;
        self.next_data = (at + u64::from(len)).min(MEM_SIZE as u64);
        at
    }

    fn write_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write_slice(&d, GuestAddress(at));
    }

    /// Decodes one descriptor (module docs) into slot `index` of the table
    /// at `table`; `more` says whether the chain goes on at `index + 1`.
    fn descriptor(&mut self, input: &mut Input, table: u64, index: u16, more: bool, depth: u8) {
        let k = input.byte();
        let mut flags = if k & kind::WRITE != 0 { F_WRITE } else { 0 };
        let mut next = index.wrapping_add(1);
        if k & kind::WILD_NEXT != 0 {
            next = u16::from(input.byte());
        }
        if more {
            flags |= F_NEXT;
        }
        if k & kind::INDIRECT != 0 && depth == 0 {
            let slot = self.next_table;
            let n = 1 + input.byte() % 4;
            let len = u32::from(n) * 16;
            if slot + INDIRECT_SLOT <= DATA_BASE {
                self.next_table += INDIRECT_SLOT;
                for i in 0..u16::from(n) {
                    self.descriptor(input, slot, i, i + 1 < u16::from(n), depth + 1);
                }
            }
            if k & kind::RAW_FLAGS != 0 {
                flags = input.u16();
            }
            return self.write_desc(
                table + 16 * u64::from(index),
                slot,
                len,
                flags | F_INDIRECT,
                next,
            );
        }
        if k & kind::INDIRECT != 0 {
            flags |= F_INDIRECT;
        }
        let len = match k & (3 << 2) {
            kind::LEN_BYTE => u32::from(input.byte()),
            kind::LEN_U16 => u32::from(input.u16() % 0x1000),
            kind::LEN_HDR => 44 + u32::from(input.byte()),
            _ => input.u32(),
        };
        if k & kind::RAW_FLAGS != 0 {
            flags = input.u16();
        }
        let addr = if k & kind::WILD_ADDR != 0 {
            input.u64()
        } else {
            let at = self.alloc(len);
            if flags & F_WRITE == 0 {
                let room = (MEM_SIZE as u64 - at).min(u64::from(len)) as usize;
                let content = input.bytes(room);
                let _ = self.mem.write_slice(content, GuestAddress(at));
            }
            at
        };
        self.write_desc(table + 16 * u64::from(index), addr, len, flags, next);
    }

    /// Decodes queue `q`'s chains and available ring from `input`.
    pub fn decode_queue(&mut self, input: &mut Input, q: u64) {
        let base = q * 0x1000;
        let n_chains = input.byte() % 9;
        let mut slot: u16 = 0;
        let mut heads = Vec::new();
        for _ in 0..n_chains {
            if slot >= QSIZE {
                break;
            }
            heads.push(slot);
            let n = 1 + u16::from(input.byte() % 4);
            let n = n.min(QSIZE - slot);
            for i in 0..n {
                self.descriptor(input, base, slot, i + 1 < n, 0);
                slot += 1;
            }
        }
        let mut idx = heads.len() as u16;
        if input.byte() & 0x80 != 0 {
            idx = input.u16();
        }
        for (i, h) in heads.iter().enumerate() {
            let _ = self
                .mem
                .write_obj(*h, GuestAddress(base + 0x404 + 2 * i as u64));
        }
        let _ = self.mem.write_obj(idx, GuestAddress(base + 0x402));
    }
}

/// Zeroed guest memory of [`MEM_SIZE`] bytes.
pub fn zeroed_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("fuzz guest memory")
}

/// Memory whose first bytes are `raw` (the harnesses' "raw" mode: any
/// ring, index and descriptor value, as the first harnesses did).
pub fn raw_memory(raw: &[u8]) -> GuestMemory {
    let mem = zeroed_memory();
    let n = raw.len().min(MEM_SIZE);
    let _ = mem.write_slice(&raw[..n], GuestAddress(0));
    mem
}

/// Memory with queues `order` (indices < 3) decoded from `input` in that
/// order.
pub fn structured_memory(input: &mut Input, order: &[u64]) -> GuestMemory {
    let mem = zeroed_memory();
    let mut b = Builder::new(&mem);
    for &q in order {
        b.decode_queue(input, q);
    }
    mem
}

/// The encoder of the format above, for seeds and tests.
#[cfg(test)]
pub mod encode {
    use super::kind;

    /// One descriptor to encode.
    #[derive(Clone, Debug)]
    pub enum Desc {
        /// A readable buffer with these contents.
        Read(Vec<u8>),
        /// A writable buffer of this many bytes (< 0x1000).
        Write(u16),
        /// An indirect table of 1 to 4 descriptors.
        Indirect(Vec<Desc>),
    }

    fn desc(out: &mut Vec<u8>, d: &Desc) {
        match d {
            Desc::Read(content) => {
                out.push(kind::LEN_U16);
                out.extend_from_slice(&(content.len() as u16).to_le_bytes());
                out.extend_from_slice(content);
            }
            Desc::Write(len) => {
                out.push(kind::LEN_U16 | kind::WRITE);
                out.extend_from_slice(&len.to_le_bytes());
            }
            Desc::Indirect(inner) => {
                out.push(kind::INDIRECT);
                out.push((inner.len() - 1) as u8);
                for d in inner {
                    desc(out, d);
                }
            }
        }
    }

    /// Appends one queue holding `chains` (at most 8, each of 1 to 4
    /// descriptors).
    pub fn queue(out: &mut Vec<u8>, chains: &[Vec<Desc>]) {
        out.push(chains.len() as u8);
        for c in chains {
            out.push((c.len() - 1) as u8);
            for d in c {
                desc(out, d);
            }
        }
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::{Queue, QueueOwnedT, QueueT};

    use super::encode::{queue, Desc};
    use super::*;

    fn ready_queue(q: u64) -> Queue {
        let mut queue = Queue::new(QSIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(q * 0x1000))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(q * 0x1000 + 0x400))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(q * 0x1000 + 0x800))
            .unwrap();
        queue.set_ready(true);
        queue
    }

    /// Decoding what the encoder wrote gives the chains back, also through
    /// an indirect table (what the first harnesses never built).
    #[test]
    fn encoded_chains_decode_to_the_same_chains() {
        let mut data = Vec::new();
        queue(
            &mut data,
            &[
                vec![Desc::Read(b"header".to_vec()), Desc::Write(8)],
                vec![Desc::Indirect(vec![
                    Desc::Read(b"xy".to_vec()),
                    Desc::Write(3),
                ])],
            ],
        );
        let mem = structured_memory(&mut Input::new(&data), &[0]);
        let mut q = ready_queue(0);
        let mut chains = q.iter(&mem).unwrap();
        let c0: Vec<_> = chains.next().unwrap().collect();
        assert_eq!((c0.len(), c0[0].len(), c0[1].is_write_only()), (2, 6, true));
        let mut got = [0u8; 6];
        mem.read_slice(&mut got, c0[0].addr()).unwrap();
        assert_eq!(&got, b"header");
        let c1: Vec<_> = chains.next().unwrap().collect();
        assert_eq!(c1.len(), 2);
        assert_eq!(
            (c1[0].len(), c1[1].len(), c1[1].is_write_only()),
            (2, 3, true)
        );
        assert!(c1[0].addr().0 >= DATA_BASE);
        assert!(chains.next().is_none());
    }
}
