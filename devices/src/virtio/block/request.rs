//! One virtio-blk request (§5.2.6): a 16-byte device-readable header
//! (`type`, `reserved`, `sector`), data (device-readable for OUT,
//! device-writable for IN and GET_ID), and a final device-writable status
//! byte.
//!
//! The chain is read through virtio-queue's [`Reader`]/[`Writer`], so any
//! split of the header and data over descriptors works, and every
//! descriptor is checked against guest memory before use. The status is
//! the last byte of the device-writable part. What can go wrong maps to a
//! status byte in [`RequestError::status`]; a chain without a writable
//! byte cannot carry a status and is returned with length 0.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{Reader, Writer};

use super::{req_status, req_type, ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};
use crate::virtio::queue::Chain;
use crate::virtio::GuestMemory;

/// Size of the bounce buffer between guest memory and the file, in bytes.
/// Data moves through it in pieces of at most this size.
pub const BOUNCE_BUF_SIZE: usize = 64 << 10;

/// Most data bytes of one request: `seg_max` × `size_max` of the config
/// space, which a driver must not exceed (§5.2.4). A larger request is
/// answered `IOERR` before any byte moves, so that one request cannot
/// keep the event loop for gigabytes (issue 14 item 6).
pub const MAX_REQUEST_BYTES: usize =
    super::device::CONFIG_SEG_MAX as usize * super::device::CONFIG_SIZE_MAX as usize;

/// Header length in bytes (§5.2.6: le32 type, le32 reserved, le64 sector).
pub const HEADER_LEN: usize = 16;

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: u32,
    /// First sector (512-byte units).
    pub sector: u64,
}

impl RequestHeader {
    /// Parses the 16 header bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let mut t = [0u8; 4];
        t.copy_from_slice(&b[0..4]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[8..16]);
        Self {
            request_type: u32::from_le_bytes(t),
            sector: u64::from_le_bytes(s),
        }
    }
}

/// The disk a request runs against.
#[derive(Debug)]
pub struct Disk {
    /// The backing file.
    pub file: File,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// GET_ID answer, NUL-padded.
    pub serial: [u8; ID_BYTES],
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A descriptor is outside guest memory or the chain's lengths overflow.
    #[error("bad descriptor chain: {0}")]
    Chain(virtio_queue::Error),
    /// Fewer than 16 device-readable bytes for the header.
    #[error("request header too short")]
    HeaderTooShort,
    /// IN/OUT without data.
    #[error("request without data")]
    NoData,
    /// More data than [`MAX_REQUEST_BYTES`].
    #[error("request of {0} bytes is over seg_max x size_max")]
    TooLarge(usize),
    /// Data length not a multiple of 512 bytes.
    #[error("data length {0} not a multiple of 512")]
    UnalignedLength(usize),
    /// The range leaves the disk (or overflows).
    #[error("sectors {sector}+{count} beyond capacity {capacity}")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// Write to a read-only disk.
    #[error("write to read-only disk")]
    ReadOnly,
    /// Host I/O failed.
    #[error("host I/O: {0}")]
    Io(std::io::Error),
    /// Guest memory access failed midway.
    #[error("guest memory: {0}")]
    Memory(std::io::Error),
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte reported to the guest (§5.2.6).
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => req_status::UNSUPP,
            RequestError::Chain(_)
            | RequestError::HeaderTooShort
            | RequestError::NoData
            | RequestError::TooLarge(_)
            | RequestError::UnalignedLength(_)
            | RequestError::OutOfRange { .. }
            | RequestError::ReadOnly
            | RequestError::Io(_)
            | RequestError::Memory(_) => req_status::IOERR,
        }
    }
}

/// The outcome of one chain.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes written into the chain (data + status), for the used ring.
    pub used_len: u32,
    /// The status written, or `None` when the chain had no writable byte.
    pub status: Option<u8>,
    /// The error, if the request failed.
    pub error: Option<RequestError>,
    /// Data bytes moved between guest memory and the disk (or the
    /// serial), in either direction.
    pub bytes_moved: u64,
}

