//! The `vm` runtime type: each container in a micro-VM of its own, run by
//! its own VMM process ([`super::vmm_process`]) in a jail
//! ([`super::jail`]). capsa keeps the container's state (derived from the
//! files of its state directory and the liveness of the VMM process, see
//! [`super::state`]) and talks to the guest agent directly, over the
//! container's hybrid vsock socket, for `start`, `kill`, `ps`, `pause`,
//! `resume` and `exec`.
//!
//! - [`create`]: `create`, step by step;
//! - [`exec`]: a process started in the container.

pub mod create;
pub mod exec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsa_agent::client::{Client, HybridVsockConnector};
use capsa_agent::protocol::ErrorCode;

use super::backend::{Backend, CreateOptions, Created, ExecOptions, PsFormat};
use super::bundle::Bundle;
use super::state::{self, Container, Operation, Status, VmRecord};
use super::{Result, RuntimeError};

/// How long a command may try to reach the agent of a created or running
/// container: connect, `CONNECT` handshake and `hello`, with retries of
/// transient failures (a VMM busy with other clients, a refused or
/// unanswered `CONNECT`).
pub const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `kill` of SIGKILL waits for the VM to end by itself (the VMM
/// drains the container's output and records its status) before it kills
/// the VM's host processes.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// After SIGKILL reached the container's process, the VM ends: waits for
/// its host processes to be gone, up to [`KILL_GRACE`], then kills what is
/// left. Under runc that process is gone when `kill` returns, and engines
/// wait only briefly for it (podman's `stop`/`rm --force` gives the pid
/// 5 s after `kill`), while a guest kernel that is emulated and shares
/// the host's cores with other VMs may take longer to tear it down.
fn await_vm_end(c: &Container) {
    let Some(vm) = c.vm() else {
        return;
    };
    if !super::host_process::wait_gone(&vm.processes(), KILL_GRACE) {
        tracing::warn!(
            "the VM did not end within {} s of SIGKILL: killing its VMM",
            KILL_GRACE.as_secs()
        );
        c.kill_vmm(Duration::from_secs(5));
    }
}

/// The `vm` runtime type.
#[derive(Debug, Clone)]
pub struct VmBackend {
    /// The state root (`--root`), for the helper processes capsa starts.
    pub root: PathBuf,
}

/// A `vm` container: its state directory and what `create` recorded.
pub struct VmContainer<'a> {
    /// The container.
    pub container: &'a Container,
    /// Its VM.
    pub vm: &'a VmRecord,
}

impl<'a> VmContainer<'a> {
    /// `c` as a `vm` container.
    pub fn of(c: &'a Container) -> Result<VmContainer<'a>> {
        let vm = c.vm().ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "container {:?} is not a vm container (runtime type {})",
                c.record.id,
                c.record.runtime.kind()
            ))
        })?;
        Ok(VmContainer { container: c, vm })
    }

    /// Its status, checked to allow `op`.
    pub fn require(&self, op: Operation) -> Result<Status> {
        let status = self.container.vm_status();
        status.require(&self.container.record.id, op)?;
        Ok(status)
    }

    /// A new control connection to its guest agent, within
    /// [`AGENT_CONNECT_TIMEOUT`]; the error names the last cause.
    pub fn agent(&self) -> Result<(HybridVsockConnector, Client)> {
        let connector = HybridVsockConnector::new(&self.vm.vsock);
        let (client, _) = Client::connect_timeout(&connector, AGENT_CONNECT_TIMEOUT)?;
        client.set_timeout(Some(Duration::from_secs(60)));
        Ok((connector, client))
    }

    fn dir(&self) -> &Path {
        &self.container.dir
    }
}

