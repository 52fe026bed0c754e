//! The two runtime types behind one interface. A [`Backend`] is what one
//! runtime type does for each OCI verb; [`Runtime`](super::container::Runtime)
//! picks the backend of a container's type in one place and writes each
//! verb once on top of it.
//!
//! - `vm` ([`super::vm::VmBackend`]): capsa keeps the container's state
//!   and enforces the status rules of [`Status`] (`can_start`, …);
//! - `process` ([`super::runc::Runc`]): the call goes to runc, which keeps
//!   the state and applies the same rules itself.

use std::path::{Path, PathBuf};
use std::process::Child;

use super::bundle::Bundle;
use super::state::{Container, Status};
use super::Result;

/// Options of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `--bundle`.
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `run` in the foreground: keep the VMM process in the caller's
    /// session.
    pub foreground: bool,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is `slice:prefix:name`
    /// (see [`super::cgroup`]).
    pub systemd_cgroup: bool,
}

/// Options of `exec` (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// `--process`: the process as OCI `process` JSON (instead of `args`).
    pub process: Option<PathBuf>,
    /// `--tty`.
    pub tty: bool,
    /// `--detach`: return once the process started; a helper process
    /// relays its stdio.
    pub detach: bool,
    /// `--pid-file`: the pid of the process that stands for the exec'd one.
    pub pid_file: Option<PathBuf>,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--cwd`.
    pub cwd: Option<String>,
    /// `--env KEY=VALUE`, in order.
    pub env: Vec<String>,
    /// The command and its arguments (unless `process`).
    pub args: Vec<String>,
}

/// `ps --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsFormat {
    /// `PID PPID CMD` lines.
    Table,
    /// A JSON array of pids.
    Json,
}

/// What `create` made: the process `run` waits on, when it is a child of
/// this process.
pub struct Created {
    /// The jailer (or the unjailed VMM process) of a `vm` container; `None`
    /// for a `process` container, whose process runc started.
    pub child: Option<Child>,
}

/// What a runtime type does for each verb (runtime spec `runtime.md`
/// § "Operations", with runc's semantics).
pub trait Backend {
    /// `create`: container `id` from `bundle` in its new state directory
    /// `dir`; on failure the caller removes `dir`.
    fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        dir: &Path,
        opts: &CreateOptions,
    ) -> Result<Created>;
    /// `start`: runs the container's process.
    fn start(&self, c: &Container) -> Result<()>;
    /// The status and, unless stopped, the host pid that stands for the
    /// container's process.
    fn status(&self, c: &Container) -> (Status, Option<i32>);
    /// `kill`: `signal` to the container's process (`all`: to every
    /// process of the container).
    fn kill(&self, c: &Container, signal: i32, all: bool) -> Result<()>;
    /// `delete`: stops what is left of the container (`force`: also a
    /// running one); the caller then removes its files.
    fn delete(&self, c: &Container, force: bool) -> Result<()>;
    /// `ps`: the container's processes, as text to print.
    fn ps(&self, c: &Container, format: PsFormat) -> Result<String>;
    /// `pause`: freezes the container's processes.
    fn pause(&self, c: &Container) -> Result<()>;
    /// `resume`: thaws them.
    fn resume(&self, c: &Container) -> Result<()>;
    /// `exec`: another process in the container; returns the exit status
    /// to exit with (0 when detached).
    fn exec(&self, c: &Container, opts: &ExecOptions) -> Result<u8>;
    /// Waits for the container's process that `create` made (`run`);
    /// returns its exit status (128+N when killed by signal N).
    fn wait(&self, c: &Container, created: Created) -> i32;
}