/// Parses and executes the request in `chain` against `disk`; writes the
/// status byte and returns what goes on the used ring.
pub fn handle(chain: Chain<'_>, mem: &GuestMemory, disk: &Disk) -> Outcome {
    let mut writer = match Writer::new(mem, chain.clone()) {
        Ok(w) if w.available_bytes() > 0 => w,
        Ok(_) => {
            return Outcome {
                used_len: 0,
                status: None,
                error: Some(RequestError::NoData),
                bytes_moved: 0,
            }
        }
        Err(e) => {
            return Outcome {
                used_len: 0,
                status: None,
                error: Some(RequestError::Chain(e)),
                bytes_moved: 0,
            }
        }
    };
    let data_len = writer.available_bytes() - 1;
    let mut status_writer = match writer.split_at(data_len) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                used_len: 0,
                status: None,
                error: Some(RequestError::Chain(e)),
                bytes_moved: 0,
            }
        }
    };
    let mut bytes_moved = 0;
    let result = Reader::new(mem, chain)
        .map_err(RequestError::Chain)
        .and_then(|mut reader| {
            let r = execute(&mut reader, &mut writer, disk);
            let read = reader.bytes_read().saturating_sub(HEADER_LEN);
            bytes_moved = (read + writer.bytes_written()) as u64;
            r
        });
    let (status, data_written, error) = match result {
        Ok(n) => (req_status::OK, n, None),
        Err(e) => (e.status(), 0, Some(e)),
    };
    if status_writer.write_all(&[status]).is_err() {
        return Outcome {
            used_len: 0,
            status: None,
            error,
            bytes_moved,
        };
    }
    Outcome {
        used_len: u32::try_from(data_written + 1).unwrap_or(u32::MAX),
        status: Some(status),
        error,
        bytes_moved,
    }
}

/// Runs the request; returns the data bytes written into the chain.
pub fn execute(
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    disk: &Disk,
) -> Result<usize, RequestError> {
    let mut hdr = [0u8; HEADER_LEN];
    if reader.available_bytes() < HEADER_LEN {
        return Err(RequestError::HeaderTooShort);
    }
    reader.read_exact(&mut hdr).map_err(RequestError::Memory)?;
    let hdr = RequestHeader::from_bytes(&hdr);
    match hdr.request_type {
        req_type::IN => {
            let len = bounded(writer.available_bytes())?;
            let offset = check_range(disk, hdr.sector, len)?;
            read_disk(disk, offset, len, writer)?;
            Ok(len)
        }
        req_type::OUT => {
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let len = bounded(reader.available_bytes())?;
            let offset = check_range(disk, hdr.sector, len)?;
            write_disk(disk, offset, len, reader)?;
            Ok(0)
        }
        req_type::FLUSH => {
            if !disk.read_only {
                disk.file.sync_data().map_err(RequestError::Io)?;
            }
            Ok(0)
        }
        req_type::GET_ID => {
            let n = writer.available_bytes().min(ID_BYTES);
            writer
                .write_all(&disk.serial[..n])
                .map_err(RequestError::Memory)?;
            Ok(n)
        }
        t => Err(RequestError::Unsupported(t)),
    }
}

/// `len` if a request may move that many data bytes.
fn bounded(len: usize) -> Result<usize, RequestError> {
    if len > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(len));
    }
    Ok(len)
}

/// Checks that `len` bytes from `sector` fit on the disk; returns the byte
/// offset.
pub fn check_range(disk: &Disk, sector: u64, len: usize) -> Result<u64, RequestError> {
    if len == 0 {
        return Err(RequestError::NoData);
    }
    if len as u64 % SECTOR_SIZE != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    let count = len as u64 >> SECTOR_SHIFT;
    let out_of_range = RequestError::OutOfRange {
        sector,
        count,
        capacity: disk.capacity,
    };
    match sector.checked_add(count) {
        Some(end) if end <= disk.capacity => {}
        _ => return Err(out_of_range),
    }
    sector
        .checked_shl(SECTOR_SHIFT)
        .filter(|o| o >> SECTOR_SHIFT == sector)
        .ok_or(out_of_range)
}

fn read_disk(
    disk: &Disk,
    mut offset: u64,
    len: usize,
    w: &mut Writer<'_>,
) -> Result<(), RequestError> {
    let mut buf = vec![0u8; len.min(BOUNCE_BUF_SIZE)];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        disk.file
            .read_exact_at(&mut buf[..n], offset)
            .map_err(RequestError::Io)?;
        w.write_all(&buf[..n]).map_err(RequestError::Memory)?;
        offset += n as u64;
        left -= n;
    }
    Ok(())
}

fn write_disk(
    disk: &Disk,
    mut offset: u64,
    len: usize,
    r: &mut Reader<'_>,
) -> Result<(), RequestError> {
    let mut buf = vec![0u8; len.min(BOUNCE_BUF_SIZE)];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        r.read_exact(&mut buf[..n]).map_err(RequestError::Memory)?;
        disk.file
            .write_all_at(&buf[..n], offset)
            .map_err(RequestError::Io)?;
        offset += n as u64;
        left -= n;
    }
    Ok(())
}
