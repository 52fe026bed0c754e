//! The agent's RPC server, generic over its transport.
//!
//! [`serve_control`] accepts control connections from a [`Listener`] (vsock
//! port [`CONTROL_PORT`](crate::protocol::CONTROL_PORT) in the guest, a Unix
//! socket in tests) and runs one thread per connection, whose line loop
//! (`control.rs`: read a line (bounded), parse, [`dispatch`] to the
//! agent's [`Service`] handler (`do_<method>` in [`handlers`]), write the
//! response) is also what the fuzzing harness runs.
//! `wait` runs on its own thread so that it does not block the connection.
//! [`serve_streams`] accepts stream connections and hands them to
//! [`streams::relay`].
//!
//! State has one owner per concern, not one big lock: [`processes`] (the
//! process table), [`streams`] (stream tokens), [`container`] (the
//! container's lifecycle, mounts through its [`Platform`], and its
//! [`cgroup`] that `pause`/`resume` freeze), and the notifier (the list of
//! control connections that receive `exit`).

pub mod cgroup;
pub mod container;
mod control;
pub mod error;
pub mod handlers;
pub mod machine;
pub mod network;
pub mod platform;
pub mod processes;
pub mod reaper;
pub mod spawn;
pub mod stats;
pub mod streams;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::agent_log;
use crate::protocol::framing::{Line, LineReader};
use crate::protocol::*;

pub(crate) use control::{serve_lines, Control, SharedWriter};
pub use error::AgentError;
pub use platform::{DirectoryPlatform, MachineStep, Platform};

/// A byte-stream connection the server can use.
pub trait Connection: Read + Write + Send + 'static {
    /// A second handle on the same connection (for a reader and a writer).
    fn try_clone(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Shuts down one or both directions.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

/// A source of incoming connections.
pub trait Listener: Send + 'static {
    /// The connections it yields.
    type Conn: Connection;
    /// Blocks until the next connection.
    fn accept(&self) -> io::Result<Self::Conn>;
}

impl Connection for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).map(|(s, _)| s)
    }
}

/// The control connections that receive notifications.
#[derive(Default)]
struct Notifier {
    next: AtomicU64,
    conns: Mutex<Vec<(u64, SharedWriter)>>,
}

impl Notifier {
    fn add(&self, writer: SharedWriter) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.conns.lock() {
            c.push((id, writer));
        }
        id
    }

    fn remove(&self, id: u64) {
        if let Ok(mut c) = self.conns.lock() {
            c.retain(|(i, _)| *i != id);
        }
    }

    fn broadcast(&self, line: &[u8]) {
        let conns: Vec<SharedWriter> = match self.conns.lock() {
            Ok(c) => c.iter().map(|(_, w)| w.clone()).collect(),
            Err(_) => return,
        };
        for w in conns {
            if let Ok(mut w) = w.lock() {
                let _ = w.write_all(line).and_then(|_| w.flush());
            }
        }
    }
}

/// The agent: every owner, shared by all connections.
pub struct Agent {
    /// The process table.
    pub processes: Arc<processes::ProcessTable>,
    /// Streams waiting to be attached.
    pub streams: streams::StreamRegistry,
    /// The container's lifecycle and mounts.
    pub container: container::Lifecycle,
    notifier: Arc<Notifier>,
    start_uptime_ms: u64,
}

/// Guest uptime (CLOCK_BOOTTIME) in ms.
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec.max(0) as u64 / 1_000_000)
}

