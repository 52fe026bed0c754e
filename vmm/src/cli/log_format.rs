//! `--log-format json`: one JSON object per line with the fields runc
//! writes (logrus's JSON formatter): `{"level":"error","msg":"…","time":"…"}`.
//!
//! Engines read the runtime's log file when a command fails and take the
//! `msg` of its `error` lines: containerd's runc shim (go-runc's
//! `getLastRuntimeError`, which decodes `level`/`msg`/`time` and keeps the
//! last `error` line) and podman (`readConmonPipeData`, which decodes the
//! file as one object with a `msg`), and show it in their own error — where
//! e.g. podman and docker turn "executable file not found" into exit code
//! 127. tracing-subscriber's own JSON layout (`fields.message`, upper-case
//! levels) reads to them as no message at all.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `--log-format json`.
pub struct RuncJson;

/// logrus's level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// The event's message, then its other fields as ` name=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

/// One log line: `{"level":…,"msg":…,"time":…}` (serde_json's map keeps
/// the keys sorted, which is logrus's order too).
fn line(level: &Level, msg: &str, time: &str) -> String {
    serde_json::json!({ "level": level_name(level), "msg": msg, "time": time }).to_string()
}

impl<S, N> FormatEvent<S, N> for RuncJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = Message::default();
        event.record(&mut message);
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        writeln!(
            writer,
            "{}",
            line(event.metadata().level(), message.0.trim_start(), &time)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_runc_writes_them() {
        let l = line(
            &Level::ERROR,
            r#"exec: "x": executable file not found in $PATH"#,
            "2026-12-02T20:00:00.000000Z",
        );
        assert_eq!(
            l,
            r#"{"level":"error","msg":"exec: \"x\": executable file not found in $PATH","time":"2026-12-02T20:00:00.000000Z"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line(&Level::WARN, "w", "t")).unwrap();
        assert_eq!(v["level"], "warning");
    }
}