impl Backend for VmBackend {
    fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        dir: &Path,
        opts: &CreateOptions,
    ) -> Result<Created> {
        let child = create::create(id, bundle, dir, opts)?;
        Ok(Created { child: Some(child) })
    }

    fn start(&self, c: &Container) -> Result<()> {
        let vm = VmContainer::of(c)?;
        vm.require(Operation::Start)?;
        let (_, client) = vm.agent()?;
        client.start()?;
        std::fs::write(vm.dir().join("started"), b"")
            .map_err(|e| RuntimeError::io("write started", e))
    }

    fn status(&self, c: &Container) -> (Status, Option<i32>) {
        let status = c.vm_status();
        let pid = c.vm().map(|vm| vm.pid.pid);
        (status, pid.filter(|_| status != Status::Stopped))
    }

    fn kill(&self, c: &Container, signal: i32, all: bool) -> Result<()> {
        let vm = VmContainer::of(c)?;
        if vm.require(Operation::Kill)? == Status::Created {
            // The process has not started: the VMM process stands for it
            // (as runc's init does) and ends with the signal.
            if vm.vm.vmm().signal(signal) {
                return Ok(());
            }
            return Err(RuntimeError::io(
                "kill",
                std::io::Error::from_raw_os_error(libc::ESRCH),
            ));
        }
        // A paused container's processes are frozen: SIGKILL still kills
        // them, other signals wait for `resume` (as with runc).
        let (_, client) = vm.agent()?;
        let result = if all {
            client.signal_all(signal)
        } else {
            client.signal(vm.vm.init_process_id, signal)
        };
        match result {
            // Exited meanwhile: as good as signalled.
            Err(e) if e.rpc_code() == Some(ErrorCode::InvalidState) => {}
            r => r?,
        }
        if signal == libc::SIGKILL {
            await_vm_end(c);
        }
        Ok(())
    }

    fn delete(&self, c: &Container, force: bool) -> Result<()> {
        let vm = VmContainer::of(c)?;
        if !force {
            vm.require(Operation::Delete)?;
        }
        // Also when stopped: whatever of it is still alive goes.
        c.kill_vmm(Duration::from_secs(10));
        Ok(())
    }

    fn ps(&self, c: &Container, format: PsFormat) -> Result<String> {
        let vm = VmContainer::of(c)?;
        let processes = if c.vm_status() == Status::Stopped {
            Vec::new()
        } else {
            let (_, client) = vm.agent()?;
            client.ps()?.processes
        };
        if format == PsFormat::Json {
            let pids: Vec<i32> = processes.iter().map(|p| p.pid).collect();
            return Ok(format!(
                "{}\n",
                serde_json::to_string(&pids).unwrap_or_default()
            ));
        }
        let mut out = String::from("PID PPID CMD\n");
        for p in processes {
            out.push_str(&format!("{} {} {}\n", p.pid, p.ppid, p.cmdline.join(" ")));
        }
        Ok(out)
    }

    /// The guest agent freezes the container's processes with the cgroup
    /// v2 freezer in the guest, as Kata Containers does (the VM itself
    /// keeps running); the `paused` file records it for `state`/`list`.
    fn pause(&self, c: &Container) -> Result<()> {
        let vm = VmContainer::of(c)?;
        let _lock = lock_dir(vm.dir())?;
        vm.require(Operation::Pause)?;
        let (_, client) = vm.agent()?;
        let marker = vm.dir().join(state::PAUSED_FILE);
        // Marker first: should this process die after the agent froze the
        // container, `state` says paused and `resume` can undo it.
        std::fs::write(&marker, b"")
            .map_err(|e| RuntimeError::io(format!("write {}", marker.display()), e))?;
        if let Err(e) = client.pause() {
            let _ = std::fs::remove_file(&marker);
            return Err(e.into());
        }
        Ok(())
    }

    fn resume(&self, c: &Container) -> Result<()> {
        let vm = VmContainer::of(c)?;
        let _lock = lock_dir(vm.dir())?;
        vm.require(Operation::Resume)?;
        let (_, client) = vm.agent()?;
        match client.resume() {
            Ok(()) => {}
            // The agent is not paused (a pause that failed half-way): what
            // resume wants.
            Err(e) if e.rpc_code() == Some(ErrorCode::InvalidState) => {
                tracing::warn!("resume {}: {e}; removing the paused marker", c.record.id);
            }
            Err(e) => return Err(e.into()),
        }
        let marker = vm.dir().join(state::PAUSED_FILE);
        std::fs::remove_file(&marker)
            .map_err(|e| RuntimeError::io(format!("remove {}", marker.display()), e))
    }

    fn exec(&self, c: &Container, opts: &ExecOptions) -> Result<u8> {
        exec::exec(&self.root, &VmContainer::of(c)?, opts)
    }

    fn wait(&self, _c: &Container, created: Created) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let Some(mut child) = created.child else {
            return 255;
        };
        match child.wait() {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(_) => 255,
        }
    }
}

/// One `pause`/`resume` at a time per container, so that the `paused`
/// marker and the agent's state agree: an exclusive lock on the state
/// directory, held while the returned value lives.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::File::open(dir)
        .map_err(|e| RuntimeError::io(format!("open {}", dir.display()), e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| RuntimeError::io("flock the state directory", e.into()))
}
