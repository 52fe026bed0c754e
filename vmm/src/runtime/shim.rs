//! The per-container VMM process (`capsa container-vmm ID`, hidden), which
//! `create` starts through `capsa-jailer` (whose pid goes to
//! `--pid-file`; see [`super::jail`]). It boots the VM from the inputs
//! `create` left in its directory (`vm.json`, `agent.json`, `shim.json`;
//! `/` of the jail), has the agent create the container, attaches the
//! container's stdio (its own inherited fds 0/1/2, or the slave of the pty
//! whose master `create` sent to `--console-socket`), reports readiness,
//! and then waits: when the
//! container's process exits it writes `exit`, asks the agent to shut the
//! guest down, and exits with the process's status (128+N for signal N).
//!
//! Threads: the main thread runs the VM's event loop ([`Vmm::run`]); a
//! controller thread talks to the agent.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsa_agent::client::{attach_stream, Client, HybridVsockConnector, Notification};
use capsa_agent::protocol::CreateParams;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::spawn::Ready;
use super::stdio::{attach_pipes, copy, dup_stdio, Relays};
use super::{console, RuntimeError, BOOT_TIMEOUT};
use crate::builder::build_microvm;
use crate::config::VmConfig;
use crate::vstate::vcpu::VmExit;

/// Status of the VMM process when the VM ended without a container exit.
pub const EXIT_VM_FAILED: u8 = 255;

/// Options of the VMM process that are not the VM's or the agent's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimOptions {
    /// With `--console-socket`: the inherited descriptor of the pty slave
    /// whose master `create` sent to the engine (`create` opens the pty:
    /// the jailed VMM can reach neither `/dev/pts` nor the socket).
    #[serde(default)]
    pub console_fd: Option<i32>,
}

/// Where a process's terminal goes.
pub enum Console<'a> {
    /// No pty: the terminal stream is relayed to this process's
    /// stdin/stdout.
    Inherit,
    /// Make a pty and send its master to this `--console-socket`.
    Socket(&'a Path),
    /// Relay this pty slave (its master was sent already).
    Slave(std::os::fd::OwnedFd),
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs the VMM process for the container whose VMM files are in `dir`;
/// returns its exit code.
pub fn run(dir: &Path, start: Instant) -> u8 {
    // Not dumpable: another process of the same uid (none should exist,
    // uids are leased per VMM) can neither ptrace it nor open its
    // /proc/PID/{root,fd,mem}.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut ready = Ready::from_env();
    let inputs = (|| -> Result<_, String> {
        let config: VmConfig = read_json(&dir.join("vm.json"))?;
        let params: CreateParams = read_json(&dir.join("agent.json"))?;
        let options: ShimOptions = read_json(&dir.join("shim.json"))?;
        Ok((config, params, options))
    })();
    let (config, params, options) = match inputs {
        Ok(i) => i,
        Err(e) => {
            ready.fail(&e);
            return 1;
        }
    };
    let Some(vsock) = config.vsock.as_ref().map(|v| v.uds_path.clone()) else {
        ready.fail("vm.json: vsock: missing");
        return 1;
    };
    let (vmm, _marks) = match build_microvm(&config, start) {
        Ok(v) => v,
        Err(e) => {
            ready.fail(&format!("cannot create the VM: {e}"));
            return 1;
        }
    };
    let handle = vmm.handle();
    let status: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(None));
    let vm_ended = Arc::new(AtomicBool::new(false));
    let controller = {
        let (status, vm_ended, dir) = (status.clone(), vm_ended.clone(), dir.to_owned());
        std::thread::Builder::new()
            .name("capsa-controller".into())
            .spawn(move || {
                let result = control(
                    &mut ready, &vsock, &params, &options, &dir, &status, &vm_ended,
                );
                if let Err(e) = result {
                    tracing::error!("{e}");
                    ready.fail(&e.to_string());
                }
                // Nothing in the guest outlives the container (the rootfs
                // is a read-only image under a RAM overlay, bind mounts
                // are copies): end the VM now rather than wait seconds
                // for an emulated guest kernel to unmount and reset, so
                // that engines waiting on this pid see the exit at once.
                handle.request_exit(VmExit::Reset);
            })
    };
    let controller = match controller {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot start the controller thread: {e}");
            return 1;
        }
    };
    let exit = vmm.run();
    vm_ended.store(true, Ordering::SeqCst);
    if !exit.is_clean() {
        tracing::error!("the VM ended: {exit}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !controller.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = status.lock().ok().and_then(|s| *s);
    match code {
        Some(c) => (c & 0xff) as u8,
        None => {
            let _ = std::fs::write(dir.join("exit"), EXIT_VM_FAILED.to_string());
            EXIT_VM_FAILED
        }
    }
}

/// The last lines of the guest console log, to explain a VM that ended
/// early (a kernel panic, an init that failed to start).
fn console_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(5)..];
    format!("; guest console:\n  {}", tail.join("\n  "))
}

