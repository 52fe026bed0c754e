//! `create` of a `vm` container, step by step:
//!
//! 1. [`VmSpec::from_bundle`]: what the bundle asks for (vCPUs, memory,
//!    process, mounts);
//! 2. [`Shipped::locate`]: the guest kernel and the agent's initramfs;
//! 3. [`Placement::new`]: where the VMM process will run and keep its
//!    files: its jail (the default) or, unjailed, the state directory;
//! 4. [`HostResources::prepare`]: what the VM needs from the host: the
//!    container's cgroup at `linux.cgroupsPath` ([`cgroup`]), which
//!    virtiofsd, the jailer and the VMM join before they exec, the
//!    rootfs image (`block` transport), the container's virtiofsd serving
//!    the rootfs directory and the bind-mounted files and directories, the
//!    pty of `--console-socket`, the engine's network interface carried to
//!    a TAP ([`network`]); then [`template::choose`]: a warm start from
//!    the template of the VM's shape when these devices fit in its free
//!    slots, or a cold boot (and why);
//! 5. [`plan_machine`], then [`VmSpec::vmm_inputs`]: the machine as the
//!    VMM will see it, and the VM configuration (finished, then validated)
//!    with the agent's `create` parameters;
//! 6. [`VmmInputs::write`](crate::runtime::vmm_process::VmmInputs::write):
//!    the VMM process's inputs, into its directory;
//! 7. [`start_vmm`]: start the VMM process and wait for its [`VmmReady`];
//! 8. [`record_state`]: `state.json` and `--pid-file`.
//!
//! A failure at any step leaves nothing behind: the caller
//! ([`Runtime::create`](crate::runtime::container::Runtime::create))
//! removes the state directory and the recorded cgroup, and stops the
//! recorded virtiofsd (which
//! also ends by itself once its connection, held by [`HostResources`] and
//! then the VMM process, is closed), and the [`VmmGuard`] kills the VMM
//! process and its jailer unless the state was recorded.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::config::HostQuirks;
use crate::runtime::backend::CreateOptions;
use crate::runtime::bundle::Bundle;
use crate::runtime::bundle::RootfsTransport;
use crate::runtime::cgroup::{self, CgroupsPath, Limits, VmCgroup};
use crate::runtime::host_process::{kill_and_wait, HostProcess};
use crate::runtime::id_lock::LaunchRecord;
use crate::runtime::jail::{self, Jail};
use crate::runtime::network::{self, HostNetwork, NetworkMode};
use crate::runtime::state::{self, Container, JailRecord, Record, RuntimeRecord, VmRecord};
use crate::runtime::template::{self, Shipped};
use crate::runtime::virtiofsd::{self, Share};
use crate::runtime::vm_spec::{DiskRole, Machine, MachineDisk, VmSpec, ROOTFS_ENTRY};
use crate::runtime::vmm_process::{VmmReady, OOM_MARK};
use crate::runtime::{console, rootfs, spawn, Result, RuntimeError, BOOT_TIMEOUT};

/// `RLIMIT_FSIZE` of a jailed VMM: its largest legitimate file, so that
/// the limit never bites what the VMM must make — the guest-RAM memfd
/// (whose size counts as a file size), the capped logs (`crate::logger`) — and stays a
/// backstop for anything else. The logs' own caps are what bound a
/// guest's writes to the host (docs/runtime.md).
fn vmm_file_size_limit(memory_mib: u32) -> u64 {
    use crate::logger::{CONSOLE_LOG_LIMITS, PROCESS_LOG_LIMITS};
    (u64::from(memory_mib) << 20)
        .max(CONSOLE_LOG_LIMITS.max_bytes)
        .max(PROCESS_LOG_LIMITS.max_bytes)
}

