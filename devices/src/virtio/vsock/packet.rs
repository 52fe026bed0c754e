//! vsock packets (§5.10.6): a 44-byte little-endian header
//! (`struct virtio_vsock_hdr`, `include/uapi/linux/virtio_vsock.h`)
//! followed by `len` bytes of payload (RW packets only).
//!
//! TX chains (driver → device) are parsed by [`parse_tx`]; RX chains
//! (device → driver) are filled by [`write_rx`]. Both go through
//! virtio-queue's `Reader`/`Writer`, so every descriptor is checked against
//! guest memory and any split of header and payload over descriptors works.

use std::io::{Read, Write};

use virtio_queue::{Reader, Writer};

use super::MAX_PKT_PAYLOAD;
use crate::virtio::queue::Chain;
use crate::virtio::GuestMemory;

/// Header length in bytes.
pub const HDR_LEN: usize = 44;

/// The packet header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Socket type ([`super::TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`super::op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN flags).
    pub flags: u32,
    /// The sender's receive buffer size in bytes.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer (wrapping).
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes the wire format.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the wire format.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet the guest sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// The header.
    pub hdr: VsockHeader,
    /// The payload: `hdr.len` bytes for RW, empty otherwise.
    pub payload: Vec<u8>,
}

/// Why a TX chain was refused (the chain is returned unused and counted).
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A descriptor is outside guest memory, or lengths overflow.
    #[error("bad descriptor chain: {0}")]
    Chain(virtio_queue::Error),
    /// Fewer than 44 device-readable bytes.
    #[error("header too short: {0} bytes")]
    HeaderTooShort(usize),
    /// `len` above [`MAX_PKT_PAYLOAD`].
    #[error("payload length {0} too large")]
    PayloadTooLarge(u32),
    /// `len` larger than the bytes in the chain.
    #[error("payload length {len} but only {avail} bytes in the chain")]
    PayloadTooShort {
        /// Header's `len`.
        len: u32,
        /// Bytes available after the header.
        avail: usize,
    },
    /// RX buffer too small for a header.
    #[error("rx buffer of {0} bytes cannot hold a header")]
    RxBufferTooSmall(usize),
    /// Guest memory access failed midway.
    #[error("guest memory: {0}")]
    Memory(std::io::Error),
}

/// Parses the packet in a TX chain.
pub fn parse_tx(chain: Chain<'_>, mem: &GuestMemory) -> Result<TxPacket, PacketError> {
    let mut r = Reader::new(mem, chain).map_err(PacketError::Chain)?;
    parse_tx_reader(&mut r)
}

/// Parses a packet from any reader of device-readable bytes.
pub fn parse_tx_reader(r: &mut Reader<'_>) -> Result<TxPacket, PacketError> {
    let avail = r.available_bytes();
    if avail < HDR_LEN {
        return Err(PacketError::HeaderTooShort(avail));
    }
    let mut b = [0u8; HDR_LEN];
    r.read_exact(&mut b).map_err(PacketError::Memory)?;
    let hdr = VsockHeader::from_bytes(&b);
    let mut payload = Vec::new();
    if hdr.op == super::op::RW {
        if hdr.len as usize > MAX_PKT_PAYLOAD {
            return Err(PacketError::PayloadTooLarge(hdr.len));
        }
        let avail = r.available_bytes();
        if hdr.len as usize > avail {
            return Err(PacketError::PayloadTooShort {
                len: hdr.len,
                avail,
            });
        }
        payload.resize(hdr.len as usize, 0);
        r.read_exact(&mut payload).map_err(PacketError::Memory)?;
    }
    Ok(TxPacket { hdr, payload })
}

/// The payload room of an RX chain: device-writable bytes after the
/// header, capped at [`MAX_PKT_PAYLOAD`].
pub fn rx_room(w: &Writer<'_>) -> Result<usize, PacketError> {
    let avail = w.available_bytes();
    if avail < HDR_LEN {
        return Err(PacketError::RxBufferTooSmall(avail));
    }
    Ok((avail - HDR_LEN).min(MAX_PKT_PAYLOAD))
}

/// Writes `hdr` (with `len` set to the payload's length) and `payload`;
/// returns the bytes written. The caller sized the payload with
/// [`rx_room`].
pub fn write_rx(w: &mut Writer<'_>, hdr: &VsockHeader, payload: &[u8]) -> Result<u32, PacketError> {
    let mut hdr = *hdr;
    hdr.len = payload.len() as u32;
    w.write_all(&hdr.to_bytes()).map_err(PacketError::Memory)?;
    w.write_all(payload).map_err(PacketError::Memory)?;
    Ok((HDR_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 5,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 77,
        };
        assert_eq!(VsockHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(&h.to_bytes()[24..28], &5u32.to_le_bytes());
    }
}