/// Connects to the agent, retrying while the guest boots, until the VM
/// ends or [`BOOT_TIMEOUT`].
fn connect(
    connector: &HybridVsockConnector,
    vm_ended: &AtomicBool,
    ready: &Ready,
    console: &Path,
) -> Result<Client, RuntimeError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let attempt =
            Client::connect(connector).and_then(|c| c.hello(Duration::from_secs(5)).map(|_| c));
        match attempt {
            Ok(c) => return Ok(c),
            Err(_) if !ready.parent_alive() => {
                return Err(RuntimeError::Failed(
                    "`create` went away before the container was created".into(),
                ))
            }
            Err(e) if vm_ended.load(Ordering::SeqCst) => {
                return Err(RuntimeError::Failed(format!(
                    "the VM ended before its agent answered ({e}){}",
                    console_tail(console)
                )))
            }
            Err(e) if Instant::now() > deadline => {
                return Err(RuntimeError::Failed(format!(
                    "the guest agent did not answer within {BOOT_TIMEOUT:?}: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn control(
    ready: &mut Ready,
    vsock: &Path,
    params: &CreateParams,
    options: &ShimOptions,
    dir: &Path,
    status: &Mutex<Option<i32>>,
    vm_ended: &AtomicBool,
) -> Result<(), RuntimeError> {
    let connector = HybridVsockConnector::new(vsock);
    let client = Arc::new(connect(
        &connector,
        vm_ended,
        ready,
        &dir.join("console.log"),
    )?);
    client.set_timeout(Some(Duration::from_secs(60)));
    let created = client.create(params)?;
    let init = created.process_id;
    let relays = attach(&connector, &client, &created.streams, params, options, init)?;
    if !ready.ok(json!({ "initProcessId": init })) {
        let _ = client.shutdown();
        return Err(RuntimeError::Failed(
            "`create` went away before the container was created".into(),
        ));
    }
    let exit = loop {
        match client.next_notification(Duration::from_millis(500)) {
            Some(Notification::Exit(e)) if e.process_id == init => break Some(e),
            Some(_) => {}
            None if client.is_closed() || vm_ended.load(Ordering::SeqCst) => break None,
            None => {}
        }
    };
    let code = match &exit {
        Some(e) => e.status_code(),
        None => {
            tracing::error!("lost the guest agent before the container's process exited");
            i32::from(EXIT_VM_FAILED)
        }
    };
    relays.wait_outputs(Duration::from_secs(5));
    let _ = std::fs::write(dir.join("exit"), code.to_string());
    if let Ok(mut s) = status.lock() {
        *s = Some(code);
    }
    Ok(())
}

/// Attaches the container's streams: the pty slave `create` made for
/// `--console-socket`, the tty stream to this process's stdin/stdout
/// without one, or the pipes.
fn attach(
    connector: &HybridVsockConnector,
    client: &Arc<Client>,
    streams: &capsa_agent::protocol::StreamTokens,
    params: &CreateParams,
    options: &ShimOptions,
    process_id: u64,
) -> Result<Relays, RuntimeError> {
    let console = match options.console_fd {
        Some(fd) => Console::Slave(inherited_tty(fd)?),
        None => Console::Inherit,
    };
    attach_process(
        connector,
        client,
        streams,
        params.process.console_size,
        console,
        process_id,
    )
}

/// Takes the inherited descriptor `fd`, which must be a terminal.
fn inherited_tty(fd: i32) -> Result<std::os::fd::OwnedFd, RuntimeError> {
    use std::os::fd::FromRawFd;
    // SAFETY: isatty only inspects the descriptor number.
    if fd <= 2 || unsafe { libc::isatty(fd) } != 1 {
        return Err(RuntimeError::Failed(format!(
            "shim.json: console_fd: {fd} is not an inherited terminal"
        )));
    }
    // SAFETY: `create` passed this descriptor to this process for the
    // console only; nothing else here owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Shared by the VMM process and `exec`: relays one process's streams.
pub fn attach_process(
    connector: &HybridVsockConnector,
    client: &Arc<Client>,
    streams: &capsa_agent::protocol::StreamTokens,
    console_size: Option<capsa_agent::protocol::ConsoleSize>,
    console: Console<'_>,
    process_id: u64,
) -> Result<Relays, RuntimeError> {
    if let Some(token) = &streams.tty {
        let tty = attach_stream(connector, token)?;
        let slave = match console {
            Console::Socket(socket) => {
                let pty = console::open(console_size)?;
                console::send_master(socket, &pty.master)?;
                Some(pty.slave)
            }
            Console::Slave(slave) => Some(slave),
            Console::Inherit => None,
        };
        if let Some(slave) = slave {
            let c = client.clone();
            return console::relay(slave, tty, move |rows, cols| {
                if let Err(e) = c.resize(process_id, rows, cols) {
                    tracing::debug!("resize: {e}");
                }
            });
        }
        let input = dup_stdio(std::io::stdin())?;
        let output = dup_stdio(std::io::stdout())?;
        let to_guest = tty
            .try_clone()
            .map_err(|e| RuntimeError::io("dup tty stream", e))?;
        std::thread::spawn(move || {
            copy(input, &to_guest);
        });
        let mut relays = Relays::default();
        relays.push_output(std::thread::spawn(move || {
            copy(&tty, output);
        }));
        return Ok(relays);
    }
    attach_pipes(
        connector,
        streams,
        Some(dup_stdio(std::io::stdin())?),
        dup_stdio(std::io::stdout())?,
        dup_stdio(std::io::stderr())?,
    )
}