/// Creates the `vm` container `id` of `bundle` in its new state directory
/// `dir`; returns the process engines wait on (the jailer, or the VMM
/// process when unjailed), a child of this process.
pub fn create(id: &str, bundle: &Bundle, dir: &Path, opts: &CreateOptions) -> Result<Child> {
    let spec = VmSpec::from_bundle(bundle)?;
    let cgroup = host_cgroup(id, bundle, &spec, opts)?;
    let shipped = Shipped::locate()?;
    let host_quirks = crate::pvm::is_pvm_host();
    let mut placement = Placement::new(dir, id)?;
    placement.relay_oom_to(bundle);
    let mut resources = HostResources::prepare(bundle, &spec, dir, &mut placement, opts, &cgroup)?;
    let start = template::choose(
        bundle.boot,
        &shipped,
        template::Shape {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            host_quirks,
        },
        resources.device_count(),
    );
    match &start {
        template::Choice::Warm(t) => tracing::info!(template = %t.dir.display(), "warm start"),
        template::Choice::Cold(why) => tracing::info!("cold boot: {why}"),
    }
    let machine = plan_machine(&shipped, host_quirks, &start, &resources, &mut placement);
    let inputs = spec.vmm_inputs(id, &machine)?;
    inputs.write(&placement.dir)?;
    let vsock = placement.vsock.clone();
    let file_size_limit = vmm_file_size_limit(inputs.vm.memory_mib);
    let (vmm, ready) = start_vmm(
        id,
        placement,
        &resources,
        file_size_limit,
        dir,
        opts.foreground,
    )?;
    // The VMM process has its own copies of the pty slave and the TAP now;
    // the network setup stays only if the container is recorded.
    let mut network = resources.network.take();
    drop(resources);
    // The VM is restored: the template is no longer held.
    let template = match start {
        template::Choice::Warm(t) => Some(t.dir),
        template::Choice::Cold(_) => None,
    };
    let launched = Launched {
        vmm,
        ready,
        vsock,
        template,
    };
    let child = record_state(id, bundle, dir, launched, opts.pid_file.as_deref())?;
    if let Some(n) = network.as_mut() {
        n.keep();
    }
    Ok(child)
}

/// The container's host cgroup as `create` plans it, before
/// [`HostResources::prepare`] makes it.
struct HostCgroup {
    /// Where it goes (`linux.cgroupsPath`, read as runc does; see
    /// [`cgroup`]).
    path: CgroupsPath,
    /// Its limits: the guest's RAM plus the VMM's overhead, the pids
    /// bound, the spec's CPU quota.
    limits: Limits,
}

/// Plans the host cgroup of container `id` from the spec of `bundle`.
fn host_cgroup(
    id: &str,
    bundle: &Bundle,
    spec: &VmSpec,
    opts: &CreateOptions,
) -> Result<HostCgroup> {
    let linux = bundle.spec.linux().as_ref();
    let path = cgroup::parse_cgroups_path(
        linux
            .and_then(|l| l.cgroups_path().as_ref())
            .and_then(|p| p.to_str()),
        id,
        opts.systemd_cgroup,
    )
    .map_err(|e| RuntimeError::Bundle {
        bundle: bundle.dir.clone(),
        message: format!("config.json: {e}"),
    })?;
    let cpu = linux
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref())
        .map_or((None, None), |c| (c.quota(), c.period()));
    Ok(HostCgroup {
        path,
        limits: Limits::for_vm(spec.memory_mib, cpu),
    })
}

/// Where the VMM process runs and keeps its files.
struct Placement {
    /// Its jail (see [`jail`]), or `None` for an unjailed VMM
    /// (`CAPSA_JAIL=off`).
    jail: Option<Jail>,
    /// Host directory of the VMM's files: the jail's root, or the state
    /// directory.
    dir: PathBuf,
    /// That directory as the VMM sees it (`/` in the jail).
    inside: PathBuf,
    /// Host path of the hybrid vsock socket.
    vsock: PathBuf,
}

