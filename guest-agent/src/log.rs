//! Low-volume logging for the agent.
//!
//! The guest has no syslog and no `tracing` subscriber worth its startup
//! cost: lines go to one sink, `/dev/kmsg` in the guest (so they appear in the
//! kernel log and on the serial console when enabled) or stderr elsewhere.
//! Writes are best effort; a failed log write is ignored.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static SINK: OnceLock<Mutex<File>> = OnceLock::new();

/// Sends every later log line to `file` (e.g. `/dev/kmsg` opened for writing).
/// Only the first call has an effect.
pub fn set_sink(file: File) {
    let _ = SINK.set(Mutex::new(file));
}

/// Writes one log line, prefixed with `capsa-agent: `. Used through [`agent_log!`].
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let line = format!("capsa-agent: {args}\n");
    match SINK.get() {
        Some(sink) => {
            if let Ok(mut file) = sink.lock() {
                let _ = file.write_all(line.as_bytes());
            }
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Logs one line through [`write_line`], `format!`-style.
#[macro_export]
macro_rules! agent_log {
    ($($arg:tt)*) => {
        $crate::log::write_line(format_args!($($arg)*))
    };
}