impl Agent {
    /// A new agent using `platform`; starts the reaper and notifier threads.
    /// `start_uptime_ms` is reported by `hello` as `agentStartMs`.
    pub fn new(platform: Arc<dyn Platform>, start_uptime_ms: u64) -> Arc<Agent> {
        reaper::start();
        let (tx, rx) = mpsc::channel::<ProcessExit>();
        let notifier = Arc::new(Notifier::default());
        let thread_notifier = notifier.clone();
        let spawned = std::thread::Builder::new()
            .name("capsa-notifier".into())
            .spawn(move || {
                for exit in rx {
                    let note = Request {
                        jsonrpc: JSONRPC_VERSION.to_string(),
                        id: None,
                        method: Exit::NAME.to_string(),
                        params: serde_json::to_value(&exit).ok(),
                    };
                    thread_notifier.broadcast(&to_line(&note));
                }
            });
        if let Err(e) = spawned {
            agent_log!("cannot start the notifier thread: {e}");
        }
        Arc::new(Agent {
            processes: Arc::new(processes::ProcessTable::new(tx)),
            streams: streams::StreamRegistry::default(),
            container: container::Lifecycle::new(platform),
            notifier,
            start_uptime_ms,
        })
    }
}

/// Accepts control connections forever, one thread each. Accept errors are
/// logged and retried.
pub fn serve_control<L: Listener>(agent: Arc<Agent>, listener: L) {
    accept_loop(listener, "control", move |conn| {
        serve_connection(&agent, conn)
    });
}

/// Accepts stream connections forever, one thread each.
pub fn serve_streams<L: Listener>(agent: Arc<Agent>, listener: L) {
    accept_loop(listener, "stream", move |conn| serve_stream(&agent, conn));
}

fn accept_loop<L: Listener>(
    listener: L,
    what: &'static str,
    handle: impl Fn(L::Conn) + Send + Sync + Clone + 'static,
) {
    let mut failures = 0u32;
    loop {
        match listener.accept() {
            Ok(conn) => {
                failures = 0;
                let handle = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("capsa-{what}"))
                    .spawn(move || {
                        if catch_unwind(AssertUnwindSafe(|| handle(conn))).is_err() {
                            agent_log!("{what} connection handler panicked");
                        }
                    });
                if let Err(e) = spawned {
                    agent_log!("cannot spawn {what} thread: {e}");
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures <= 3 {
                    agent_log!("accept on {what} listener: {e}");
                }
                // Back off on persistent errors (e.g. EMFILE) instead of spinning.
                std::thread::sleep(std::time::Duration::from_millis(
                    10 * u64::from(failures.min(100)),
                ));
            }
        }
    }
}

fn serve_connection<C: Connection>(agent: &Arc<Agent>, conn: C) {
    let writer: SharedWriter = match conn.try_clone() {
        Ok(w) => Arc::new(Mutex::new(Box::new(w))),
        Err(e) => {
            agent_log!("control connection: {e}");
            return;
        }
    };
    let note_id = agent.notifier.add(writer.clone());
    let mut reader = LineReader::new(conn, MAX_LINE_BYTES);
    serve_lines(agent, &mut reader, &writer);
    agent.notifier.remove(note_id);
    let _ = reader.get_ref().shutdown(Shutdown::Both);
}

fn serve_stream<C: Connection>(agent: &Agent, conn: C) {
    let mut reader = LineReader::new(conn, MAX_STREAM_HEADER_BYTES);
    let header = match reader.read_line() {
        Ok(Line::Line(line)) => serde_json::from_slice::<StreamHeader>(&line)
            .map_err(|e| format!("bad stream header: {e}")),
        Ok(Line::TooLong) => Err("stream header too long".to_string()),
        Ok(Line::Eof) | Err(_) => return,
    };
    let (conn, leftover) = reader.into_parts();
    let endpoint = header.and_then(|h| {
        agent
            .streams
            .take(&h.token)
            .ok_or_else(|| "unknown or already attached stream token".to_string())
    });
    let mut conn = conn;
    match endpoint {
        Ok(endpoint) => {
            let ack = StreamAck {
                ok: true,
                error: None,
            };
            if conn.write_all(&to_line(&ack)).is_ok() {
                streams::relay(conn, endpoint, leftover);
            }
        }
        Err(error) => {
            let ack = StreamAck {
                ok: false,
                error: Some(error),
            };
            let _ = conn.write_all(&to_line(&ack));
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}
