//! Fuzz harnesses (used by `guest-agent/fuzz` and by seeded stable tests):
//! each takes arbitrary bytes as what one side of the control connection
//! received, and must never panic, hang or keep memory without bound.
//!
//! - [`agent_lines`]: the agent's side — the bytes a host sent, through
//!   the server's own control loop ([`server::serve_lines`]: framing by
//!   the [`LineReader`], request parsing, [`dispatch`], responses), served
//!   by a mock [`Service`] that only validates params (no process, mount,
//!   signal, RNG, clock or device bind on the fuzzing host). Every answer
//!   must be one JSON-RPC response line, and none an internal error (a
//!   handler's panic, which the loop catches).
//! - [`client_replies`]: the host client's side — the bytes a (hostile)
//!   agent sent, with calls in flight. Checked: each call gets at most one
//!   reply, every line is accounted for exactly once (a reply, a kept
//!   notification, a dropped one or a bad message), and the notification
//!   queue stays within [`MAX_QUEUED_NOTIFICATIONS`] entries and
//!   [`MAX_QUEUED_NOTIFICATION_BYTES`] (issue 14 item 3).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

use crate::client::{self, Notification, MAX_QUEUED_NOTIFICATIONS, MAX_QUEUED_NOTIFICATION_BYTES};
use crate::protocol::framing::{Line, LineReader};
use crate::protocol::*;
use crate::server::machine::MachinePlan;
use crate::server::{self, handlers::validate_create, AgentError, Control, SharedWriter};

/// Most lines the client harness reads per input.
pub const MAX_LINES: usize = 4096;

/// A [`Service`] that validates params and does nothing.
struct MockAgent;

fn refused(method: &str) -> AgentError {
    AgentError::InvalidState(format!("fuzzing mock: {method} does nothing"))
}

impl Service for MockAgent {
    type Error = AgentError;

