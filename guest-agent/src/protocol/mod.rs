//! The host↔guest control protocol: JSON-RPC 2.0, one JSON object per line.
//!
//! Framing: every message is one UTF-8 JSON object terminated by `\n`, at most
//! [`MAX_LINE_BYTES`] bytes long (without the `\n`). A longer line is answered
//! with an error of code [`ErrorCode::LineTooLong`] (id `null`) and skipped;
//! the connection stays usable. See `docs/agent-protocol.md` for the full
//! specification and [JSON-RPC 2.0](https://www.jsonrpc.org/specification) for
//! the envelope.
//!
//! - [`service`]: the methods, defined once (name, params, result,
//!   handler), and the server's dispatch;
//! - [`methods`]: params and results of every method, and the `exit`
//!   notification's params;
//! - [`framing`]: the bounded line reader used by both sides;
//! - [`schema`]: the JSON Schema generated from these types.

pub mod framing;
pub mod methods;
pub mod schema;
pub mod service;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use methods::*;
pub use service::*;

/// Version of the wire protocol. Bumped on any incompatible change; additions
/// of optional fields or new methods do not bump it. `hello` fails with
/// [`ErrorCode::UnsupportedVersion`] when the client's version differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of this agent (the crate version).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// vsock port on which the agent accepts control (JSON-RPC) connections.
pub const CONTROL_PORT: u32 = 1024;

/// vsock port on which the agent accepts stdio stream connections.
pub const STREAM_PORT: u32 = 1025;

/// Guest-physical address of the VMM's boot-timer device (one MMIO page).
pub const BOOT_TIMER_MMIO_ADDR: u64 = 0xc000_0000;

/// Byte the agent writes at offset 0 of the boot-timer page once it starts.
pub const BOOT_TIMER_INIT_MAGIC: u8 = 123;
/// Value the agent writes once it listens on its vsock ports ("agent
/// ready": the point at which `capsa vmm --snapshot-when agent-ready`
/// takes a VM template's snapshot).
pub const BOOT_TIMER_AGENT_READY_MAGIC: u8 = 124;

/// Longest accepted message line in bytes, without its `\n` (1 MiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Longest accepted stream header line in bytes, without its `\n`.
pub const MAX_STREAM_HEADER_BYTES: usize = 4096;

/// The `jsonrpc` member of every message.
pub const JSONRPC_VERSION: &str = "2.0";

/// Error codes of [`RpcError::code`] (JSON-RPC 2.0 §5.1): the standard
/// codes, then the agent's own in the implementation-defined range
/// -32000..=-32099.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The line is not valid JSON.
    ParseError,
    /// The JSON is not a valid request object.
    InvalidRequest,
    /// No such method.
    MethodNotFound,
    /// Params missing, of the wrong type, or with unknown fields.
    InvalidParams,
    /// A bug or unexpected failure in the agent.
    InternalError,
    /// No process with this `processId`.
    NoSuchProcess,
    /// The container is not in a state that allows the method (e.g. `start`
    /// before `create`, a second `create`, `resize` of a process without
    /// tty, `pause` of a container that is not running, `resume` of one
    /// that is not paused, `exec` while paused).
    InvalidState,
    /// The process could not be started; `data.errno` and `data.stage` say
    /// why.
    ExecFailed,
    /// Mounting the rootfs or a mount failed; `data.errno`, `data.path`.
    MountFailed,
    /// `hello` with a protocol version this agent does not speak.
    UnsupportedVersion,
    /// A line longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// Another system call failed; `data.errno`.
    OsError,
    /// The agent is shutting down.
    ShuttingDown,
}