impl Placement {
    /// Plans the jail of container `id` (leasing its uid and creating its
    /// root), or, unjailed, uses the state directory `dir`.
    fn new(dir: &Path, id: &str) -> Result<Placement> {
        if jail::enabled() {
            let jail = Jail::plan(dir, id)?;
            let root = jail.root().to_owned();
            return Ok(Placement {
                vsock: root.join("vsock"),
                dir: root,
                inside: PathBuf::from("/"),
                jail: Some(jail),
            });
        }
        let vsock = state::vsock_path(dir);
        if let Some(parent) = vsock.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| RuntimeError::io(format!("mkdir {}", parent.display()), e))?;
        }
        Ok(Placement {
            jail: None,
            dir: dir.to_owned(),
            inside: dir.to_owned(),
            vsock,
        })
    }

    /// Has the jailer relay the VMM's [`OOM_MARK`] to `<bundle>/oom`,
    /// where podman looks for it when the container has exited (runc's
    /// conmon writes it there from the host cgroup's OOM events, which a
    /// guest's OOM killer never raises). Unjailed, the mark stays in the
    /// state directory.
    fn relay_oom_to(&mut self, bundle: &Bundle) {
        if let Some(j) = &mut self.jail {
            let dir = std::path::absolute(&bundle.dir).unwrap_or_else(|_| bundle.dir.clone());
            j.relay_on_exit(OOM_MARK, &dir.join("oom"));
        }
    }

    /// A host file the VMM only reads: bind-mounted read-only into the
    /// jail as `/<name>`. Returns the path the VMM sees.
    fn read_only(&mut self, host: &Path, name: &str) -> PathBuf {
        match &mut self.jail {
            Some(j) => j.bind_ro(host, name),
            None => host.to_owned(),
        }
    }

    /// The VMM's own file `name` (its log, the console log, the vsock
    /// socket), as the VMM sees it.
    fn inside(&self, name: &str) -> PathBuf {
        self.inside.join(name)
    }
}

/// What `create` prepared on the host for the VM.
struct HostResources {
    /// The container's cgroup, which virtiofsd and the VMM's jailer join.
    cgroup: VmCgroup,
    /// The disks, in guest order, as the VMM sees them.
    disks: Vec<MachineDisk>,
    /// With `--console-socket` and a terminal: the pty slave the VMM
    /// process inherits (its master went to the socket).
    console: Option<OwnedFd>,
    /// The container's virtiofsd, when anything is shared: the VMM process
    /// inherits its connection.
    virtiofsd: Option<virtiofsd::Started>,
    /// The engine's interface joined to a TAP in its namespace (see
    /// [`network`]); dropped before being kept, it undoes that.
    network: Option<HostNetwork>,
}

impl HostResources {
    /// Builds the rootfs image (`block` transport; cached by content),
    /// starts virtiofsd on the shares (the rootfs directory with the
    /// `virtiofs` transport, the bind mounts' files and directories; its
    /// share tree and record in the state directory `dir`), opens the
    /// console's pty and carries the engine's network interface to a TAP;
    /// first of all, makes the container's `cgroup`, recorded in `dir`.
    fn prepare(
        bundle: &Bundle,
        spec: &VmSpec,
        dir: &Path,
        placement: &mut Placement,
        opts: &CreateOptions,
        cgroup: &HostCgroup,
    ) -> Result<HostResources> {
        let cgroup = VmCgroup::create(&cgroup.path, &cgroup.limits, dir)?;
        let mut disks = Vec::new();
        let mut shares: Vec<Share> = Vec::new();
        match spec.rootfs_transport {
            RootfsTransport::Block => {
                let image = rootfs::rootfs_image(&bundle.rootfs, &crate::guest_agent::cache_dir())?;
                disks.push(MachineDisk {
                    role: DiskRole::Rootfs,
                    path: placement.read_only(&image, "rootfs.ext4"),
                    read_only: true,
                });
            }
            RootfsTransport::Virtiofs => {
                let mut root = Share::of(ROOTFS_ENTRY, &bundle.rootfs).ok_or_else(|| {
                    RuntimeError::Failed(format!(
                        "root.path {} is not a directory",
                        bundle.rootfs.display()
                    ))
                })?;
                root.readonly = spec.readonly_root;
                shares.push(root);
            }
        }
        shares.extend(spec.mounts.shares.iter().cloned());
        let virtiofsd = if shares.is_empty() {
            None
        } else {
            let binary = virtiofsd::locate()?;
            Some(virtiofsd::start(
                &binary,
                &shares,
                dir,
                &cgroup.procs_fds(),
            )?)
        };
        // The pty is made here, as the jailed VMM can reach neither
        // /dev/pts nor the socket.
        let console = match &opts.console_socket {
            Some(socket) if spec.process.terminal => {
                let socket = std::path::absolute(socket).unwrap_or(socket.clone());
                let pty = console::open(spec.process.console_size)?;
                console::send_master(&socket, &pty.master)?;
                Some(pty.slave)
            }
            _ => None,
        };
        let network = match &spec.network {
            NetworkMode::Join(netns) => network::prepare(netns).map_err(|e| {
                RuntimeError::Failed(format!("cannot set up the container's network: {e}"))
            })?,
            NetworkMode::LoopbackOnly => None,
        };
        Ok(HostResources {
            cgroup,
            disks,
            console,
            virtiofsd,
            network,
        })
    }

