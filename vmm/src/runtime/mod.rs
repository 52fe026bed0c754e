//! The OCI runtime front end: what `capsa create/start/state/kill/delete/
//! exec/ps/list/run` do (OCI runtime spec, `runtime.md` § "Operations"),
//! split by concern:
//!
//! - [`container`]: the verbs, each written once over the container's
//!   [`backend`];
//! - [`state`]: the state directory `<root>/<id>/` and the container's OCI
//!   state (creating, created, running, stopped);
//! - [`bundle`]: reading and validating `config.json`;
//! - [`rootfs`]: the bundle's root directory as a cached ext4 image, and the
//!   small disk that carries bind-mounted host files;
//! - [`vm_spec`]: the runtime spec turned into a [`vm_spec::VmSpec`], then
//!   into the VMM process's inputs (a [`crate::config::VmConfig`] and the
//!   agent's `create` parameters);
//! - [`backend`]: the interface both runtime types implement;
//! - [`vm`]: the `vm` runtime type (`create` step by step, `exec`);
//! - [`vmm_process`]: the per-container VMM process (the pid engines wait
//!   on) and its typed inputs and readiness report;
//! - [`jail`]: the jail `capsa-jailer` starts that process in;
//! - [`host_process`]: host processes known by pid and start time;
//! - [`id_lock`]: `create` and `delete` of one id one at a time, and what
//!   a `create` started, recorded before readiness;
//! - [`stdio`] and [`console`]: relaying the caller's stdio or a pty to the
//!   guest process's streams;
//! - [`template`]: VM templates, the snapshots warm starts restore;
//! - [`spawn`]: re-executing `capsa` as a helper that reports readiness;
//! - [`virtiofsd`]: the virtio-fs backend serving a container's rootfs and
//!   bind mounts;
//! - [`runc`]: the `process` runtime type, handed to runc;
//! - [`signal`]: signal names and numbers.

pub mod backend;
pub mod bundle;
pub mod cgroup;
pub mod console;
pub mod container;
pub mod host_process;
pub mod id_lock;
pub mod jail;
pub mod network;
pub mod rootfs;
pub mod runc;
pub mod signal;
pub mod spawn;
pub mod state;
pub mod stdio;
pub mod template;
pub mod virtiofsd;
pub mod vm;
pub mod vm_spec;
pub mod vmm_process;

use std::path::PathBuf;

/// Annotation that picks the runtime type of a container.
pub const RUNTIME_ANNOTATION: &str = "io.capsa.runtime";

/// Annotation that picks how a VM container's rootfs reaches the guest
/// (`virtiofs`, the default, or `block`; see [`bundle::RootfsTransport`]).
pub const ROOTFS_ANNOTATION: &str = "io.capsa.rootfs";

/// Annotation that picks how a VM container's guest starts (`warm`, the
/// default: from a template when one is ready; `cold`; see
/// [`bundle::BootMode`]).
pub const BOOT_ANNOTATION: &str = "io.capsa.boot";

/// Default state root (as runc's `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/capsa";

/// How long a VM may take from process start to a created container
/// (guest boot plus agent `create`); boots are slow on emulated, busy hosts.
pub const BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Errors of the runtime front end. Messages name the field or the file.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bundle or its `config.json` is unusable.
    #[error("bundle {bundle}: {message}")]
    Bundle {
        /// The bundle directory.
        bundle: PathBuf,
        /// What is wrong (naming the field).
        message: String,
    },
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// A container with this id already exists.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// The id cannot be used as a directory name.
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.' (not first)")]
    InvalidId(String),
    /// The operation does not fit the container's state.
    #[error("container {id:?} is {status}: {message}")]
    State {
        /// The container.
        id: String,
        /// Its status.
        status: state::Status,
        /// Why the operation cannot be done.
        message: String,
    },
    /// The operation is not available for this runtime type.
    #[error("{0}")]
    Unsupported(String),
    /// The agent in the guest refused or failed.
    #[error("guest agent: {0}")]
    Agent(#[from] capsa_agent::client::ClientError),
    /// Building an image failed.
    #[error("rootfs image: {0}")]
    Image(String),
    /// A helper process or a tool failed; the message says which and why.
    #[error("{0}")]
    Failed(String),
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of the runtime front end.
pub type Result<T> = std::result::Result<T, RuntimeError>;
