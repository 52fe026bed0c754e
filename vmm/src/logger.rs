//! Log files that a guest can make the VMM write: the guest's serial
//! console (`console.log`) and the VMM's own log (`vmm.log`, whose
//! warnings a guest can trigger again and again). Each is written through
//! a [`CappedWriter`], so that a guest can neither fill the host's disk
//! (or a tmpfs `/run`, i.e. host RAM) through them nor kill the VMM: past
//! a sustained rate or a total size, bytes are dropped and counted, never
//! an error. This replaces the role `RLIMIT_FSIZE` had for these files
//! (docs/runtime.md, "The VMM process runs in a jail").

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Limits of one capped log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Most bytes this writer puts in the file, notes included.
    pub max_bytes: u64,
    /// Sustained rate, bytes per second (a token bucket refilled at this
    /// rate).
    pub rate_bytes_per_sec: u64,
    /// Bytes that may be written at once after a quiet period (the
    /// bucket's size).
    pub burst_bytes: u64,
}

/// Limits of the guest's console log: a guest kernel with `quiet` and the
/// agent print a few KiB per boot; a panic a few more.
pub const CONSOLE_LOG_LIMITS: LogLimits = LogLimits {
    max_bytes: 16 << 20,
    rate_bytes_per_sec: 32 << 10,
    burst_bytes: 1 << 20,
};

/// Limits of a capsa process's own log (`--log`): room for a debug log
/// (`CAPSA_LOG=debug`) of a whole boot in one burst.
pub const PROCESS_LOG_LIMITS: LogLimits = LogLimits {
    max_bytes: 16 << 20,
    rate_bytes_per_sec: 64 << 10,
    burst_bytes: 4 << 20,
};

/// Room kept below `max_bytes` for the notes that say what was dropped.
const NOTE_RESERVE: u64 = 512;

/// Bytes a [`CappedWriter`] dropped (shared with whoever wants to report
/// them).
#[derive(Debug, Clone, Default)]
pub struct DroppedBytes(Arc<AtomicU64>);

impl DroppedBytes {
    /// Bytes dropped so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// A [`Write`] that passes bytes on to `inner` within [`LogLimits`] and
/// drops the rest. It never fails and never blocks longer than `inner`:
/// bytes over the rate, over the size, or that `inner` refuses (`EFBIG`,
/// `ENOSPC`, ...) are counted in [`DroppedBytes`]. When output flows
/// again after a drop, a line `[capsa: N bytes of NAME dropped ...]` says
/// how much is missing; when the size cap is reached, a last line says so.
#[derive(Debug)]
pub struct CappedWriter<W: Write> {
    inner: W,
    name: &'static str,
    limits: LogLimits,
    written: u64,
    tokens: f64,
    last_refill: Instant,
    dropped: DroppedBytes,
    /// Dropped since the last note.
    unreported: u64,
    full: bool,
}

impl<W: Write> CappedWriter<W> {
    /// Wraps `inner`; `name` appears in the notes (`console.log`).
    pub fn new(inner: W, name: &'static str, limits: LogLimits) -> Self {
        Self::new_at(inner, name, limits, Instant::now())
    }

    fn new_at(inner: W, name: &'static str, limits: LogLimits, now: Instant) -> Self {
        Self {
            inner,
            name,
            limits,
            written: 0,
            tokens: limits.burst_bytes as f64,
            last_refill: now,
            dropped: DroppedBytes::default(),
            unreported: 0,
            full: false,
        }
    }

    /// The counter of dropped bytes.
    pub fn dropped(&self) -> DroppedBytes {
        self.dropped.clone()
    }

    /// Bytes written to `inner` so far, notes included.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn drop_bytes(&mut self, n: usize) {
        self.dropped.add(n as u64);
        self.unreported += n as u64;
    }

    /// Writes `bytes` to `inner` whole or counts them dropped.
    fn put(&mut self, bytes: &[u8]) -> bool {
        match self.inner.write_all(bytes) {
            Ok(()) => {
                self.written += bytes.len() as u64;
                true
            }
            Err(_) => {
                // How much of it went out is unknown: count all as
                // dropped, never as written (the cap stays a bound).
                self.written += bytes.len() as u64;
                self.drop_bytes(bytes.len());
                false
            }
        }
    }

    fn note(&mut self, text: String) {
        if self.written + text.len() as u64 <= self.limits.max_bytes {
            self.put(text.as_bytes());
        }
    }

