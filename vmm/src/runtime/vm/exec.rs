//! A process started in a running `vm` container (`capsa exec`): this
//! process (or, with `--detach`, a helper `capsa exec-process`) talks to
//! the agent directly over the container's hybrid vsock socket (the agent
//! serves several control connections), relays the process's stdio like
//! the VMM process does, and exits with the process's status.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use capsa_agent::client::ClientError;
use capsa_agent::protocol::{ExecParams, ProcessSpec};
use serde::{Deserialize, Serialize};

use super::VmContainer;
use crate::runtime::backend::ExecOptions;
use crate::runtime::spawn::{self, Ready};
use crate::runtime::state::{write_atomic, Operation};
use crate::runtime::stdio::{attach_process, Console};
use crate::runtime::{bundle, vm_spec, Result, RuntimeError};

/// What a detached exec's helper (`capsa exec-process`) reports once the
/// process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecReady {
    /// The process's pid in the guest.
    pub pid: i32,
}

/// `exec` in `vm` (state root `root`): returns the process's exit status,
/// or 0 once a detached one started.
pub fn exec(root: &Path, vm: &VmContainer<'_>, opts: &ExecOptions) -> Result<u8> {
    vm.require(Operation::Exec)?;
    let process = process_spec(vm, opts)?;
    if opts.detach {
        return detach(root, vm, process, opts);
    }
    if let Some(p) = &opts.pid_file {
        write_atomic(p, std::process::id().to_string().as_bytes())?;
    }
    let mut ready = Ready::from_env();
    let status = run(vm, process, opts.console_socket.as_deref(), &mut ready)?;
    Ok((status & 0xff) as u8)
}

/// The process to exec: `--process`, or `args` on the base of the
/// container's own process (env, cwd, user, …, as runc does); then
/// `--cwd`, `--env` and `--tty`.
fn process_spec(vm: &VmContainer<'_>, opts: &ExecOptions) -> Result<ProcessSpec> {
    let mut process = match &opts.process {
        Some(file) => {
            let p = read_process(file)?;
            vm_spec::process_spec(&p, (p.user().uid(), p.user().gid()))
        }
        None => {
            if opts.args.is_empty() {
                return Err(RuntimeError::Failed(
                    "exec: give the command (ARGS) or --process FILE".into(),
                ));
            }
            let mut p = base_process(vm)?;
            p.args = opts.args.clone();
            p
        }
    };
    if let Some(cwd) = &opts.cwd {
        process.cwd = cwd.clone();
    }
    process.env.extend(opts.env.iter().cloned());
    process.terminal |= opts.tty;
    if process.args.is_empty() {
        return Err(RuntimeError::Failed(
            "exec: process.args must not be empty".into(),
        ));
    }
    Ok(process)
}

/// Reads `--process FILE`, an OCI `process` object; errors name the field.
fn read_process(file: &Path) -> Result<oci_spec::runtime::Process> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| RuntimeError::io(format!("--process {}", file.display()), e))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        RuntimeError::Failed(format!(
            "--process {}: {}: {}",
            file.display(),
            e.path(),
            e.inner()
        ))
    })
}

/// The base of an exec'd process: the container's `config.json` process
/// (env, cwd, user, …), as runc does, without its terminal.
fn base_process(vm: &VmContainer<'_>) -> Result<ProcessSpec> {
    let spec = bundle::load_spec(&vm.container.record.bundle)?;
    let process = spec.process().clone().unwrap_or_default();
    let user = (process.user().uid(), process.user().gid());
    let mut p = vm_spec::process_spec(&process, user);
    p.terminal = false;
    p.console_size = None;
    Ok(p)
}

/// `exec --detach`: a helper `capsa exec-process` starts the process and
/// relays its stdio; returns once it reported the process started. Its pid
/// goes to `--pid-file`.
fn detach(
    root: &Path,
    vm: &VmContainer<'_>,
    process: ProcessSpec,
    opts: &ExecOptions,
) -> Result<u8> {
    let file = vm
        .container
        .dir
        .join(format!("exec-{}.json", std::process::id()));
    let text = serde_json::to_vec(&process)
        .map_err(|e| RuntimeError::Failed(format!("cannot encode the process: {e}")))?;
    write_atomic(&file, &text)?;
    let mut helper: Vec<OsString> = vec![
        "--root".into(),
        root.into(),
        "exec-process".into(),
        "--process-file".into(),
        file.clone().into(),
    ];
    if let Some(s) = &opts.console_socket {
        let s = std::path::absolute(s).map_err(|e| RuntimeError::io("--console-socket", e))?;
        helper.push("--console-socket".into());
        helper.push(s.into());
    }
    helper.push(vm.container.record.id.clone().into());
    let result = spawn::spawn(&helper, true).and_then(|p| p.wait_ready(Duration::from_secs(60)));
    let _ = std::fs::remove_file(&file);
    let (child, _): (_, ExecReady) = result?;
    if let Some(p) = &opts.pid_file {
        write_atomic(p, child.id().to_string().as_bytes())?;
    }
    Ok(0)
}

/// The helper of `exec --detach` (`capsa exec-process`): starts the
/// process written to `process_file` in `vm`, reports to `ready`, relays
/// its stdio and returns its exit status.
pub fn serve_detached(
    vm: &VmContainer<'_>,
    process_file: &Path,
    console_socket: Option<&Path>,
    ready: &mut Ready,
) -> Result<i32> {
    let text = std::fs::read_to_string(process_file)
        .map_err(|e| RuntimeError::io(format!("{}", process_file.display()), e))?;
    let process: ProcessSpec = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::Failed(format!("{}: {e}", process_file.display())))?;
    vm.require(Operation::Exec)?;
    run(vm, process, console_socket, ready)
}

/// Starts `process` in `vm`, relays its stdio, reports to `ready` once
/// started, and returns its exit status (137 when the VM went away first).
fn run(
    vm: &VmContainer<'_>,
    process: ProcessSpec,
    console_socket: Option<&Path>,
    ready: &mut Ready,
) -> Result<i32> {
    let (connector, client) = vm.agent()?;
    let client = Arc::new(client);
    let console_size = process.console_size;
    let started = client.exec(&ExecParams {
        process,
        stdin: true,
    })?;
    let relays = attach_process(
        &connector,
        &client,
        &started.streams,
        console_size,
        console_socket.map_or(Console::Inherit, Console::Socket),
        started.process_id,
    )?;
    if !ready.ready(ExecReady { pid: started.pid }) {
        let _ = client.signal(started.process_id, libc::SIGKILL);
    }
    let status = match client.wait(started.process_id) {
        Ok(exit) => exit.status_code(),
        Err(ClientError::Closed) => 137,
        Err(e) => return Err(e.into()),
    };
    relays.wait_outputs(Duration::from_secs(5));
    Ok(status)
}