    fn do_hello(&self, p: HelloParams) -> Result<HelloResult, AgentError> {
        if p.protocol_version != PROTOCOL_VERSION {
            return Err(AgentError::UnsupportedVersion(p.protocol_version));
        }
        Ok(HelloResult {
            agent_version: "fuzz".into(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: 0,
            agent_start_ms: 0,
            container_created: false,
        })
    }
    fn do_new_machine(&self, p: NewMachineParams) -> Result<NewMachineResult, AgentError> {
        MachinePlan::new(p)?;
        Err(refused("new_machine"))
    }
    fn do_create(&self, p: CreateParams) -> Result<CreateResult, AgentError> {
        validate_create(&p)?;
        Err(refused("create"))
    }
    fn do_start(&self, _p: StartParams) -> Result<StartResult, AgentError> {
        Err(refused("start"))
    }
    fn do_exec(&self, _p: ExecParams) -> Result<ExecResult, AgentError> {
        Err(refused("exec"))
    }
    fn do_wait(&self, p: WaitParams) -> Result<ProcessExit, AgentError> {
        Err(AgentError::NoSuchProcess(p.process_id))
    }
    fn do_signal(&self, _p: SignalParams) -> Result<Empty, AgentError> {
        Err(refused("signal"))
    }
    fn do_resize(&self, _p: ResizeParams) -> Result<Empty, AgentError> {
        Err(refused("resize"))
    }
    fn do_stats(&self, _p: Empty) -> Result<StatsResult, AgentError> {
        Ok(StatsResult::default())
    }
    fn do_ps(&self, _p: Empty) -> Result<PsResult, AgentError> {
        Ok(PsResult::default())
    }
    fn do_pause(&self, _p: Empty) -> Result<Empty, AgentError> {
        Ok(Empty {})
    }
    fn do_resume(&self, _p: Empty) -> Result<Empty, AgentError> {
        Ok(Empty {})
    }
    fn do_shutdown(&self, _p: Empty) -> Result<Empty, AgentError> {
        Ok(Empty {})
    }
}

impl Control for MockAgent {
    fn finish_shutdown(&self) {}
}

/// What the agent wrote on the connection.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl Write for Written {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut w) = self.0.lock() {
            w.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks that `line` is one response line, and no internal error.
fn check_response(line: &[u8]) {
    assert_eq!(line.last(), Some(&b'\n'), "a response ends its line");
    let resp: Response = serde_json::from_slice(line).expect("a response parses back");
    assert_eq!(resp.jsonrpc, JSONRPC_VERSION);
    assert!(
        resp.result.is_some() != resp.error.is_some(),
        "result xor error"
    );
    if let Some(e) = &resp.error {
        assert_ne!(
            e.error_code(),
            Some(ErrorCode::InternalError),
            "a handler panicked: {}",
            e.message
        );
    }
}

/// The agent's handling of the bytes a host sent on the control
/// connection. First byte: bit 0 picks a 64-byte line bound (to reach the
/// over-long path) instead of [`MAX_LINE_BYTES`].
pub fn agent_lines(data: &[u8]) {
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    let max = if first & 1 != 0 { 64 } else { MAX_LINE_BYTES };
    let written = Written::default();
    let writer: SharedWriter = Arc::new(Mutex::new(Box::new(written.clone())));
    server::serve_lines(
        &Arc::new(MockAgent),
        &mut LineReader::new(rest, max),
        &writer,
    );
    // `wait` is answered from threads of its own: until they are done.
    while Arc::strong_count(&writer) > 1 {
        std::thread::yield_now();
    }
    let out = written.0.lock().map(|o| o.clone()).unwrap_or_default();
    for line in out.split_inclusive(|b| *b == b'\n') {
        check_response(line);
    }
}

/// The host client's handling of the bytes an agent sent. First byte: the
/// number of calls in flight (`% 8`, request ids 1 to n).
pub fn client_replies(data: &[u8]) {
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    let shared = client::Shared::new();
    let mut calls = Vec::new();
    for id in 1..=i64::from(first % 8) {
        let (tx, rx) = mpsc::sync_channel(1);
        if let Ok(mut p) = shared.pending.lock() {
            p.insert(id, tx);
        }
        calls.push(rx);
    }
    let (notify, notifications) = mpsc::sync_channel(MAX_QUEUED_NOTIFICATIONS);
    let mut reader = LineReader::new(rest, MAX_LINE_BYTES);
    let mut lines = 0u64;
    for _ in 0..MAX_LINES {
        match reader.read_line() {
            Ok(Line::Line(line)) => {
                lines += 1;
                client::handle_line(&line, &shared, &notify);
            }
            // The client closes the connection on anything else.
            _ => break,
        }
    }
    let mut replies = 0u64;
    for rx in &calls {
        let got = rx.try_iter().count() as u64;
        assert!(got <= 1, "one reply per call");
        replies += got;
    }
    let kept = notifications.try_iter().count();
    assert!(kept <= MAX_QUEUED_NOTIFICATIONS);
    assert!(kept * std::mem::size_of::<Notification>() <= MAX_QUEUED_NOTIFICATION_BYTES);
    let bad = shared.bad_messages.load(Ordering::Relaxed);
    let dropped = shared.dropped_notifications.load(Ordering::Relaxed);
    assert_eq!(
        lines,
        bad + dropped + kept as u64 + replies,
        "every line is accounted for once"
    );
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
        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[(self.next() % of.len() as u64) as usize]
        }
    }

    const IDS: &[&str] = &[
        "1",
        "2",
        "7",
        "\"a\"",
        "null",
        "-1",
        "1.5",
        "{}",
        "9223372036854775807",
    ];
    const VALUES: &[&str] = &[
        "{}", "null", "[]", "1", "\"x\"", "{\"processId\":1}", "{\"processId\":1,\"pid\":5,\"exitCode\":0}",
        "{\"protocolVersion\":1}", "{\"rootfs\":{\"fstype\":\"virtiofs\"}}",
        "{\"rootfs\":{\"fstype\":\"ext4\",\"source\":\"/dev/vda\"},\"shares\":[{\"tag\":\"../x\"}]}",
        "{\"code\":-32601,\"message\":\"m\"}",
        "{\"realtimeNs\":1,\"entropy\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\",\"devices\":[\"virtio-mmio.0\",\"virtio-mmio.01\"]}",
    ];

    /// One JSON-RPC-shaped line, sometimes cut or with a byte flipped.
    fn line(rng: &mut Rng, methods: &[&str]) -> String {
        let mut l = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"{}\",\"params\":{},\"result\":{},\"error\":{}}}",
            rng.pick(IDS),
            rng.pick(methods),
            rng.pick(VALUES),
            rng.pick(VALUES),
            rng.pick(VALUES),
        );
        match rng.next() % 6 {
            0 => l.truncate((rng.next() as usize) % l.len()),
            1 => {
                let at = (rng.next() as usize) % l.len();
                if l.is_char_boundary(at) && l.is_char_boundary(at + 1) {
                    l.replace_range(at..at + 1, "\"");
                }
            }
            _ => {}
        }
        l.push('\n');
        l
    }

    fn input(rng: &mut Rng, methods: &[&str]) -> Vec<u8> {
        let mut d = vec![rng.next() as u8];
        for _ in 0..rng.next() % 12 {
            d.extend(line(rng, methods).as_bytes());
        }
        d
    }

    #[test]
    fn seeded_fuzz_agent_lines() {
        let mut rng = Rng(0x5eed_a6e7_0001);
        let mut methods: Vec<&str> = METHOD_NAMES.to_vec();
        methods.push("bogus");
        for _ in 0..2000 {
            agent_lines(&input(&mut rng, &methods));
        }
    }

    #[test]
    fn seeded_fuzz_client_replies() {
        let mut rng = Rng(0x5eed_c11e_0002);
        for _ in 0..2000 {
            client_replies(&input(&mut rng, &["exit", "bogus"]));
        }
    }

    /// The harness routes a reply to its call and keeps an exit.
    #[test]
    fn client_harness_routes_replies_and_keeps_exits() {
        let mut d = vec![2u8];
        d.extend(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n");
        d.extend(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n");
        d.extend(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"exit\",\"params\":{\"processId\":1,\"pid\":5}}\n",
        );
        client_replies(&d);
    }
}
