//! Typed blocking host-side client of the agent.
//!
//! [`Client`] owns one control connection. A reader thread reads the agent's
//! lines (bounded by [`MAX_LINE_BYTES`]), routes responses to the caller
//! waiting on that request id and queues notifications (`exit`), so calls may
//! be made from several threads at once (e.g. `wait` in one, `signal` in
//! another). Everything the guest sends is untrusted: malformed lines are
//! counted and skipped, an over-long line or a read error closes the
//! connection, and no guest input can panic the client or grow its memory
//! without bound (issue 14 item 3): only what a caller can ask for is kept
//! — the reply to a call in flight, `exit` notifications as a typed
//! [`ProcessExit`] — and the notification queue holds at most
//! [`MAX_QUEUED_NOTIFICATION_BYTES`]; anything else (replies to no call,
//! notifications of other methods, more than the queue holds) is dropped
//! and counted without being parsed into a `serde_json::Value`. Every call
//! has a timeout ([`DEFAULT_CALL_TIMEOUT`] unless set), and so does writing
//! a request (an agent that stops reading cannot block the host); `wait`
//! alone waits as long as the process runs, until the connection closes.
//!
//! Streams are attached with [`attach_stream`].

mod connector;

pub use connector::{
    connect_unix_nofollow, connect_unix_nofollow_timeout, Connector, HandshakeRefused,
    HybridVsockConnector, UnixPortConnector,
};

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::framing::{Line, LineReader};
use crate::protocol::*;

/// Most bytes of notifications kept while nobody reads them.
pub const MAX_QUEUED_NOTIFICATION_BYTES: usize = 64 << 10;

/// Most notifications kept while nobody reads them: as many as
/// [`MAX_QUEUED_NOTIFICATION_BYTES`] holds.
pub const MAX_QUEUED_NOTIFICATIONS: usize =
    MAX_QUEUED_NOTIFICATION_BYTES / std::mem::size_of::<Notification>();

/// Timeout of every call but `wait` until [`Client::set_timeout`] says
/// otherwise, and of writing any request.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Default timeout of [`Client::hello`].
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on reading a stream's ack ([`attach_stream`]).
pub const STREAM_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between the attempts of [`Client::connect_timeout`].
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The transport failed.
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    /// The connection is closed (by the agent, or after a protocol violation).
    #[error("agent connection closed")]
    Closed,
    /// No response within the timeout.
    #[error("no response from the agent to {method} within {timeout:?}")]
    Timeout {
        /// The method called.
        method: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The agent answered with an error object.
    #[error("agent error: {0}")]
    Rpc(RpcError),
    /// The agent answered something that does not fit the protocol.
    #[error("agent protocol violation: {0}")]
    Protocol(String),
    /// Connecting was retried until the deadline; `last` is the cause of
    /// the last attempt's failure.
    #[error("cannot reach the agent ({attempts} attempts in {waited:.1?}): {last}")]
    Unreachable {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
        /// Why the last attempt failed.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// The error code when the agent returned an error object with a code
    /// this version knows.
    pub fn rpc_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rpc(e) => e.error_code(),
            _ => None,
        }
    }

    /// Whether connecting again may succeed: the VMM refused the `CONNECT`
    /// (busy, guest driver not up, agent not listening yet), a timeout, a
    /// connection cut during the handshake or `hello`. Not: no socket or
    /// nobody listening on it (the VMM is gone), a socket that is not one,
    /// an answer that breaks the protocol, an error object of the agent.
    pub fn is_transient(&self) -> bool {
        use io::ErrorKind as K;
        match self {
            ClientError::Io(e) => {
                HandshakeRefused::of(e).is_some()
                    || matches!(
                        e.kind(),
                        K::TimedOut
                            | K::WouldBlock
                            | K::Interrupted
                            | K::BrokenPipe
                            | K::ConnectionReset
                            | K::ConnectionAborted
                            | K::UnexpectedEof
                    )
            }
            ClientError::Closed | ClientError::Timeout { .. } => true,
            ClientError::Rpc(_) | ClientError::Protocol(_) => false,
            ClientError::Unreachable { last, .. } => last.is_transient(),
        }
    }
}

/// A message pushed by the agent that the client keeps (others are
/// dropped and counted: [`Client::dropped_notifications`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Notification {
    /// A process exited.
    Exit(ProcessExit),
}