impl ErrorCode {
    /// Every code, in the order of the list.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::InternalError,
        ErrorCode::NoSuchProcess,
        ErrorCode::InvalidState,
        ErrorCode::ExecFailed,
        ErrorCode::MountFailed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::LineTooLong,
        ErrorCode::OsError,
        ErrorCode::ShuttingDown,
    ];

    /// The number on the wire.
    pub const fn code(self) -> i64 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::InternalError => -32603,
            ErrorCode::NoSuchProcess => -32000,
            ErrorCode::InvalidState => -32001,
            ErrorCode::ExecFailed => -32002,
            ErrorCode::MountFailed => -32003,
            ErrorCode::UnsupportedVersion => -32004,
            ErrorCode::LineTooLong => -32005,
            ErrorCode::OsError => -32006,
            ErrorCode::ShuttingDown => -32007,
        }
    }

    /// The code of the number `code`, if it is one of these.
    pub fn from_code(code: i64) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The name the schema and the docs use: `INVALID_STATE`, …
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::MethodNotFound => "METHOD_NOT_FOUND",
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::NoSuchProcess => "NO_SUCH_PROCESS",
            ErrorCode::InvalidState => "INVALID_STATE",
            ErrorCode::ExecFailed => "EXEC_FAILED",
            ErrorCode::MountFailed => "MOUNT_FAILED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::LineTooLong => "LINE_TOO_LONG",
            ErrorCode::OsError => "OS_ERROR",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
        }
    }
}

/// A request or notification id: a number or a string (JSON-RPC 2.0 §4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Id {
    /// Numeric id (the capsa client uses increasing integers).
    Number(i64),
    /// String id.
    String(String),
}

/// A request (`id` present) or notification (`id` absent) (JSON-RPC 2.0 §4).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Request id, echoed in the response; absent for notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Method name, see [`METHOD_NAMES`].
    pub method: String,
    /// Method params: an object (absent means `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

/// A response: exactly one of `result` and `error` (JSON-RPC 2.0 §5).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id; `null` when the request's id could not be read.
    pub id: Option<Id>,
    /// The method's result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    /// A success response.
    pub fn ok(id: Option<Id>, result: Value) -> Self {
        Response {
            jsonrpc: JSONRPC_VERSION.to_string(),
            id,
            result: Some(result),
            error: None,
        }
    }

    /// An error response.
    pub fn err(id: Option<Id>, error: RpcError) -> Self {
        Response {
            jsonrpc: JSONRPC_VERSION.to_string(),
            id,
            result: None,
            error: Some(error),
        }
    }
}

/// A JSON-RPC error object (JSON-RPC 2.0 §5.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpcError {
    /// One of [`ErrorCode`]'s numbers ([`RpcError::error_code`]).
    pub code: i64,
    /// Human-readable message (English, one line).
    pub message: String,
    /// Structured details, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ErrorData>,
}

/// Structured details of an [`RpcError`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorData {
    /// Linux errno of the failed system call (e.g. 2 = ENOENT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Which step failed, e.g. `"execve"`, `"chdir"`, `"setuid"`, `"mount"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Path involved, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Protocol versions the agent speaks (for `UNSUPPORTED_VERSION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_versions: Option<Vec<u32>>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    /// The error's code, unless it is a number this version does not know.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    /// Adds data.
    pub fn with_data(mut self, data: ErrorData) -> Self {
        self.data = Some(data);
        self
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)?;
        if let Some(data) = &self.data {
            if let Some(stage) = &data.stage {
                write!(f, ", stage {stage}")?;
            }
            if let Some(errno) = data.errno {
                write!(f, ", errno {errno}")?;
            }
            if let Some(path) = &data.path {
                write!(f, ", path {path}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// Serializes `msg` as one line (`\n`-terminated).
pub fn to_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own types (strings, numbers, maps with string keys)
    // cannot fail; fall back to an internal error line just in case.
    let mut line = serde_json::to_vec(msg).unwrap_or_else(|_| {
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"serialization failed"}}"#
            .to_vec()
    });
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_shapes() {
        let ok = Response::ok(Some(Id::Number(3)), serde_json::json!({}));
        assert_eq!(
            String::from_utf8(to_line(&ok)).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n"
        );
        let err = Response::err(None, RpcError::new(ErrorCode::ParseError, "x"));
        assert_eq!(
            String::from_utf8(to_line(&err)).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"x\"}}\n"
        );
    }

    #[test]
    fn error_codes_are_distinct_and_named_once() {
        for (i, a) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(ErrorCode::from_code(a.code()), Some(*a));
            for b in &ErrorCode::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(ErrorCode::from_code(-1), None);
    }

    #[test]
    fn request_without_params_parses() {
        let r: Request =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":"a","method":"ps"}"#).unwrap();
        assert_eq!(r.id, Some(Id::String("a".into())));
        assert!(r.params.is_none());
    }
}
