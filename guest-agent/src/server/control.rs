//! One control connection's line loop, the same for the agent and for
//! the fuzzing harness (`crate::fuzzing`): read a line (bounded by the
//! [`LineReader`]), parse it as a JSON-RPC 2.0 request, [`dispatch`] it to
//! the [`Service`], write the response.

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::AgentError;
use crate::agent_log;
use crate::protocol::framing::{Line, LineReader};
use crate::protocol::*;

/// The writing side of a connection, shared by the threads that answer on
/// it (`wait`'s, the notifier's).
pub(crate) type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// What a control connection serves: the protocol's [`Service`] with the
/// agent's errors, and what follows an answered `shutdown`. The
/// [`Agent`](super::Agent) is one; the fuzzing harness's mock is the
/// other, so that the harness runs this loop as production does.
pub(crate) trait Control: Service<Error = AgentError> + Send + Sync + 'static {
    /// Runs once the response to `shutdown` has been written.
    fn finish_shutdown(&self);
}

/// Answers the requests read from `reader` on `writer` until the peer
/// closes its side (or the transport fails): a line over the reader's
/// bound gets a `LineTooLong` error, a blank line nothing, a line that is
/// not a request its error response, a request its handler's response
/// (none for a notification). `wait` is answered from a thread of its
/// own, as it blocks.
pub(crate) fn serve_lines<S: Control, R: Read>(
    agent: &Arc<S>,
    reader: &mut LineReader<R>,
    writer: &SharedWriter,
) {
    loop {
        match reader.read_line() {
            Ok(Line::Line(line)) => handle_line(agent, &line, writer),
            Ok(Line::TooLong) => {
                let err = RpcError::new(
                    ErrorCode::LineTooLong,
                    format!("line longer than {} bytes", reader.max()),
                );
                write_line(writer, &to_line(&Response::err(None, err)));
            }
            Ok(Line::Eof) | Err(_) => break,
        }
    }
}

fn write_line(writer: &SharedWriter, line: &[u8]) {
    if let Ok(mut w) = writer.lock() {
        let _ = w.write_all(line).and_then(|_| w.flush());
    }
}

/// A request read from a line: its id (`None`: a notification), method
/// and params.
struct Incoming {
    id: Option<Id>,
    method: String,
    params: Value,
}

/// Reads one request line (JSON-RPC 2.0 §4); an error is the response to
/// send (with id `null` when the id could not be read).
fn parse_request(line: &[u8]) -> Result<Incoming, Box<Response>> {
    let invalid = |id, message: &str| {
        let error = RpcError::new(ErrorCode::InvalidRequest, message);
        Box::new(Response::err(id, error))
    };
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        let error = RpcError::new(ErrorCode::ParseError, format!("parse error: {e}"));
        Box::new(Response::err(None, error))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(invalid(None, "not a JSON object"));
    };
    let id = match obj.remove("id") {
        None => None,
        Some(v) => Some(serde_json::from_value::<Id>(v).map_err(|_| invalid(None, "invalid id"))?),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC_VERSION) {
        return Err(invalid(id, "jsonrpc must be \"2.0\""));
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Err(invalid(id, "method must be a string"));
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    Ok(Incoming { id, method, params })
}

/// The response to request `id` (none for a notification).
fn response(id: Option<Id>, result: Result<Value, RpcError>) -> Option<Response> {
    id.as_ref()?;
    Some(match result {
        Ok(v) => Response::ok(id, v),
        Err(e) => Response::err(id, e),
    })
}

/// Answers `id` (nothing for a notification).
fn answer(writer: &SharedWriter, id: Option<Id>, result: Result<Value, RpcError>) {
    if let Some(resp) = response(id, result) {
        write_line(writer, &to_line(&resp));
    }
}

/// Parses one request line and answers it (JSON-RPC 2.0 §4-5).
fn handle_line<S: Control>(agent: &Arc<S>, line: &[u8], writer: &SharedWriter) {
    if is_blank(line) {
        return;
    }
    let Incoming { id, method, params } = match parse_request(line) {
        Ok(r) => r,
        // Malformed requests are answered even without an id.
        Err(resp) => return write_line(writer, &to_line(&resp)),
    };
    if method == method::Wait::NAME {
        // `wait` blocks: give it its own thread.
        let agent = agent.clone();
        let writer = writer.clone();
        let spawned = std::thread::Builder::new()
            .name("capsa-wait".into())
            .spawn(move || answer(&writer, id, guarded(&*agent, &method, params)));
        if let Err(e) = spawned {
            agent_log!("cannot spawn wait thread: {e}");
        }
        return;
    }
    answer(writer, id, guarded(&**agent, &method, params));
    if method == method::Shutdown::NAME {
        agent.finish_shutdown();
    }
}

/// Whether a line is blank (skipped without an answer).
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Dispatches to `agent`'s handler; a handler's panic is answered as an
/// internal error (and logged).
fn guarded<S: Control>(agent: &S, method: &str, params: Value) -> Result<Value, RpcError> {
    match catch_unwind(AssertUnwindSafe(|| dispatch(agent, method, params))) {
        Ok(r) => r.map_err(|e| e.to_rpc()),
        Err(_) => {
            agent_log!("handler of {method} panicked");
            Err(RpcError::new(ErrorCode::InternalError, "internal error"))
        }
    }
}