/// What a caller gets: the result, or the agent's error object.
pub(crate) type Reply = Result<Value, RpcError>;

/// What the caller threads and the reader thread share.
pub(crate) struct Shared {
    /// The calls in flight, by request id.
    pub(crate) pending: Mutex<HashMap<i64, SyncSender<Reply>>>,
    closed: AtomicBool,
    /// Lines skipped as malformed.
    pub(crate) bad_messages: AtomicU64,
    /// Notifications dropped.
    pub(crate) dropped_notifications: AtomicU64,
}

impl Shared {
    /// No call in flight, nothing counted.
    pub(crate) fn new() -> Shared {
        Shared {
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            bad_messages: AtomicU64::new(0),
            dropped_notifications: AtomicU64::new(0),
        }
    }
}

/// A control connection to the agent.
pub struct Client {
    writer: Mutex<UnixStream>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    notifications: Mutex<Receiver<Notification>>,
    default_timeout: Mutex<Option<Duration>>,
}

impl Client {
    /// Connects to [`CONTROL_PORT`] through `connector`.
    pub fn connect(connector: &dyn Connector) -> Result<Client, ClientError> {
        Ok(Client::new(connector.connect(CONTROL_PORT)?)?)
    }

    /// Retries [`Client::connect`] and `hello` until the agent answers or
    /// `deadline` passes, sleeping `interval` between attempts (the guest may
    /// still be booting, its VMM may not even listen yet: every error but
    /// an agent's error object is retried). Returns the client and the
    /// `hello` result; at the deadline, [`ClientError::Unreachable`] with
    /// the last cause.
    pub fn connect_retry(
        connector: &dyn Connector,
        deadline: Instant,
        interval: Duration,
    ) -> Result<(Client, HelloResult), ClientError> {
        retry(connector, deadline, interval, |e| {
            !matches!(e, ClientError::Rpc(_))
        })
    }

    /// Connects to an agent that is up (a created or running container)
    /// and checks `hello`, all within `timeout`: transient failures
    /// ([`ClientError::is_transient`]: a VMM socket too busy to accept, a
    /// refused or unanswered `CONNECT`) are retried until then, others
    /// returned at once. Each attempt's connect, handshake and `hello` are
    /// bounded by what is left of `timeout`.
    pub fn connect_timeout(
        connector: &HybridVsockConnector,
        timeout: Duration,
    ) -> Result<(Client, HelloResult), ClientError> {
        let deadline = Instant::now() + timeout;
        let mut bounded = connector.clone();
        bounded.handshake_timeout = connector.handshake_timeout.min(timeout);
        retry(
            &bounded,
            deadline,
            RETRY_INTERVAL,
            ClientError::is_transient,
        )
    }

    /// Wraps an already connected control stream and starts the reader thread.
    pub fn new(stream: UnixStream) -> io::Result<Client> {
        let reader = stream.try_clone()?;
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::sync_channel(MAX_QUEUED_NOTIFICATIONS);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("capsa-agent-client".into())
            .spawn(move || read_loop(reader, thread_shared, tx))?;
        Ok(Client {
            writer: Mutex::new(stream),
            shared,
            next_id: AtomicU64::new(1),
            notifications: Mutex::new(rx),
            default_timeout: Mutex::new(Some(DEFAULT_CALL_TIMEOUT)),
        })
    }

