//! The transmit path (§5.1.6.2): one descriptor chain of the TX queue
//! holds one header + frame in its device-readable descriptors.

use std::io::Read;

use virtio_queue::Reader;

use super::{features, gso, hdr_flags, MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::virtio::queue::Chain;
use crate::virtio::GuestMemory;

/// Why a TX chain was not sent. Each is the guest's fault; the chain is
/// returned and counted, the device goes on.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// A descriptor lies outside guest memory, or the lengths overflow.
    #[error("descriptor chain unusable: {0}")]
    Chain(virtio_queue::Error),
    /// Fewer readable bytes than a header and an Ethernet header.
    #[error("{0} bytes is too short for a frame")]
    TooShort(usize),
    /// More readable bytes than [`MAX_BUFFER_LEN`].
    #[error("{0} bytes is more than the largest frame ({MAX_BUFFER_LEN})")]
    TooLong(usize),
    /// Reading guest memory failed.
    #[error("cannot read the chain: {0}")]
    Read(std::io::Error),
    /// The header asks for something the driver did not negotiate
    /// (§5.1.6.2.1).
    #[error("header: {0}")]
    Header(&'static str),
}

/// Length of an Ethernet header, the shortest frame the device forwards.
const ETH_HLEN: usize = 14;

/// Copies the readable part of `chain` into `buf` (at least
/// [`MAX_BUFFER_LEN`] bytes) and checks its header against `acked`
/// features; returns the length of header + frame.
pub fn read_chain(
    mem: &GuestMemory,
    chain: Chain<'_>,
    buf: &mut [u8],
    acked: u64,
) -> Result<usize, TxError> {
    let mut reader = Reader::new(mem, chain).map_err(TxError::Chain)?;
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN + ETH_HLEN {
        return Err(TxError::TooShort(len));
    }
    if len > MAX_BUFFER_LEN || len > buf.len() {
        return Err(TxError::TooLong(len));
    }
    reader.read_exact(&mut buf[..len]).map_err(TxError::Read)?;
    check_header(&buf[..VNET_HDR_LEN], acked)?;
    Ok(len)
}

/// §5.1.6.2.1: the driver sets `NEEDS_CSUM` only with `VIRTIO_NET_F_CSUM`,
/// never `DATA_VALID` or `RSC_INFO`, and a GSO type only with the
/// matching `HOST_*` feature. (What remains — offsets inside the frame,
/// segment sizes — the host kernel checks when the frame is written to
/// the TAP.)
pub fn check_header(hdr: &[u8], acked: u64) -> Result<(), TxError> {
    let flags = hdr[0];
    let gso_type = hdr[1];
    if flags & !hdr_flags::NEEDS_CSUM != 0 {
        return Err(TxError::Header("flags other than NEEDS_CSUM"));
    }
    if flags & hdr_flags::NEEDS_CSUM != 0 && acked & features::CSUM == 0 {
        return Err(TxError::Header("NEEDS_CSUM without VIRTIO_NET_F_CSUM"));
    }
    let needed = match gso_type {
        gso::NONE => return Ok(()),
        gso::TCPV4 => features::HOST_TSO4,
        gso::TCPV6 => features::HOST_TSO6,
        _ => return Err(TxError::Header("unsupported gso_type")),
    };
    if acked & needed == 0 {
        return Err(TxError::Header("gso_type without its HOST_TSO feature"));
    }
    if flags & hdr_flags::NEEDS_CSUM == 0 {
        return Err(TxError::Header("a GSO frame without NEEDS_CSUM"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso_type;
        h
    }

    #[test]
    fn header_rules() {
        let all = features::CSUM | features::HOST_TSO4 | features::HOST_TSO6;
        assert!(check_header(&hdr(0, gso::NONE), 0).is_ok());
        assert!(check_header(&hdr(hdr_flags::NEEDS_CSUM, gso::NONE), all).is_ok());
        assert!(check_header(&hdr(hdr_flags::NEEDS_CSUM, gso::TCPV4), all).is_ok());
        assert!(check_header(&hdr(hdr_flags::NEEDS_CSUM, gso::TCPV6), all).is_ok());
        // Not negotiated.
        assert!(check_header(&hdr(hdr_flags::NEEDS_CSUM, gso::NONE), 0).is_err());
        assert!(check_header(&hdr(hdr_flags::NEEDS_CSUM, gso::TCPV4), features::CSUM).is_err());
        // Never from a driver.
        assert!(check_header(&hdr(hdr_flags::DATA_VALID, gso::NONE), all).is_err());
        assert!(check_header(&hdr(0x80, gso::NONE), all).is_err());
        // UDP, ECN and unknown types are not offered.
        for t in [3u8, 5, gso::TCPV4 | gso::ECN, 0x7f] {
            assert!(check_header(&hdr(hdr_flags::NEEDS_CSUM, t), all).is_err());
        }
        // GSO needs a partial checksum.
        assert!(check_header(&hdr(0, gso::TCPV4), all).is_err());
    }
}
