//! The VMM process of a container (`capsa vmm-process ID`, hidden), which
//! `create` starts through `capsa-jailer` (whose pid goes to
//! `--pid-file`; see [`super::jail`]). It boots the VM from the
//! [`VmmInputs`] `create` left in its directory (`/` of the jail), has the
//! agent create the container, attaches the container's stdio (its own
//! inherited fds 0/1/2, or the pty slave whose master `create` sent to
//! `--console-socket`), reports [`VmmReady`], and then waits: when the
//! container's process exits it writes `exit` (and [`OOM_MARK`] when the
//! guest's OOM killer struck), has the VM end, and exits with the
//! process's status (128+N for signal N: 137 for an OOM kill).
//!
//! Threads: the main thread runs the VM's event loop ([`Vmm::run`]); a
//! controller thread talks to the agent and starts the stdio relays. Each
//! runs under its own seccomp allow-list ([`crate::seccomp`]).
//!
//! [`Vmm::run`]: crate::vmm::Vmm::run

pub mod inputs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsa_agent::client::{Client, HybridVsockConnector, Notification};
use capsa_agent::protocol::{CreateParams, NewMachineParams};

pub use inputs::{VmmInputs, VmmReady};

use super::spawn::Ready;
use super::stdio::{attach_process, Console, Relays};
use super::{RuntimeError, BOOT_TIMEOUT};
use crate::builder::build_microvm;
use crate::vstate::vcpu::VmExit;

/// Status of the VMM process when the VM ended without a container exit.
pub const EXIT_VM_FAILED: u8 = 255;

/// The empty file the VMM process leaves in its directory when the guest's
/// OOM killer struck the container (the agent's `oomKilled`); `create`
/// has the jailer relay it to the engine's `<bundle>/oom`.
pub const OOM_MARK: &str = "oom";

/// What the controller thread works with.
struct Controller {
    dir: PathBuf,
    vsock: PathBuf,
    console_log: Option<PathBuf>,
    container: CreateParams,
    /// After a restore from a template: what makes the guest a new
    /// machine before the container is created.
    new_machine: Option<NewMachine>,
    console_fd: Option<i32>,
    status: Arc<Mutex<Option<i32>>>,
    vm_ended: Arc<AtomicBool>,
}

/// What a guest restored from a template gets before `create`: fresh
/// entropy, and the devices put in the template's free slots, to bind.
struct NewMachine {
    entropy: [u8; 64],
    devices: Vec<String>,
}

impl NewMachine {
    /// What a VM restored from a template (`config.restore_from`) needs:
    /// entropy read here, before the threads' seccomp filters
    /// (`getrandom(2)`), and the devices the restore added. `None` after a
    /// cold boot.
    fn plan(
        config: &crate::config::VmConfig,
        vmm: &crate::vmm::Vmm,
    ) -> Result<Option<NewMachine>, String> {
        if config.restore_from.is_none() {
            return Ok(None);
        }
        let mut entropy = [0u8; 64];
        capsa_devices::virtio::rng::fill_random(&mut entropy)
            .map_err(|e| format!("cannot read entropy for the restored guest: {e}"))?;
        Ok(Some(NewMachine {
            entropy,
            devices: vmm.added_devices(),
        }))
    }

    /// The `new_machine` call, with the host's clock now.
    fn params(&self) -> NewMachineParams {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        NewMachineParams {
            realtime_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            entropy: self.entropy.iter().map(|b| format!("{b:02x}")).collect(),
            devices: self.devices.clone(),
        }
    }
}