    fn write_at(&mut self, buf: &[u8], now: Instant) {
        if buf.is_empty() {
            return;
        }
        if self.full {
            return self.drop_bytes(buf.len());
        }
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * self.limits.rate_bytes_per_sec as f64)
            .min(self.limits.burst_bytes as f64);
        let room = self
            .limits
            .max_bytes
            .saturating_sub(NOTE_RESERVE)
            .saturating_sub(self.written);
        let allowed = (buf.len() as u64).min(room).min(self.tokens as u64) as usize;
        if allowed > 0 && self.unreported > 0 {
            let n = self.unreported;
            self.unreported = 0;
            self.note(format!(
                "\n[capsa: {n} bytes of {} dropped (over {}/s)]\n",
                self.name,
                size(self.limits.rate_bytes_per_sec)
            ));
        }
        if allowed > 0 {
            self.tokens -= allowed as f64;
            self.put(&buf[..allowed]);
        }
        if allowed < buf.len() {
            self.drop_bytes(buf.len() - allowed);
            if (allowed as u64) == room {
                self.full = true;
                self.note(format!(
                    "\n[capsa: {} reached its {} cap; later output is dropped]\n",
                    self.name,
                    size(self.limits.max_bytes)
                ));
            }
        }
    }
}

/// `n` bytes in the largest binary unit that divides it.
fn size(n: u64) -> String {
    match n {
        0 => "0 bytes".into(),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(buf, Instant::now());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

impl<W: Write> Drop for CappedWriter<W> {
    fn drop(&mut self) {
        if self.unreported > 0 && !self.full {
            let n = self.unreported;
            self.note(format!("\n[capsa: {n} bytes of {} dropped]\n", self.name));
        }
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    const LIMITS: LogLimits = LogLimits {
        max_bytes: 64 << 10,
        rate_bytes_per_sec: 1000,
        burst_bytes: 4000,
    };

    #[test]
    fn within_the_limits_everything_passes() {
        let sink = Sink::default();
        let t0 = Instant::now();
        let mut w = CappedWriter::new_at(sink.clone(), "console.log", LIMITS, t0);
        for i in 0..40u64 {
            // 100 bytes every 100 ms: exactly the sustained rate.
            w.write_at(&[b'x'; 100], t0 + Duration::from_millis(100 * i));
        }
        assert_eq!(sink.len(), 4000);
        assert_eq!(w.dropped().get(), 0);
    }

    #[test]
    fn a_burst_over_the_rate_is_dropped_counted_and_noted() {
        let sink = Sink::default();
        let t0 = Instant::now();
        let mut w = CappedWriter::new_at(sink.clone(), "console.log", LIMITS, t0);
        // 10000 bytes at once: the burst (4000) passes, 6000 are dropped.
        for _ in 0..10 {
            w.write_at(&[b'a'; 1000], t0);
        }
        assert_eq!(sink.len(), 4000);
        assert_eq!(w.dropped().get(), 6000);
        // A second later, 1000 bytes of tokens: the note, then the data.
        w.write_at(b"later\n", t0 + Duration::from_secs(1));
        let text = sink.text();
        assert!(
            text.ends_with(
                "\n[capsa: 6000 bytes of console.log dropped (over 1000 bytes/s)]\nlater\n"
            ),
            "{text:?}"
        );
    }

    /// Issue 14 item 5: a guest that writes to its console (or triggers
    /// VMM warnings) without end can neither grow the file past the cap
    /// nor make a write fail.
    #[test]
    fn guest_driven_log_fill_is_capped_and_never_fails() {
        let sink = Sink::default();
        let t0 = Instant::now();
        let limits = LogLimits {
            max_bytes: 64 << 10,
            rate_bytes_per_sec: 1 << 20,
            burst_bytes: 1 << 20,
        };
        let mut w = CappedWriter::new_at(sink.clone(), "console.log", limits, t0);
        let dropped = w.dropped();
        // 100 MiB over 100 s, far more than the cap.
        for s in 0..100u64 {
            for _ in 0..1024 {
                let now = t0 + Duration::from_secs(s);
                w.write_at(&[b'#'; 1024], now);
            }
        }
        assert!(sink.len() as u64 <= limits.max_bytes, "{}", sink.len());
        assert!(sink
            .text()
            .ends_with("reached its 64 KiB cap; later output is dropped]\n"));
        let passed = sink.text().bytes().filter(|&b| b == b'#').count() as u64;
        assert_eq!(passed + dropped.get(), 100 << 20);
        // Through the Write trait too: never an error, always "all taken".
        assert_eq!(w.write(&[b'g'; 10]).unwrap(), 10);
    }

    /// A file whose writes fail (`RLIMIT_FSIZE` reached with SIGXFSZ
    /// ignored gives `EFBIG`; a full disk `ENOSPC`) costs bytes, not the
    /// VMM.
    #[test]
    fn write_errors_are_counted_not_returned() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::EFBIG))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = CappedWriter::new(Full, "vmm.log", LIMITS);
        assert_eq!(w.write(b"hello").unwrap(), 5);
        assert!(w.flush().is_ok());
        assert_eq!(w.dropped().get(), 5);
    }
}