    /// The virtio devices these add to the VM (the disks, the virtio-fs
    /// share, the network device), as `Machine::vm_config` makes them: in
    /// a warm start, each takes a free slot of the template.
    fn device_count(&self) -> usize {
        self.disks.len()
            + usize::from(self.virtiofsd.is_some())
            + usize::from(self.network.is_some())
    }

    /// The descriptors the VMM process inherits, with their numbers.
    fn inherited_fds(&self) -> Vec<RawFd> {
        self.console
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(self.virtiofsd.iter().map(|v| v.conn.as_raw_fd()))
            .chain(self.network.iter().map(|n| n.tap.as_raw_fd()))
            .collect()
    }
}

/// The machine as the VMM will see it: the shipped files and the host
/// resources at their paths in its jail.
fn plan_machine(
    shipped: &Shipped,
    host_quirks: bool,
    start: &template::Choice,
    resources: &HostResources,
    placement: &mut Placement,
) -> Machine {
    Machine {
        kernel: placement.read_only(&shipped.kernel, "vmlinux"),
        initramfs: placement.read_only(&shipped.initramfs, "initramfs.cpio"),
        disks: resources.disks.clone(),
        vsock: placement.inside("vsock"),
        // The guest's console (kernel warnings and panics; the agent logs
        // to it too) goes to a file next to the VMM's other files.
        console_log: placement.inside("console.log"),
        // Decided here: the jailed VMM sees neither /sys nor the host's
        // modules, so it could not detect a PVM host itself.
        host_quirks: if host_quirks {
            HostQuirks::On
        } else {
            HostQuirks::Off
        },
        console_fd: resources.console.as_ref().map(AsRawFd::as_raw_fd),
        fs_socket_fd: resources.virtiofsd.as_ref().map(|v| v.conn.as_raw_fd()),
        network: resources.network.as_ref().map(HostNetwork::guest),
        restore_from: match start {
            template::Choice::Warm(t) => Some(placement.read_only(&t.dir, "template")),
            template::Choice::Cold(_) => None,
        },
    }
}

/// The VMM process `create` started (through `capsa-jailer`, or
/// directly). Dropped uncommitted, it SIGKILLs the VMM process and its
/// jailer and waits for them, so that a `create` that fails after the
/// start leaves no VM behind.
pub struct VmmGuard {
    child: Option<Child>,
    jail: Option<Jail>,
}

impl VmmGuard {
    /// Guards `child` (the jailer of `jail`, or the unjailed VMM process).
    pub fn new(child: Child, jail: Option<Jail>) -> VmmGuard {
        VmmGuard {
            child: Some(child),
            jail,
        }
    }

    /// Waits for the VMM process's readiness report on `report` (at most
    /// [`BOOT_TIMEOUT`]).
    pub fn wait_ready(&mut self, report: spawn::ReportReader) -> Result<VmmReady> {
        let child = self.child.as_mut().ok_or_else(committed)?;
        report.wait(child, BOOT_TIMEOUT)
    }

    /// The process `create` started, as recorded.
    pub fn launcher(&self) -> Option<HostProcess> {
        HostProcess::of(self.child.as_ref()?.id() as i32)
    }

    /// Records what was started in state directory `dir` before waiting
    /// for readiness ([`LaunchRecord`]): a `create` killed from here on
    /// leaves its processes findable by `delete --force`.
    pub fn record_launch(&self, dir: &Path) -> Result<()> {
        LaunchRecord {
            launcher: self.launcher(),
            jail_pid_file: self.jail.as_ref().map(|j| j.pid_file().to_owned()),
        }
        .write(dir)
    }

    /// The jailed VMM process, from the jailer's pid file (waiting up to
    /// `timeout` for it), with its jail's root; `None` when unjailed.
    pub fn jailed(&self, timeout: Duration) -> Option<Result<JailRecord>> {
        let jail = self.jail.as_ref()?;
        Some(
            jail.vmm_process(timeout)
                .map(|vmm| JailRecord {
                    vmm,
                    root: jail.root().to_owned(),
                })
                .ok_or_else(|| {
                    RuntimeError::Failed("capsa-jailer wrote no pid file for the VMM".into())
                }),
        )
    }