/// Runs the VMM process for the container whose VMM files are in `dir`;
/// returns its exit code.
pub fn run(dir: &Path, start: Instant) -> u8 {
    // Not dumpable: another process of the same uid (none should exist,
    // uids are leased per VMM) can neither ptrace it nor open its
    // /proc/PID/{root,fd,mem}.
    let _ = nix::sys::prctl::set_dumpable(false);
    // Pid 1 of its own PID namespace in the jail: engines' signals arrive
    // only if handled.
    crate::pid1::handle_termination_signals();
    let mut ready = Ready::from_env();
    let inputs = match VmmInputs::read(dir) {
        Ok(i) => i,
        Err(e) => {
            ready.fail(&e);
            return 1;
        }
    };
    let Some(vsock) = inputs.vm.vsock.as_ref().map(|v| v.uds_path.clone()) else {
        ready.fail(&format!("{}: vm.vsock: missing", inputs::INPUTS_FILE));
        return 1;
    };
    let (vmm, _marks) = match build_microvm(&inputs.vm, start) {
        Ok(v) => v,
        Err(e) => {
            ready.fail(&format!("cannot create the VM: {e}"));
            return 1;
        }
    };
    let new_machine = match NewMachine::plan(&inputs.vm, &vmm) {
        Ok(m) => m,
        Err(e) => {
            ready.fail(&e);
            return 1;
        }
    };
    let controller = Controller {
        dir: dir.to_owned(),
        vsock,
        console_log: inputs.vm.serial_log.clone(),
        container: inputs.container,
        new_machine,
        console_fd: inputs.console_fd,
        status: Arc::new(Mutex::new(None)),
        vm_ended: Arc::new(AtomicBool::new(false)),
    };
    let (status, vm_ended) = (controller.status.clone(), controller.vm_ended.clone());
    let handle = vmm.handle();
    let filters = vmm.filters();
    let thread = std::thread::Builder::new()
        .name("capsa-controller".into())
        .spawn(move || {
            // Its relay threads inherit the filter.
            let confined = filters
                .install(crate::seccomp::ThreadKind::Controller)
                .map_err(|e| RuntimeError::Failed(e.to_string()));
            if let Err(e) = confined.and_then(|()| controller.run(&mut ready)) {
                tracing::error!("{e}");
                ready.fail(&e.to_string());
            }
            // Nothing in the guest outlives the container (the rootfs
            // is a read-only image under a RAM overlay, bind mounts
            // are copies): end the VM now rather than wait seconds
            // for an emulated guest kernel to unmount and reset, so
            // that engines waiting on this pid see the exit at once.
            handle.request_exit(VmExit::Reset);
        });
    let thread = match thread {
        Ok(t) => t,
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
    if let VmExit::DeviceFailed { .. } = exit {
        // On the VMM process's stderr, which is the container's stderr in
        // the engine's output: the container did not just exit.
        eprintln!("capsa: the container ended: {exit}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !thread.is_finished() && Instant::now() < deadline {
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
fn console_tail(path: Option<&Path>) -> String {
    let text = path.and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(5)..];
    format!("; guest console:\n  {}", tail.join("\n  "))
}

impl Controller {
    /// Connects to the agent, retrying while the guest boots, until the VM
    /// ends or [`BOOT_TIMEOUT`].
    fn connect(
        &self,
        connector: &HybridVsockConnector,
        ready: &Ready,
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
                Err(e) if self.vm_ended.load(Ordering::SeqCst) => {
                    return Err(RuntimeError::Failed(format!(
                        "the VM ended before its agent answered ({e}){}",
                        console_tail(self.console_log.as_deref())
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

    /// Creates the container, reports readiness, waits for the container's
    /// process to exit and records its status.
    fn run(self, ready: &mut Ready) -> Result<(), RuntimeError> {
        let connector = HybridVsockConnector::new(&self.vsock);
        let client = Arc::new(self.connect(&connector, ready)?);
        client.set_timeout(Some(Duration::from_secs(60)));
        if let Some(m) = &self.new_machine {
            let bound = client.new_machine(&m.params())?;
            tracing::info!(devices = ?bound.bound, "the restored guest is a new machine");
        }
        let created = client.create(&self.container)?;
        let init = created.process_id;
        let relays = self.attach(&connector, &client, &created.streams, init)?;
        if !ready.ready(VmmReady {
            init_process_id: init,
        }) {
            let _ = client.shutdown();
            return Err(RuntimeError::Failed(
                "`create` went away before the container was created".into(),
            ));
        }
        let exit = loop {
            match client.next_notification(Duration::from_millis(500)) {
                Some(Notification::Exit(e)) if e.process_id == init => break Some(e),
                Some(_) => {}
                None if client.is_closed() || self.vm_ended.load(Ordering::SeqCst) => break None,
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
        if exit.as_ref().is_some_and(|e| e.oom_killed) {
            // Before `exit`: whoever reads `exit` finds the mark too.
            let _ = std::fs::write(self.dir.join(OOM_MARK), b"");
        }
        let _ = std::fs::write(self.dir.join("exit"), code.to_string());
        if let Ok(mut s) = self.status.lock() {
            *s = Some(code);
        }
        Ok(())
    }

    /// Attaches the container's streams: the pty slave `create` made for
    /// `--console-socket`, the tty stream to this process's stdin/stdout
    /// without one, or the pipes.
    fn attach(
        &self,
        connector: &HybridVsockConnector,
        client: &Arc<Client>,
        streams: &capsa_agent::protocol::StreamTokens,
        process_id: u64,
    ) -> Result<Relays, RuntimeError> {
        let console = match self.console_fd {
            Some(fd) => Console::Slave(inherited_tty(fd)?),
            None => Console::Inherit,
        };
        attach_process(
            connector,
            client,
            streams,
            self.container.process.console_size,
            console,
            process_id,
        )
    }
}

/// Takes the inherited descriptor `fd`, which must be a terminal.
fn inherited_tty(fd: i32) -> Result<std::os::fd::OwnedFd, RuntimeError> {
    use std::os::fd::FromRawFd;
    // SAFETY: isatty only inspects the descriptor number.
    if fd <= 2 || unsafe { libc::isatty(fd) } != 1 {
        return Err(RuntimeError::Failed(format!(
            "{}: console_fd: {fd} is not an inherited terminal",
            inputs::INPUTS_FILE
        )));
    }
    // SAFETY: `create` passed this descriptor to this process for the
    // console only; nothing else here owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