    /// Sets the timeout of every call except `wait` (default
    /// [`DEFAULT_CALL_TIMEOUT`]; `None`: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        if let Ok(mut t) = self.default_timeout.lock() {
            *t = timeout;
        }
    }

    /// The timeout of calls other than `wait`.
    pub fn timeout(&self) -> Option<Duration> {
        self.default_timeout.lock().map(|t| *t).unwrap_or(None)
    }

    /// Calls method `M` with `params` and decodes its result.
    pub fn call<M: Method>(
        &self,
        params: &M::Params,
        timeout: Option<Duration>,
    ) -> Result<M::Result, ClientError> {
        let method = M::NAME;
        let value = self.call_value(
            method,
            serde_json::to_value(params).map_err(|e| {
                ClientError::Protocol(format!("cannot encode params of {method}: {e}"))
            })?,
            timeout,
        )?;
        serde_json::from_value(value)
            .map_err(|e| ClientError::Protocol(format!("bad result of {method}: {e}")))
    }

    /// Calls `method` with raw JSON params and returns the raw result (for
    /// tests of malformed requests; [`Client::call`] is the typed call).
    pub fn call_value(
        &self,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        let id = (self.next_id.fetch_add(1, Ordering::SeqCst) & (i64::MAX as u64)) as i64;
        let (tx, rx) = mpsc::sync_channel(1);
        self.pending_map()?.insert(id, tx);
        let request = Request {
            jsonrpc: JSONRPC_VERSION.to_string(),
            id: Some(Id::Number(id)),
            method: method.to_string(),
            params: Some(params),
        };
        let line = to_line(&request);
        if let Err(e) = self.write_request(&line, timeout.unwrap_or(DEFAULT_CALL_TIMEOUT)) {
            self.forget(id);
            return Err(e.into());
        }
        let reply = match timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    self.forget(id);
                    return Err(ClientError::Timeout {
                        method: method.to_string(),
                        timeout: t,
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Closed),
            },
            None => rx.recv().map_err(|_| ClientError::Closed)?,
        };
        reply.map_err(ClientError::Rpc)
    }

    /// Writes one request line within `timeout`. A line cut short breaks
    /// the framing: the connection is then closed.
    fn write_request(&self, line: &[u8], timeout: Duration) -> io::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| io::Error::other("writer lock poisoned"))?;
        w.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let written = w.write_all(line).and_then(|_| w.flush());
        if written.is_err() {
            self.shared.closed.store(true, Ordering::SeqCst);
            let _ = w.shutdown(Shutdown::Both);
        }
        written.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the agent took no request within {timeout:?}"),
            ),
            _ => e,
        })
    }

    fn pending_map(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<i64, SyncSender<Reply>>>, ClientError> {
        self.shared
            .pending
            .lock()
            .map_err(|_| ClientError::Protocol("pending map poisoned".into()))
    }

    fn forget(&self, id: i64) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.remove(&id);
        }
    }

    /// `hello`: checks the protocol version and returns the agent's boot info.
    pub fn hello(&self, timeout: Duration) -> Result<HelloResult, ClientError> {
        let params = HelloParams {
            protocol_version: PROTOCOL_VERSION,
            client: Some(format!("capsa-agent-client/{AGENT_VERSION}")),
        };
        let result = self.call::<method::Hello>(&params, Some(timeout))?;
        if result.protocol_version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "agent speaks protocol {}, client {}",
                result.protocol_version, PROTOCOL_VERSION
            )));
        }
        Ok(result)
    }

    /// `new_machine`: makes a guest restored from a template a machine of
    /// its own (reseeds its RNG, sets its clock, binds `devices` in order);
    /// before `create`, once. Returns the devices bound.
    pub fn new_machine(&self, params: &NewMachineParams) -> Result<NewMachineResult, ClientError> {
        self.call::<method::NewMachine>(params, self.timeout())
    }

    /// `create`: sets up the container; the init process waits for `start`.
    pub fn create(&self, params: &CreateParams) -> Result<CreateResult, ClientError> {
        self.call::<method::Create>(params, self.timeout())
    }

    /// `start`: starts the init process.
    pub fn start(&self) -> Result<StartResult, ClientError> {
        self.call::<method::Start>(&Empty {}, self.timeout())
    }

    /// `exec`: starts another process in the container.
    pub fn exec(&self, params: &ExecParams) -> Result<ExecResult, ClientError> {
        self.call::<method::Exec>(params, self.timeout())
    }

    /// `wait`: blocks until the process has exited (no timeout).
    pub fn wait(&self, process_id: ProcessId) -> Result<ProcessExit, ClientError> {
        self.call::<method::Wait>(&WaitParams { process_id }, None)
    }

    /// `signal` to one process (its process group).
    pub fn signal(&self, process_id: ProcessId, signal: i32) -> Result<(), ClientError> {
        let params = SignalParams {
            process_id: Some(process_id),
            signal,
            all: false,
        };
        self.call::<method::Signal>(&params, self.timeout())
            .map(|_| ())
    }

    /// `signal` to every running process of the container.
    pub fn signal_all(&self, signal: i32) -> Result<(), ClientError> {
        let params = SignalParams {
            process_id: None,
            signal,
            all: true,
        };
        self.call::<method::Signal>(&params, self.timeout())
            .map(|_| ())
    }

    /// `resize`: sets the terminal size (rows × cols characters).
    pub fn resize(&self, process_id: ProcessId, rows: u16, cols: u16) -> Result<(), ClientError> {
        let params = ResizeParams {
            process_id,
            rows,
            cols,
        };
        self.call::<method::Resize>(&params, self.timeout())
            .map(|_| ())
    }

    /// `stats`: memory, cpu time and pid count.
    pub fn stats(&self) -> Result<StatsResult, ClientError> {
        self.call::<method::Stats>(&Empty {}, self.timeout())
    }

    /// `ps`: the container's processes.
    pub fn ps(&self) -> Result<PsResult, ClientError> {
        self.call::<method::Ps>(&Empty {}, self.timeout())
    }

    /// `pause`: freezes the container's processes (the guest's cgroup v2
    /// freezer); returns once they are frozen. Errors: `INVALID_STATE` when
    /// the container is not started, already paused or its process exited;
    /// `OS_ERROR` (`ETIMEDOUT`, the group thawed again) when freezing does
    /// not complete within the agent's timeout (5 s), (`EOPNOTSUPP`) without
    /// a cgroup in the guest.
    pub fn pause(&self) -> Result<(), ClientError> {
        self.call::<method::Pause>(&Empty {}, self.timeout())
            .map(|_| ())
    }

    /// `resume`: thaws a paused container. Errors: `INVALID_STATE` when it
    /// is not paused.
    pub fn resume(&self) -> Result<(), ClientError> {
        self.call::<method::Resume>(&Empty {}, self.timeout())
            .map(|_| ())
    }

    /// `shutdown`: the agent answers, then syncs, unmounts and reboots the
    /// guest (the VMM sees the reset and exits).
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<method::Shutdown>(&Empty {}, self.timeout())
            .map(|_| ())
    }

    /// The next pushed notification, waiting at most `timeout`.
    pub fn next_notification(&self, timeout: Duration) -> Option<Notification> {
        let rx = self.notifications.lock().ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Lines from the agent that were skipped as malformed.
    pub fn bad_messages(&self) -> u64 {
        self.shared.bad_messages.load(Ordering::Relaxed)
    }

    /// Notifications dropped: of a method the client does not keep, or
    /// because the queue was full.
    pub fn dropped_notifications(&self) -> u64 {
        self.shared.dropped_notifications.load(Ordering::Relaxed)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

/// The loop of [`Client::connect_retry`] and [`Client::connect_timeout`].
fn retry(
    connector: &dyn Connector,
    deadline: Instant,
    interval: Duration,
    retry_if: impl Fn(&ClientError) -> bool,
) -> Result<(Client, HelloResult), ClientError> {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt = Client::connect(connector).and_then(|client| {
            let left = deadline.saturating_duration_since(Instant::now());
            let hello = client.hello(HELLO_TIMEOUT.min(left.max(interval)))?;
            Ok((client, hello))
        });
        let e = match attempt {
            Ok(ok) => return Ok(ok),
            Err(e) => e,
        };
        if !retry_if(&e) {
            return Err(e);
        }
        if Instant::now() + interval >= deadline {
            return Err(ClientError::Unreachable {
                attempts,
                waited: started.elapsed(),
                last: Box::new(e),
            });
        }
        std::thread::sleep(interval);
    }
}

fn read_loop(stream: UnixStream, shared: Arc<Shared>, notify: SyncSender<Notification>) {
    let mut reader = LineReader::new(stream, MAX_LINE_BYTES);
    // An over-long line, EOF or a read error ends the connection.
    while let Ok(Line::Line(line)) = reader.read_line() {
        handle_line(&line, &shared, &notify);
    }
    shared.closed.store(true, Ordering::SeqCst);
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    if let Ok(mut pending) = shared.pending.lock() {
        // Dropping the senders wakes every caller with `Closed`.
        pending.clear();
    }
}

/// What a line of the agent is, read without keeping its contents.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    method: Option<String>,
}