    /// Keeps the processes: `create` succeeded. Returns the child (which
    /// `run` waits on).
    pub fn commit(mut self) -> Result<Child> {
        self.child.take().ok_or_else(committed)
    }
}

fn committed() -> RuntimeError {
    RuntimeError::Failed("the VMM process was committed already".into())
}

impl Drop for VmmGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut processes: Vec<HostProcess> =
            HostProcess::of(child.id() as i32).into_iter().collect();
        // The jailer's death kills its VMM (parent-death signal) unless the
        // VMM dropped it: kill it too.
        processes.extend(
            self.jail
                .as_ref()
                .and_then(|j| j.vmm_process(Duration::ZERO)),
        );
        kill_and_wait(&processes, Duration::from_secs(5));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts the VMM process of container `id` (through its jailer) with the
/// inputs in its directory and `RLIMIT_FSIZE` `file_size_limit` (bytes),
/// records it in state directory `dir` ([`VmmGuard::record_launch`]) and
/// waits for its readiness report.
fn start_vmm(
    id: &str,
    placement: Placement,
    resources: &HostResources,
    file_size_limit: u64,
    dir: &Path,
    foreground: bool,
) -> Result<(VmmGuard, VmmReady)> {
    let vmm_args: Vec<OsString> = vec![
        "--log".into(),
        placement.inside("vmm.log").into(),
        "vmm-process".into(),
        id.into(),
        "--state-dir".into(),
        placement.inside.clone().into(),
    ];
    let keep_fds = resources.inherited_fds();
    let cgroup = resources.cgroup.procs_fds();
    let pending = match placement.jail {
        Some(mut j) => {
            j.limit_file_size(file_size_limit);
            let mut envs: Vec<(String, String)> =
                ["CAPSA_LOG", "RUST_BACKTRACE", crate::seccomp::SECCOMP_ENV]
                    .into_iter()
                    .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
                    .collect();
            let pending = spawn::spawn_program(
                j.jailer(),
                |ready| {
                    envs.push((spawn::READY_FD_ENV.to_owned(), ready.to_string()));
                    let mut fds = keep_fds.clone();
                    fds.push(ready);
                    j.command(&fds, &envs, &vmm_args)
                },
                !foreground,
                &keep_fds,
                &cgroup,
            )?;
            (pending, Some(j))
        }
        None => {
            let exe = Path::new("/proc/self/exe");
            let pending = spawn::spawn_program(exe, |_| vmm_args, !foreground, &keep_fds, &cgroup)?;
            (pending, None)
        }
    };
    let (spawn::Helper { child, report }, jail) = pending;
    let mut guard = VmmGuard::new(child, jail);
    guard.record_launch(dir)?;
    let ready = guard.wait_ready(report)?;
    Ok((guard, ready))
}

/// The VMM process `create` started, once it reported readiness.
struct Launched {
    vmm: VmmGuard,
    ready: VmmReady,
    /// The hybrid vsock socket (host path).
    vsock: PathBuf,
    /// The template its VM was restored from, if any.
    template: Option<PathBuf>,
}

/// Writes the container's `state.json` and `--pid-file`, then commits the
/// VMM process: from here on it is the container.
fn record_state(
    id: &str,
    bundle: &Bundle,
    dir: &Path,
    launched: Launched,
    pid_file: Option<&Path>,
) -> Result<Child> {
    let Launched {
        vmm,
        ready,
        vsock,
        template,
    } = launched;
    let launcher = vmm.launcher().ok_or_else(|| {
        RuntimeError::Failed("the VMM process ended before the container was created".into())
    })?;
    // The jailer writes its pid file once the VMM runs, long before the
    // VMM reports.
    let jail = vmm.jailed(Duration::from_secs(5)).transpose()?;
    let vm = VmRecord {
        pid: launcher,
        jail,
        init_process_id: ready.init_process_id,
        vsock,
        template,
    };
    let container = Container {
        dir: dir.to_owned(),
        record: Record::new(id, bundle, RuntimeRecord::Vm(vm)),
    };
    container.save()?;
    if let Some(p) = pid_file {
        state::write_atomic(p, launcher.pid.to_string().as_bytes())?;
    }
    vmm.commit()
}
