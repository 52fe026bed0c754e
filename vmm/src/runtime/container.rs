//! The operations of the OCI runtime (runtime spec `runtime.md` §
//! "Operations", with runc's semantics), one function per verb; the CLI
//! files in `cli/` only parse arguments and print.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use capsa_agent::protocol::ProcessSpec;
use serde_json::{json, Value};

use super::bundle::Bundle;
use super::exec::agent;
use super::jail::{self, Jail};
use super::runc::{args, Runc};
use super::shim::ShimOptions;
use super::state::{self, Container, Record, Root, RuntimeType, Status};
use super::vm_spec::{self, Machine};
use super::{console, rootfs, spawn, Result, RuntimeError, BOOT_TIMEOUT};
use crate::config::HostQuirks;

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

/// `RLIMIT_FSIZE` of a jailed VMM (unless its binds disk is larger): what
/// a guest can make it write to the host's disk (or a tmpfs `/run`),
/// through its console log.
const VMM_FILE_SIZE_LIMIT: u64 = 256 << 20;

/// What `create` made.
pub enum Created {
    /// A VMM process (a child of this process).
    Vm(Child),
    /// runc's exit code (process runtime).
    Process(i32),
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    state::write_atomic(path, pid.to_string().as_bytes())
}

/// The cache key of the kernel this build of capsa belongs to
/// (`kernel-config/build.sh --key` at build time, `vmm/build.rs`).
pub const KERNEL_KEY: Option<&str> = option_env!("CAPSA_KERNEL_KEY");