/// The params of an `exit` notification, typed.
#[derive(Deserialize)]
struct ExitNotification {
    params: ProcessExit,
}

/// Handles one line of the agent: a reply to a call in flight, a kept
/// notification, or something counted and dropped.
pub(crate) fn handle_line(line: &[u8], shared: &Shared, notify: &SyncSender<Notification>) {
    let bad = || {
        shared.bad_messages.fetch_add(1, Ordering::Relaxed);
    };
    let dropped = || {
        shared.dropped_notifications.fetch_add(1, Ordering::Relaxed);
    };
    let Ok(envelope) = serde_json::from_slice::<Envelope>(line) else {
        return bad();
    };
    if let Some(method) = envelope.method {
        if method != Exit::NAME {
            return dropped();
        }
        let Ok(exit) = serde_json::from_slice::<ExitNotification>(line) else {
            return bad();
        };
        if notify.try_send(Notification::Exit(exit.params)).is_err() {
            dropped();
        }
        return;
    }
    let Some(id) = envelope.id else {
        return bad();
    };
    let asked = shared.pending.lock().is_ok_and(|p| p.contains_key(&id));
    if !asked {
        // A reply to no call in flight (a late one, or made up).
        return bad();
    }
    let Ok(Value::Object(mut msg)) = serde_json::from_slice::<Value>(line) else {
        return bad();
    };
    let reply = match (msg.remove("result"), msg.remove("error")) {
        (Some(result), None) => Ok(result),
        (None, Some(error)) => match serde_json::from_value::<RpcError>(error) {
            Ok(e) => Err(e),
            Err(_) => return bad(),
        },
        _ => return bad(),
    };
    let sender = shared.pending.lock().ok().and_then(|mut p| p.remove(&id));
    match sender {
        Some(tx) => {
            let _ = tx.try_send(reply);
        }
        None => bad(),
    }
}

