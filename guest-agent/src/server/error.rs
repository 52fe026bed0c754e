//! The agent's error type and its mapping to JSON-RPC error objects.

use crate::protocol::{DispatchError, ErrorCode, ErrorData, RpcError, PROTOCOL_VERSION};

/// Why a method failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Params missing, of the wrong type, unknown fields, or invalid values.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// No such method.
    #[error("method not found: {0}")]
    MethodNotFound(String),
    /// No process with this id.
    #[error("no such process: {0}")]
    NoSuchProcess(u64),
    /// The container's state does not allow the method.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// Starting the process failed at `stage` with `errno`.
    #[error("exec failed at {stage}: {}", std::io::Error::from_raw_os_error(*errno))]
    ExecFailed {
        /// The failed step (`execve`, `chdir`, `setuid`, …).
        stage: &'static str,
        /// Linux errno.
        errno: i32,
    },
    /// A mount failed.
    #[error("mount of {path} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    MountFailed {
        /// The mount target (or source, for the rootfs).
        path: String,
        /// Linux errno.
        errno: i32,
    },
    /// Another system call failed.
    #[error("{what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// What was being done.
        what: String,
        /// Linux errno.
        errno: i32,
    },
    /// The client's protocol version is not spoken here.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DispatchError> for AgentError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::MethodNotFound(m) => AgentError::MethodNotFound(m),
            DispatchError::InvalidParams(m) => AgentError::InvalidParams(m),
            DispatchError::Result(m) => AgentError::Internal(m),
        }
    }
}

impl AgentError {
    /// An [`AgentError::Os`] from the last OS error.
    pub fn last_os(what: impl Into<String>) -> Self {
        AgentError::from_io(what, &std::io::Error::last_os_error())
    }

    /// An [`AgentError::Os`] from an I/O error.
    pub fn from_io(what: impl Into<String>, err: &std::io::Error) -> Self {
        AgentError::Os {
            what: what.into(),
            errno: err.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// The JSON-RPC error object.
    pub fn to_rpc(&self) -> RpcError {
        let message = self.to_string();
        match self {
            AgentError::InvalidParams(_) => RpcError::new(ErrorCode::InvalidParams, message),
            AgentError::MethodNotFound(_) => RpcError::new(ErrorCode::MethodNotFound, message),
            AgentError::NoSuchProcess(_) => RpcError::new(ErrorCode::NoSuchProcess, message),
            AgentError::InvalidState(_) => RpcError::new(ErrorCode::InvalidState, message),
            AgentError::ExecFailed { stage, errno } => {
                RpcError::new(ErrorCode::ExecFailed, message).with_data(ErrorData {
                    errno: Some(*errno),
                    stage: Some(stage.to_string()),
                    ..Default::default()
                })
            }
            AgentError::MountFailed { path, errno } => {
                RpcError::new(ErrorCode::MountFailed, message).with_data(ErrorData {
                    errno: Some(*errno),
                    stage: Some("mount".into()),
                    path: Some(path.clone()),
                    ..Default::default()
                })
            }
            AgentError::Os { errno, .. } => {
                RpcError::new(ErrorCode::OsError, message).with_data(ErrorData {
                    errno: Some(*errno),
                    ..Default::default()
                })
            }
            AgentError::UnsupportedVersion(_) => {
                RpcError::new(ErrorCode::UnsupportedVersion, message).with_data(ErrorData {
                    supported_versions: Some(vec![PROTOCOL_VERSION]),
                    ..Default::default()
                })
            }
            AgentError::ShuttingDown => RpcError::new(ErrorCode::ShuttingDown, message),
            AgentError::Internal(_) => RpcError::new(ErrorCode::InternalError, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failed_carries_errno_and_stage() {
        let e = AgentError::ExecFailed {
            stage: "execve",
            errno: libc::ENOENT,
        }
        .to_rpc();
        assert_eq!(e.error_code(), Some(ErrorCode::ExecFailed));
        let data = e.data.unwrap();
        assert_eq!(data.errno, Some(libc::ENOENT));
        assert_eq!(data.stage.as_deref(), Some("execve"));
    }
}
