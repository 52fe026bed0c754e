//! Line framing: one JSON object per `\n`-terminated line, with a bound.
//!
//! [`LineReader`] never holds more than `max + CHUNK` bytes: a line longer than
//! the bound is reported once as [`Line::TooLong`] and its remaining bytes are
//! discarded up to the next `\n`, after which reading resumes normally. So a
//! peer that sends a huge line gets an error and keeps a usable connection, and
//! a peer that never sends `\n` costs bounded memory.

use std::io::{self, Read};

/// Bytes asked of the transport per `read` call.
const CHUNK: usize = 64 * 1024;

/// One result of [`LineReader::read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its `\n` (and without a trailing `\r`).
    Line(Vec<u8>),
    /// A line exceeded the bound; its bytes are being discarded.
    TooLong,
    /// The peer closed its write side (bytes of an unterminated last line
    /// are returned as a [`Line::Line`] first).
    Eof,
}

/// Bounded line reader over any byte stream.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
    eof: bool,
}

impl<R: Read> LineReader<R> {
    /// Wraps `inner`; lines longer than `max` bytes (without the `\n`) are
    /// rejected.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            max,
            discarding: false,
            eof: false,
        }
    }

    /// The bound on a line's length (bytes, without the `\n`).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Returns the underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Returns the underlying reader and the bytes read past the last line.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let leftover = if self.discarding {
            Vec::new()
        } else {
            self.buf
        };
        (self.inner, leftover)
    }

    /// Reads the next line. Errors are the transport's; `Interrupted` is retried.
    pub fn read_line(&mut self) -> io::Result<Line> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                if line.len() > self.max {
                    return Ok(Line::TooLong);
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Line::Line(line));
            }
            if self.discarding {
                self.buf.clear();
            } else if self.buf.len() > self.max {
                self.buf.clear();
                self.discarding = true;
                return Ok(Line::TooLong);
            }
            if self.eof {
                if self.buf.is_empty() || self.discarding {
                    self.buf.clear();
                    return Ok(Line::Eof);
                }
                return Ok(Line::Line(std::mem::take(&mut self.buf)));
            }
            let start = self.buf.len();
            self.buf.resize(start + CHUNK, 0);
            let n = loop {
                match self.inner.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut r = LineReader::new(&b"a\r\nbb\n\nlast"[..], 10);
        assert_eq!(r.read_line().unwrap(), Line::Line(b"a".to_vec()));
        assert_eq!(r.read_line().unwrap(), Line::Line(b"bb".to_vec()));
        assert_eq!(r.read_line().unwrap(), Line::Line(vec![]));
        assert_eq!(r.read_line().unwrap(), Line::Line(b"last".to_vec()));
        assert_eq!(r.read_line().unwrap(), Line::Eof);
    }

    #[test]
    fn too_long_line_is_skipped_and_reading_resumes() {
        let mut data = vec![b'x'; 200_000];
        data.extend_from_slice(b"\nok\n");
        let mut r = LineReader::new(&data[..], 1000);
        assert_eq!(r.read_line().unwrap(), Line::TooLong);
        assert_eq!(r.read_line().unwrap(), Line::Line(b"ok".to_vec()));
        assert_eq!(r.read_line().unwrap(), Line::Eof);
    }

    #[test]
    fn too_long_line_within_one_chunk() {
        let mut data = vec![b'y'; 50];
        data.extend_from_slice(b"\nz\n");
        let mut r = LineReader::new(&data[..], 10);
        assert_eq!(r.read_line().unwrap(), Line::TooLong);
        assert_eq!(r.read_line().unwrap(), Line::Line(b"z".to_vec()));
    }

    #[test]
    fn unterminated_huge_tail_ends_in_eof() {
        let data = vec![b'q'; 300_000];
        let mut r = LineReader::new(&data[..], 1000);
        assert_eq!(r.read_line().unwrap(), Line::TooLong);
        assert_eq!(r.read_line().unwrap(), Line::Eof);
    }
}