/// Attaches one stream: connects to [`STREAM_PORT`], sends the header naming
/// `token` and checks the agent's ack. The returned socket then carries raw
/// bytes: write to a `stdin`/`tty` stream (`shutdown(Write)` on `stdin` gives
/// the process EOF), read a `stdout`/`stderr`/`tty` stream until EOF.
pub fn attach_stream(connector: &dyn Connector, token: &str) -> Result<UnixStream, ClientError> {
    // The handshake alone is retried (nothing of the token went out yet).
    let deadline = Instant::now() + STREAM_ACK_TIMEOUT;
    let mut stream = loop {
        match connector.connect(STREAM_PORT) {
            Ok(s) => break s,
            Err(e) => {
                let e = ClientError::Io(e);
                if !e.is_transient() || Instant::now() + RETRY_INTERVAL >= deadline {
                    return Err(e);
                }
                std::thread::sleep(RETRY_INTERVAL);
            }
        }
    };
    let header = StreamHeader {
        token: token.to_string(),
    };
    stream.set_read_timeout(Some(STREAM_ACK_TIMEOUT))?;
    stream.set_write_timeout(Some(STREAM_ACK_TIMEOUT))?;
    stream.write_all(&to_line(&header))?;
    // Read the ack byte by byte: raw stream bytes follow it.
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_STREAM_HEADER_BYTES {
                    return Err(ClientError::Protocol("stream ack too long".into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let ack: StreamAck = serde_json::from_slice(&line)
        .map_err(|e| ClientError::Protocol(format!("bad stream ack: {e}")))?;
    if !ack.ok {
        return Err(ClientError::Rpc(RpcError::new(
            ErrorCode::InvalidParams,
            ack.error.unwrap_or_else(|| "stream rejected".into()),
        )));
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A VMM that refuses every `CONNECT` with `ERR` (its guest's agent
    /// not listening): retried until the timeout, and the error names the
    /// VMM's reason and the attempts, not a bare "Broken pipe".
    #[test]
    fn connect_timeout_retries_refusals_and_reports_the_last_reason() {
        let dir = tempfile_dir();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let _ = s.write_all(b"ERR guest port 1024 refused the connection\n");
            }
        });
        let started = Instant::now();
        let e = Client::connect_timeout(
            &HybridVsockConnector::new(&path),
            Duration::from_millis(500),
        )
        .err()
        .expect("never connects");
        let elapsed = started.elapsed();
        let ClientError::Unreachable { attempts, last, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(*attempts > 2, "{attempts}");
        assert!(last.is_transient());
        assert!(
            e.to_string()
                .contains("guest port 1024 refused the connection"),
            "{e}"
        );
        assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// No socket (the VM is gone): an error at once, not retried.
    #[test]
    fn connect_timeout_does_not_retry_a_missing_socket() {
        let dir = tempfile_dir();
        let started = Instant::now();
        let e = Client::connect_timeout(
            &HybridVsockConnector::new(dir.join("nothing")),
            Duration::from_secs(10),
        )
        .err()
        .expect("no socket");
        assert!(!e.is_transient(), "{e:?}");
        assert!(matches!(&e, ClientError::Io(io) if io.kind() == io::ErrorKind::NotFound));
        assert!(started.elapsed() < Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Waits until `done` holds (the reader thread has caught up).
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Issue 14 item 3: a hostile agent floods the client with
    /// notifications of a method nobody reads, replies to calls never made
    /// and more `exit`s than anyone reads, lines of up to 512 KiB. The
    /// client keeps only `exit`s, typed, within its byte bound; the rest is
    /// dropped and counted (it used to queue up to 4096 notifications of
    /// any method as `serde_json::Value`, ~16 times their line size).
    #[test]
    fn client_keeps_only_exit_notifications_within_a_byte_bound() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let client = Client::new(ours).unwrap();
        let big = "x".repeat(512 << 10);
        let writer = std::thread::spawn(move || {
            for _ in 0..20 {
                let line = format!(
                    "{{\"jsonrpc\":\"2.0\",\"method\":\"bogus\",\"params\":{{\"x\":\"{big}\"}}}}\n"
                );
                agent.write_all(line.as_bytes()).unwrap();
            }
            for id in 1000..1050 {
                let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":\"{big}\"}}\n");
                agent.write_all(line.as_bytes()).unwrap();
            }
            for pid in 0..MAX_QUEUED_NOTIFICATIONS + 100 {
                let line = format!(
                    "{{\"jsonrpc\":\"2.0\",\"method\":\"exit\",\"params\":{{\"processId\":{pid},\"pid\":{pid},\"exitCode\":0}}}}\n"
                );
                agent.write_all(line.as_bytes()).unwrap();
            }
            agent
        });
        let _agent = writer.join().unwrap();
        eventually("the client read every line", || {
            client.dropped_notifications() == 120 && client.bad_messages() == 50
        });
        assert!(
            MAX_QUEUED_NOTIFICATIONS * std::mem::size_of::<Notification>()
                <= MAX_QUEUED_NOTIFICATION_BYTES
        );
        let mut kept = 0;
        while let Some(n) = client.next_notification(Duration::ZERO) {
            let Notification::Exit(e) = n;
            assert_eq!(e.process_id, kept as u64);
            kept += 1;
        }
        assert_eq!(kept, MAX_QUEUED_NOTIFICATIONS);
        assert!(!client.is_closed());
    }

    /// Issue 14 item 3: every call has a timeout, also when the caller set
    /// none (it used to wait forever for an agent that never answers).
    #[test]
    fn client_calls_time_out_by_default() {
        let (ours, _agent) = UnixStream::pair().unwrap();
        let client = Client::new(ours).unwrap();
        assert_eq!(client.timeout(), Some(DEFAULT_CALL_TIMEOUT));
        client.set_timeout(Some(Duration::from_millis(100)));
        let e = client.ps().unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    }

    /// Issue 14 item 3: an agent that stops reading its control connection
    /// cannot block a host call in `write` (it used to block forever once
    /// the socket buffer was full); the connection is closed, since a line
    /// cut short breaks the framing.
    #[test]
    fn client_request_to_an_agent_that_never_reads_times_out() {
        let (ours, _agent) = UnixStream::pair().unwrap();
        let client = Arc::new(Client::new(ours).unwrap());
        client.set_timeout(Some(Duration::from_millis(200)));
        let (tx, rx) = mpsc::channel();
        let c = client.clone();
        std::thread::spawn(move || {
            let r = c.call_value("exec", Value::String("a".repeat(4 << 20)), c.timeout());
            let _ = tx.send(r.map(|_| ()));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the call returns");
        let e = r.unwrap_err();
        assert!(
            matches!(&e, ClientError::Io(io) if io.kind() == io::ErrorKind::TimedOut),
            "{e:?}"
        );
        assert!(client.is_closed());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "capsa-client-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
