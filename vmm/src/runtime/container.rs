//! The operations of the OCI runtime (runtime spec `runtime.md` §
//! "Operations", with runc's semantics), one function per verb; the CLI
//! files in `cli/` only parse arguments and print.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use capsa_agent::protocol::ProcessSpec;
use serde_json::{json, Value};

use super::bundle::Bundle;
use super::exec::agent;
use super::jail;
use super::runc::{args, Runc};
use super::state::{self, Container, Record, Root, RuntimeRecord, RuntimeType, Status};
use super::vm_spec;
use super::{Result, RuntimeError};

/// Where capsa and runc keep state; how to reach runc.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `--root`.
    pub root: Root,
    /// runc for `process` containers.
    pub runc: Runc,
}

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
}

/// What `create` made.
pub enum Created {
    /// A VMM process (a child of this process).
    Vm(Child),
    /// runc's exit code (process runtime).
    Process(i32),
}

/// Removes what a container left: its state directory and a vsock socket
/// kept outside it.
fn remove_container_files(dir: &Path, vsock: &Path) {
    jail::release_uid(Path::new(jail::UID_LEASES), dir);
    if !vsock.starts_with(dir) {
        let _ = std::fs::remove_file(vsock);
        for port in [1024, 1025] {
            let _ = std::fs::remove_file(format!("{}_{port}", vsock.display()));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

impl Runtime {
    fn load(&self, id: &str) -> Result<Container> {
        self.root.load(id)
    }

    /// `create`: validates the bundle, prepares the disks and starts the
    /// VMM process; returns once the container is created, or fails having
    /// removed everything it made.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<Created> {
        state::validate_id(id)?;
        if self.root.dir(id).exists() {
            return Err(RuntimeError::Exists(id.to_string()));
        }
        let bundle = Bundle::load(&opts.bundle)?;
        let dir = self.root.create_dir(id)?;
        let result = match bundle.runtime {
            RuntimeType::Process => self.create_process(id, &bundle, &dir, opts),
            RuntimeType::Vm => super::vm::create::create(id, &bundle, &dir, opts).map(Created::Vm),
        };
        if result.is_err() {
            remove_container_files(&dir, &state::vsock_path(&dir));
        }
        result
    }

    fn create_process(
        &self,
        id: &str,
        bundle: &Bundle,
        dir: &Path,
        opts: &CreateOptions,
    ) -> Result<Created> {
        let container = Container {
            dir: dir.to_owned(),
            record: Record::new(id, bundle, RuntimeRecord::Process),
        };
        container.save()?;
        let mut a = args(["create", "--bundle"]);
        a.push(bundle.dir.clone().into());
        if let Some(p) = &opts.pid_file {
            a.push("--pid-file".into());
            a.push(std::path::absolute(p).unwrap_or(p.clone()).into());
        }
        if let Some(s) = &opts.console_socket {
            a.push("--console-socket".into());
            a.push(s.into());
        }
        a.push(id.into());
        let code = self.runc.run(&a)?;
        if code != 0 {
            return Err(RuntimeError::Failed(format!(
                "runc create exited with {code}"
            )));
        }
        Ok(Created::Process(0))
    }

    /// `start`: runs the container's process.
    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        if c.record.runtime == RuntimeRecord::Process {
            return self.runc_ok(&args(["start", id]));
        }
        let status = c.vm_status();
        if status != Status::Created {
            return Err(RuntimeError::State {
                id: id.to_string(),
                status,
                message: "only a created container can be started".into(),
            });
        }
        let (_, client) = agent(&c)?;
        client.start()?;
        std::fs::write(c.dir.join("started"), b"")
            .map_err(|e| RuntimeError::io("write started", e))?;
        Ok(())
    }

    fn runc_ok(&self, a: &[OsString]) -> Result<()> {
        match self.runc.run(a)? {
            0 => Ok(()),
            code => Err(RuntimeError::Failed(format!(
                "runc {} exited with {code}",
                a.first()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))),
        }
    }

    /// The OCI state of a container (runtime spec `runtime.md` § "State",
    /// plus runc's `rootfs`, `created` and capsa's `runtime`).
    pub fn state(&self, id: &str) -> Result<Value> {
        let c = self.load(id)?;
        let (status, pid) = self.status_pid(&c);
        Ok(json!({
            "ociVersion": "1.0.2",
            "id": id,
            "status": status,
            "pid": pid,
            "bundle": c.record.bundle,
            "rootfs": c.record.rootfs,
            "created": c.record.created,
            "owner": "",
            "annotations": c.record.annotations,
            "runtime": c.record.runtime.kind(),
        }))
    }

    fn status_pid(&self, c: &Container) -> (Status, i32) {
        match &c.record.runtime {
            RuntimeRecord::Vm(vm) => {
                let status = c.vm_status();
                let pid = if status == Status::Stopped {
                    0
                } else {
                    vm.pid.pid
                };
                (status, pid)
            }
            RuntimeRecord::Process => match self.runc.state(&c.record.id) {
                Ok(v) => {
                    let status =
                        serde_json::from_value(v["status"].clone()).unwrap_or(Status::Stopped);
                    (status, v["pid"].as_i64().unwrap_or(0) as i32)
                }
                Err(_) => (Status::Stopped, 0),
            },
        }
    }

    /// `kill`: a signal to the container's process (`all`: to every
    /// process of the container).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let c = self.load(id)?;
        if c.record.runtime == RuntimeRecord::Process {
            let mut a = args(["kill"]);
            if all {
                a.push("--all".into());
            }
            a.push(id.into());
            a.push(signal.to_string().into());
            return self.runc_ok(&a);
        }
        let Some(vm) = c.vm() else {
            return Err(RuntimeError::NotFound(id.to_string()));
        };
        match c.vm_status() {
            Status::Created => {
                // The process has not started: the VMM process stands for
                // it (as runc's init does) and ends with the signal.
                if vm.vmm().signal(signal) {
                    Ok(())
                } else {
                    Err(RuntimeError::io(
                        "kill",
                        std::io::Error::from_raw_os_error(libc::ESRCH),
                    ))
                }
            }
            // A paused container's processes are frozen: SIGKILL still kills
            // them, other signals wait for `resume` (as with runc).
            Status::Running | Status::Paused => {
                let (_, client) = agent(&c)?;
                let result = if all {
                    client.signal_all(signal)
                } else {
                    client.signal(vm.init_process_id, signal)
                };
                match result {
                    // Exited meanwhile: as good as signalled.
                    Err(e) if e.rpc_code() == Some(-32001) => Ok(()),
                    r => r.map_err(Into::into),
                }
            }
            status => Err(RuntimeError::State {
                id: id.to_string(),
                status,
                message: "container not running".into(),
            }),
        }
    }

    /// `delete`: removes a stopped (or created) container; `force` kills
    /// a running one first.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let c = match self.load(id) {
            Err(RuntimeError::NotFound(_)) if force && self.root.dir(id).is_dir() => {
                // A `create` that was killed before it finished: its helper
                // gives up on its own.
                let dir = self.root.dir(id);
                remove_container_files(&dir, &state::vsock_path(&dir));
                return Ok(());
            }
            c => c?,
        };
        if c.record.runtime == RuntimeRecord::Process {
            let mut a = args(["delete"]);
            if force {
                a.push("--force".into());
            }
            a.push(id.into());
            self.runc_ok(&a)?;
            remove_container_files(&c.dir, &state::vsock_path(&c.dir));
            return Ok(());
        }
        let status = c.vm_status();
        if matches!(status, Status::Running | Status::Paused) && !force {
            return Err(RuntimeError::State {
                id: id.to_string(),
                status,
                message: format!("cannot delete a {status} container (stop it, or use --force)"),
            });
        }
        // Also when stopped: whatever of it is still alive goes.
        c.kill_vmm(Duration::from_secs(10));
        let vsock = c
            .vm()
            .map_or_else(|| state::vsock_path(&c.dir), |vm| vm.vsock.clone());
        remove_container_files(&c.dir, &vsock);
        Ok(())
    }

    /// `ps`: the container's processes. `json`: an array of pids (guest pids
    /// for vm containers); else a table.
    pub fn ps(&self, id: &str, json_format: bool) -> Result<String> {
        let c = self.load(id)?;
        if c.record.runtime == RuntimeRecord::Process {
            let format = if json_format { "json" } else { "table" };
            self.runc_ok(&args(["ps", "--format", format, id]))?;
            return Ok(String::new());
        }
        let status = c.vm_status();
        if status == Status::Stopped {
            return Ok(if json_format {
                "[]\n".into()
            } else {
                "PID PPID CMD\n".into()
            });
        }
        let (_, client) = agent(&c)?;
        let ps = client.ps()?;
        if json_format {
            let pids: Vec<i32> = ps.processes.iter().map(|p| p.pid).collect();
            return Ok(format!(
                "{}\n",
                serde_json::to_string(&pids).unwrap_or_default()
            ));
        }
        let mut out = String::from("PID PPID CMD\n");
        for p in ps.processes {
            out.push_str(&format!("{} {} {}\n", p.pid, p.ppid, p.cmdline.join(" ")));
        }
        Ok(out)
    }

    /// `list`: `(record, status, pid)` of every container.
    pub fn list(&self) -> Vec<(Record, Status, i32)> {
        self.root
            .list()
            .into_iter()
            .map(|c| {
                let (s, p) = self.status_pid(&c);
                (c.record, s, p)
            })
            .collect()
    }

    /// Waits for the process of a `process` container that this process
    /// created as a child subreaper (`run`); returns its status.
    pub fn wait_process(&self, id: &str) -> i32 {
        use nix::sys::wait::{waitpid, WaitStatus};
        let Some(pid) = self.runc.state(id).ok().and_then(|v| v["pid"].as_i64()) else {
            return 255;
        };
        loop {
            match waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return 255,
            }
        }
    }

    /// `pause` (`resume`: false) or `resume`. `process` containers: runc's.
    /// `vm` containers: the guest agent freezes (thaws) the container's
    /// processes with the cgroup v2 freezer in the guest, as Kata
    /// Containers does (the VM itself keeps running), and the `paused` file
    /// records it for `state`/`list`. runc's rules: only a running
    /// container can be paused and only a paused one resumed, else
    /// [`RuntimeError::State`].
    pub fn pause_resume(&self, id: &str, verb: &str) -> Result<()> {
        let c = self.load(id)?;
        let pause = match verb {
            "pause" => true,
            "resume" => false,
            other => return Err(RuntimeError::Unsupported(format!("no verb {other:?}"))),
        };
        if c.record.runtime == RuntimeRecord::Process {
            return self.runc_ok(&args([verb, id]));
        }
        // One pause/resume at a time per container, so that the marker and
        // the agent's state agree.
        let dir = std::fs::File::open(&c.dir)
            .map_err(|e| RuntimeError::io(format!("open {}", c.dir.display()), e))?;
        let _lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| RuntimeError::io("flock the state directory", e.into()))?;
        let status = c.vm_status();
        let (wanted, message) = if pause {
            (Status::Running, "only a running container can be paused")
        } else {
            (Status::Paused, "only a paused container can be resumed")
        };
        if status != wanted {
            return Err(RuntimeError::State {
                id: id.to_string(),
                status,
                message: message.into(),
            });
        }
        let (_, client) = agent(&c)?;
        let marker = c.dir.join(state::PAUSED_FILE);
        if pause {
            // Marker first: should this process die after the agent froze
            // the container, `state` says paused and `resume` can undo it.
            std::fs::write(&marker, b"")
                .map_err(|e| RuntimeError::io(format!("write {}", marker.display()), e))?;
            if let Err(e) = client.pause() {
                let _ = std::fs::remove_file(&marker);
                return Err(e.into());
            }
            return Ok(());
        }
        match client.resume() {
            Ok(()) => {}
            // The agent is not paused (a pause that failed half-way): what
            // resume wants.
            Err(e) if e.rpc_code() == Some(capsa_agent::protocol::error_code::INVALID_STATE) => {
                tracing::warn!("resume {id}: {e}; removing the paused marker");
            }
            Err(e) => return Err(e.into()),
        }
        std::fs::remove_file(&marker)
            .map_err(|e| RuntimeError::io(format!("remove {}", marker.display()), e))
    }

    /// The base of an exec'd process: the container's `config.json`
    /// process (env, cwd, user, …), as runc does.
    pub fn exec_base(&self, c: &Container) -> Result<ProcessSpec> {
        let spec = super::bundle::load_spec(&c.record.bundle)?;
        let process = spec.process().clone().unwrap_or_default();
        let user = (process.user().uid(), process.user().gid());
        let mut p = vm_spec::process_spec(&process, user);
        p.terminal = false;
        p.console_size = None;
        Ok(p)
    }

    /// Loads a container for `exec`: it must be created or running (not
    /// stopped, not paused, as runc).
    pub fn exec_target(&self, id: &str) -> Result<Container> {
        let c = self.load(id)?;
        if c.vm().is_some() {
            let status = c.vm_status();
            if matches!(status, Status::Stopped | Status::Paused) {
                return Err(RuntimeError::State {
                    id: id.to_string(),
                    status,
                    message: format!("cannot exec in a {status} container"),
                });
            }
        }
        Ok(c)
    }
}
