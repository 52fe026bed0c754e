//! The snapshot state file: a 32-byte header, then the state serialized
//! with `postcard` (serde, compact, varint lengths).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic [`MAGIC`] `CAPSASNP` |
//! | 8 | 2 | format major version, little endian |
//! | 10 | 2 | format minor version, little endian |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | payload length in bytes, little endian (at most [`MAX_PAYLOAD`]) |
//! | 24 | 8 | CRC-64/XZ of the payload, little endian |
//! | 32 | n | payload |
//!
//! A reader refuses another major version (with both versions in the
//! error); a newer minor version of the same major is read (minor versions
//! only add what an older reader may ignore). Nothing is allocated from a
//! length before it is checked against the file's real size and the bound.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of a snapshot state file.
pub const MAGIC: [u8; 8] = *b"CAPSASNP";
/// Format major version written; a reader refuses any other.
pub const VERSION_MAJOR: u16 = 1;
/// Format minor version written.
pub const VERSION_MINOR: u16 = 0;
/// Header length in bytes.
pub const HEADER_LEN: usize = 32;
/// Largest payload accepted, bytes (a VM of 32 vCPUs saves well under
/// 1 MiB).
pub const MAX_PAYLOAD: u64 = 16 << 20;

const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// Errors reading or writing a state file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("not a capsa snapshot (bad magic)")]
    Magic,
    /// Another major version.
    #[error("snapshot format version {found_major}.{found_minor} is not supported: this capsa reads version {VERSION_MAJOR}.x (writes {VERSION_MAJOR}.{VERSION_MINOR})")]
    Version {
        /// The file's major version.
        found_major: u16,
        /// The file's minor version.
        found_minor: u16,
    },
    /// The file is shorter or longer than its header says, or too large.
    #[error("snapshot state is truncated or malformed: {0}")]
    Length(String),
    /// The payload's checksum does not match.
    #[error("snapshot state is corrupt: checksum {found:#018x}, header says {expected:#018x}")]
    Checksum {
        /// Computed over the payload.
        found: u64,
        /// From the header.
        expected: u64,
    },
    /// The payload does not decode (or the state does not encode).
    #[error("snapshot state does not decode: {0}")]
    Codec(postcard::Error),
}

/// `state` as a complete file: header and payload.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_stdvec(state).map_err(FormatError::Codec)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    out.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&CRC.checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks a complete file (magic, version, length, checksum) and decodes
/// its payload.
pub fn decode<T: DeserializeOwned>(file: &[u8]) -> Result<T, FormatError> {
    let header = file.get(..HEADER_LEN).ok_or_else(|| {
        FormatError::Length(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            file.len()
        ))
    })?;
    if header[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (major, minor) = (u16_at(8), u16_at(10));
    if major != VERSION_MAJOR {
        return Err(FormatError::Version {
            found_major: major,
            found_minor: minor,
        });
    }
    let len = u64_at(16);
    let payload = &file[HEADER_LEN..];
    if len > MAX_PAYLOAD || len != payload.len() as u64 {
        return Err(FormatError::Length(format!(
            "header says {len} payload bytes, the file has {} (at most {MAX_PAYLOAD})",
            payload.len()
        )));
    }
    let (found, expected) = (CRC.checksum(payload), u64_at(24));
    if found != expected {
        return Err(FormatError::Checksum { found, expected });
    }
    postcard::from_bytes(payload).map_err(FormatError::Codec)
}

/// Reads and decodes the state file at `path` (at most
/// [`HEADER_LEN`] + [`MAX_PAYLOAD`] bytes are read).
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let io = |source| FormatError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(HEADER_LEN as u64 + MAX_PAYLOAD + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    decode(&bytes)
}

/// Encodes `state` and writes it to `path` through a temporary file in the
/// same directory, renamed into place once complete.
pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<(), FormatError> {
    let io = |source| FormatError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = encode(state)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vm".into(),
            values: vec![1, 2, 3, u64::MAX],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"CAPSASNP");
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            let e = decode::<Sample>(&bytes[..len]).unwrap_err();
            assert!(matches!(e, FormatError::Length(_)), "{len}: {e}");
        }
    }

    #[test]
    fn every_flipped_payload_byte_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for i in HEADER_LEN..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let e = decode::<Sample>(&b).unwrap_err();
            assert!(matches!(e, FormatError::Checksum { .. }), "{i}: {e}");
        }
    }

    #[test]
    fn other_major_version_is_refused_naming_both() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[8..10].copy_from_slice(&(VERSION_MAJOR + 1).to_le_bytes());
        let e = decode::<Sample>(&bytes).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}.0", VERSION_MAJOR + 1))
                && e.contains(&format!("{VERSION_MAJOR}.x")),
            "{e}"
        );
    }

    #[test]
    fn newer_minor_version_is_read() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[10..12].copy_from_slice(&(VERSION_MINOR + 1).to_le_bytes());
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn bad_magic_and_huge_length_are_refused() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[0] = b'X';
        assert!(matches!(decode::<Sample>(&bytes), Err(FormatError::Magic)));
        let mut bytes = encode(&sample()).unwrap();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(FormatError::Length(_))
        ));
    }

    /// A payload with a valid checksum but hostile content (a length
    /// prefix of 2^60 elements) fails to decode without allocating it.
    #[test]
    fn hostile_lengths_inside_a_valid_checksum_do_not_allocate() {
        let payload = [0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        bytes.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&CRC.checksum(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            decode::<Vec<u64>>(&bytes),
            Err(FormatError::Codec(_))
        ));
    }
}
