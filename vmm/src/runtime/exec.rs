//! A process started in a running container (`capsa exec`): this process
//! (or, with `--detach`, a helper `capsa exec-process`) talks to the agent
//! directly over the container's hybrid vsock socket (the agent serves
//! several control connections), relays the process's stdio like the VMM
//! process does, and exits with the process's status.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use capsa_agent::client::{Client, ClientError, HybridVsockConnector};
use capsa_agent::protocol::{ExecParams, ProcessSpec};
use serde::{Deserialize, Serialize};

use super::spawn::Ready;
use super::state::Container;
use super::stdio::{attach_process, Console};
use super::{Result, RuntimeError};

/// What a detached exec's helper (`capsa exec-process`) reports once the
/// process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecReady {
    /// The process's pid in the guest.
    pub pid: i32,
}

/// Connects a new control connection to the agent of `container`.
pub fn agent(container: &Container) -> Result<(HybridVsockConnector, Client)> {
    let vm = container.vm().ok_or_else(|| {
        RuntimeError::Unsupported(format!(
            "container {:?} has no guest agent (runtime type {})",
            container.record.id,
            container.record.runtime.kind()
        ))
    })?;
    let connector = HybridVsockConnector::new(&vm.vsock);
    let client = Client::connect(&connector)?;
    client.hello(Duration::from_secs(10))?;
    client.set_timeout(Some(Duration::from_secs(60)));
    Ok((connector, client))
}

/// Starts `process` in `container`, relays its stdio, reports to `ready`
/// once started, and returns its exit status (137 when the VM went away
/// first).
pub fn run(
    container: &Container,
    process: ProcessSpec,
    console_socket: Option<&Path>,
    ready: &mut Ready,
) -> Result<i32> {
    let (connector, client) = agent(container)?;
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