/// The guest kernel: `$CAPSA_KERNEL`; `vmlinux` next to `capsa`;
/// `<cache>/kernel/<KERNEL_KEY>/vmlinux`, what `kernel-config/build.sh`
/// makes from the sources capsa was built with (only when capsa was built
/// without a key: the newest `<cache>/kernel/*/vmlinux`);
/// `/usr/local/lib/capsa/vmlinux`, `/usr/lib/capsa/vmlinux`.
pub fn locate_kernel() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSA_KERNEL") {
        return Ok(p.into());
    }
    let mut candidates: Vec<PathBuf> = crate::install::exe_dir()
        .map(|d| d.join("vmlinux"))
        .into_iter()
        .collect();
    let cached = crate::guest_agent::cache_dir().join("kernel");
    match KERNEL_KEY {
        Some(key) => candidates.push(cached.join(key).join("vmlinux")),
        None => {
            if let Ok(entries) = std::fs::read_dir(&cached) {
                let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
                    .filter_map(|e| {
                        let p = e.ok()?.path().join("vmlinux");
                        Some((std::fs::metadata(&p).ok()?.modified().ok()?, p))
                    })
                    .collect();
                found.sort();
                candidates.extend(found.into_iter().rev().map(|(_, p)| p));
            }
        }
    }
    candidates.extend(crate::install::in_lib_dirs("vmlinux"));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        let which = KERNEL_KEY.map_or(String::new(), |k| format!(" {k}"));
        RuntimeError::Failed(format!(
            "cannot find the guest kernel{which}: run kernel-config/build.sh (scripts/setup.sh) \
             or set CAPSA_KERNEL"
        ))
    })
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
        let vsock = state::vsock_path(&dir);
        let result = match bundle.runtime {
            RuntimeType::Process => self.create_process(id, &bundle, &dir, opts),
            RuntimeType::Vm => self.create_vm(id, &bundle, &dir, &vsock, opts),
        };
        if result.is_err() {
            remove_container_files(&dir, &vsock);
        }
        result
    }

    fn record(&self, id: &str, bundle: &Bundle, runtime: RuntimeType) -> Record {
        Record {
            id: id.to_string(),
            runtime,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            pid: 0,
            pid_start_time: 0,
            init_process_id: 0,
            vsock: PathBuf::new(),
            vm_dir: PathBuf::new(),
            vmm_pid: 0,
            vmm_pid_start_time: 0,
        }
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
            record: self.record(id, bundle, RuntimeType::Process),
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

    fn create_vm(
        &self,
        id: &str,
        bundle: &Bundle,
        dir: &Path,
        vsock: &Path,
        opts: &CreateOptions,
    ) -> Result<Created> {
        let kernel = locate_kernel()?;
        let agent =
            crate::guest_agent::locate().map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let cache = crate::guest_agent::cache_dir();
        let initramfs = crate::guest_agent::initramfs(&agent, &cache.join("initramfs"))
            .map_err(|e| RuntimeError::io("cannot build the agent initramfs", e))?;
        let rootfs_image = rootfs::rootfs_image(&bundle.rootfs, &cache)?;
        let readonly = bundle
            .spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let plan = vm_spec::mounts(&bundle.spec, readonly);
        // The VMM process runs in a jail (see `jail`): its files go into
        // the jail's root, and it sees them under in-jail paths.
        let mut jail = if jail::enabled() {
            Some(Jail::plan(dir, id)?)
        } else {
            None
        };
        let vm_dir = jail
            .as_ref()
            .map_or_else(|| dir.to_owned(), |j| j.root().to_owned());
        let binds_image = vm_spec::binds_image(&plan, &vm_dir)?;
        let (machine, inside) = match &mut jail {
            Some(j) => {
                // Room for the guest-written binds disk; the rest (logs)
                // needs little.
                let binds_size = binds_image
                    .as_ref()
                    .and_then(|b| std::fs::metadata(b).ok())
                    .map_or(0, |m| m.len());
                j.limit_file_size(VMM_FILE_SIZE_LIMIT.max(binds_size));
                if let Some(b) = &binds_image {
                    j.give(b)?;
                }
                let machine = Machine {
                    kernel: j.bind_ro(&kernel, "vmlinux"),
                    initramfs: j.bind_ro(&initramfs, "initramfs.cpio"),
                    rootfs_image: j.bind_ro(&rootfs_image, "rootfs.ext4"),
                    binds_image: binds_image.as_ref().map(|_| PathBuf::from("/binds.ext4")),
                    vsock: PathBuf::from("/vsock"),
                };
                (machine, PathBuf::from("/"))
            }
            None => {
                if let Some(parent) = vsock.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| RuntimeError::io(format!("mkdir {}", parent.display()), e))?;
                }
                let machine = Machine {
                    kernel,
                    initramfs,
                    rootfs_image,
                    binds_image,
                    vsock: vsock.to_owned(),
                };
                (machine, dir.to_owned())
            }
        };
        let mut config = vm_spec::vm_config(bundle, &machine)?;
        // Decided here: the jailed VMM sees neither /sys nor the host's
        // modules, so it could not detect a PVM host itself.
        config.host_quirks = if crate::pvm::is_pvm_host() {
            HostQuirks::On
        } else {
            HostQuirks::Off
        };
        // The guest's console (kernel warnings and panics; the agent logs
        // to it too) goes to a file next to the VMM's other files.
        config.serial_log = Some(inside.join("console.log"));
        let params = vm_spec::create_params(id, bundle, plan.mounts)?;
        // `--console-socket`: the pty is made here, as the jailed VMM can
        // reach neither /dev/pts nor the socket; the VMM inherits the slave.
        let slave = match &opts.console_socket {
            Some(socket) if params.process.terminal => {
                let socket = std::path::absolute(socket).unwrap_or(socket.clone());
                let pty = console::open(params.process.console_size)?;
                console::send_master(&socket, &pty.master)?;
                Some(pty.slave)
            }
            _ => None,
        };
        let keep_fds: Vec<RawFd> = slave.iter().map(AsRawFd::as_raw_fd).collect();
        let options = ShimOptions {
            console_fd: keep_fds.first().copied(),
        };
        let json = |v: &dyn erased::Ser| serde_json::to_vec_pretty(&v.value()).unwrap_or_default();
        state::write_atomic(&vm_dir.join("vm.json"), &json(&config))?;
        state::write_atomic(&vm_dir.join("agent.json"), &json(&params))?;
        state::write_atomic(&vm_dir.join("shim.json"), &json(&options))?;
        let mut vmm_args: Vec<OsString> = Vec::new();
        if jail.is_none() {
            vmm_args.extend(["--root".into(), self.root.path.clone().into()]);
        }
        vmm_args.extend([
            "--log".into(),
            inside.join("vmm.log").into(),
            "container-vmm".into(),
            id.into(),
            "--state-dir".into(),
            inside.clone().into(),
        ]);
        let pending = match &jail {
            Some(j) => {
                let mut envs: Vec<(String, String)> = ["CAPSA_LOG", "RUST_BACKTRACE"]
                    .into_iter()
                    .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
                    .collect();
                spawn::spawn_program(
                    j.jailer(),
                    |ready| {
                        envs.push((spawn::READY_FD_ENV.to_owned(), ready.to_string()));
                        let mut fds = keep_fds.clone();
                        fds.push(ready);
                        j.command(&fds, &envs, &vmm_args)
                    },
                    !opts.foreground,
                    &keep_fds,
                )?
            }
            None => spawn::spawn_program(
                Path::new("/proc/self/exe"),
                |_| vmm_args,
                !opts.foreground,
                &keep_fds,
            )?,
        };
        drop(slave);
        let (child, report) = match pending.wait_ready(BOOT_TIMEOUT) {
            Ok(r) => r,
            Err(e) => {
                // The jailer is gone; so is its VMM, unless it dropped the
                // parent-death signal.
                if let Some((vmm, start)) = jail.as_ref().and_then(|j| j.vmm_pid(Duration::ZERO)) {
                    state::signal_checked(vmm, start, libc::SIGKILL);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while state::process_alive(vmm, start) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        let mut record = self.record(id, bundle, RuntimeType::Vm);
        record.pid = pid;
        record.pid_start_time = state::proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
        record.init_process_id = report["initProcessId"].as_u64().unwrap_or(0);
        if let Some(j) = &jail {
            record.vsock = j.root().join("vsock");
            record.vm_dir = j.root().to_owned();
            // The jailer writes the pid file once the VMM runs, long
            // before the VMM reports.
            match j.vmm_pid(Duration::from_secs(5)) {
                Some((vmm, start)) => {
                    record.vmm_pid = vmm;
                    record.vmm_pid_start_time = start;
                }
                None => {
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RuntimeError::Failed(
                        "capsa-jailer wrote no pid file for the VMM".into(),
                    ));
                }
            }
        } else {
            record.vsock = vsock.to_owned();
        }
        let container = Container {
            dir: dir.to_owned(),
            record,
        };
        let saved = container.save().and_then(|_| match &opts.pid_file {
            Some(p) => write_pid_file(p, pid),
            None => Ok(()),
        });
        if let Err(e) = saved {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Created::Vm(child))
    }

    /// `start`: runs the container's process.
    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        if c.record.runtime == RuntimeType::Process {
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
            "runtime": c.record.runtime,
        }))
    }

    fn status_pid(&self, c: &Container) -> (Status, i32) {
        match c.record.runtime {
            RuntimeType::Vm => {
                let status = c.vm_status();
                let pid = if status == Status::Stopped {
                    0
                } else {
                    c.record.pid
                };
                (status, pid)
            }
            RuntimeType::Process => match self.runc.state(&c.record.id) {
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
        if c.record.runtime == RuntimeType::Process {
            let mut a = args(["kill"]);
            if all {
                a.push("--all".into());
            }
            a.push(id.into());
            a.push(signal.to_string().into());
            return self.runc_ok(&a);
        }
        match c.vm_status() {
            Status::Created => {
                // The process has not started: the VMM process stands for
                // it (as runc's init does) and ends with the signal.
                let (pid, start) = c.vmm_process();
                if state::signal_checked(pid, start, signal) {
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
                    client.signal(c.record.init_process_id, signal)
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
        if c.record.runtime == RuntimeType::Process {
            let mut a = args(["delete"]);
            if force {
                a.push("--force".into());
            }
            a.push(id.into());
            self.runc_ok(&a)?;
            remove_container_files(&c.dir, &c.record.vsock);
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
        remove_container_files(&c.dir, &c.record.vsock);
        Ok(())
    }

    /// `ps`: the container's processes. `json`: an array of pids (guest pids
    /// for vm containers); else a table.
    pub fn ps(&self, id: &str, json_format: bool) -> Result<String> {
        let c = self.load(id)?;
        if c.record.runtime == RuntimeType::Process {
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
        if c.record.runtime == RuntimeType::Process {
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
        if c.record.runtime == RuntimeType::Vm {
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

/// Serializing the three input files with one closure.
mod erased {
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}
