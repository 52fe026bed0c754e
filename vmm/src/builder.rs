//! Building a micro-VM from a [`VmConfig`]: a short recipe of small steps,
//! each of which fails with an error that says what could not be done.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsa_devices::boot_timer::{BootMark, BootTimer, BOOT_TIMER_LEN, MAGIC_AGENT_READY};
use capsa_devices::legacy::{
    Serial, SerialSnapshot, I8042, SERIAL_PORT_BASE, SERIAL_PORT_IRQ, SERIAL_PORT_LEN,
};
use capsa_devices::virtio::block::{Block, BlockConfig};
use capsa_devices::virtio::free_slot::FreeSlot;
use capsa_devices::virtio::fs::{Fs, DEFAULT_BACKEND_TIMEOUT};
use capsa_devices::virtio::net::{Net, NetConfig as NetDeviceConfig, Tap};
use capsa_devices::virtio::rng::Rng;
use capsa_devices::virtio::vsock::{Vsock, VsockDeviceConfig};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::BOOT_TIMER_START;
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::boot::{self, cmdline, BootError};
use crate::config::{self, ConfigError, SnapshotWhen, VmConfig, DEFAULT_CMDLINE};
use crate::device_manager::{self, shared, DeviceError, DeviceManager};
use crate::logger::{CappedWriter, CONSOLE_LOG_LIMITS};
use crate::profile::{self, ProfileOutput, Profiler};
use crate::pvm;
use crate::snapshot::{self, SnapshotError};
use crate::vmm::{EventLoop, ExitEvents, Machine, Vmm};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::pause::PauseControl;
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuShared, VmExit};
use crate::vstate::vm::{Vm, VmError};

/// Errors building a VM; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The host's memory size cannot be read.
    #[error("cannot read the host's memory size: {0}")]
    HostMemory(std::io::Error),
    /// Creating the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel or initramfs failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The command line is invalid.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The MP table failed.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// A device could not be attached.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The event loop could not be created.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// A disk's backing file cannot be used.
    #[error("disks[{index}]: {message}")]
    Disk {
        /// Position in the configuration's `disks`.
        index: usize,
        /// Why.
        message: String,
    },
    /// The vsock device cannot be created (e.g. its socket cannot be bound).
    #[error("vsock: {0}")]
    Vsock(String),
    /// The serial log file cannot be opened.
    #[error("serial_log: cannot open {0}")]
    SerialLog(String),
    /// The rng device cannot be created.
    #[error("rng: {0}")]
    Rng(std::io::Error),
    /// A virtio-fs device cannot be created (its backend is missing or
    /// broken, or guest memory cannot be shared).
    #[error("fs[{index}] (tag {tag:?}): {message}")]
    Fs {
        /// Position in the configuration's `fs`.
        index: usize,
        /// The share's tag.
        tag: String,
        /// Why.
        message: String,
    },
    /// The network device cannot be created (no TAP).
    #[error("net: {0}")]
    Net(String),
    /// The seccomp filters cannot be built (a bad `CAPSA_SECCOMP`).
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The snapshot to restore from cannot be used, or the snapshot
    /// directory cannot be prepared.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// Creates the VM described by `config`, ready to run. `start` is the
/// instant the boot timer measures from (the VMM process start). With
/// `config.restore_from`, the VM is restored from that snapshot instead
/// ([`snapshot::restore::restore_microvm`]).
pub fn build_microvm(
    config: &VmConfig,
    start: Instant,
) -> Result<(Vmm, Receiver<BootMark>), BuildError> {
    if let Some(dir) = &config.restore_from {
        return snapshot::restore::restore_microvm(config, dir, start);
    }
    config.validate(config::host_memory_mib().map_err(BuildError::HostMemory)?)?;
    ignore_sigxfsz();
    let quirks = pvm::enabled(config.host_quirks);
    let mem_bytes = u64::from(config.memory_mib) << 20;

    let vm = Vm::new()?;
    let mem = memory::create(mem_bytes)?;
    memory::register(&vm.fd, &mem)?;

    let kernel = boot::load_kernel(&mem, &config.kernel, config.boot_protocol)?;
    let initramfs = match &config.initramfs {
        Some(path) => Some(boot::load_initramfs(&mem, path, kernel.end, mem_bytes)?),
        None => None,
    };

    let parts = attach_devices(&vm, &mem, config, start, None)?;

    let (quirk_params, quirk_clear) = pvm::kernel_params();
    let params: &[&str] = if quirks { quirk_params } else { &[] };
    let cmdline = cmdline::build(
        config.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE),
        &cmdline::CmdlineParts {
            serial_console: config.serial_console || config.serial_log.is_some(),
            devices: &parts.devices.virtio_devices,
            params,
            clearcpuid: if quirks { quirk_clear } else { &[] },
        },
    )?;
    tracing::debug!(cmdline = %cmdline.as_cstring().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default(), "kernel command line");
    boot::configure(&mem, &kernel, &cmdline, initramfs, mem_bytes)?;
    mptable::setup_mptable(&mem, config.vcpus)?;

    let vcpus = (0..config.vcpus)
        .map(|i| Vcpu::new(&vm.kvm, &vm.fd, &mem, i, config.vcpus, &kernel, quirks))
        .collect::<Result<Vec<_>, _>>()?;
    finish(vm, mem, vcpus, parts, config, start, quirks)
}

/// A file-size limit (a jail's RLIMIT_FSIZE) must fail a write with
/// EFBIG, which the callers handle (the logs drop the bytes, guest
/// memory fails with a message naming its size), rather than kill the
/// VMM with SIGXFSZ. Nothing here starts programs, which would inherit
/// the ignored signal.
pub(crate) fn ignore_sigxfsz() {
    // SAFETY: SIG_IGN installs no handler code; signal(2) is sound to call
    // at any time.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// What [`attach_devices`] made: the devices and the event plumbing of
/// the VM.
pub(crate) struct Parts {
    pub(crate) devices: DeviceManager,
    event_loop: EventLoop,
    marks_rx: Receiver<BootMark>,
    exits_tx: Sender<VmExit>,
    exit_events: ExitEvents,
    pub(crate) serial: Option<Arc<Mutex<Serial>>>,
    snapshot_evt: EventFd,
}

/// The legacy devices (the UART in `serial` state when given), the boot
/// timer, and the virtio devices of `config`.
pub(crate) fn attach_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    start: Instant,
    serial: Option<&SerialSnapshot>,
) -> Result<Parts, BuildError> {
    let mut devices = DeviceManager::new();
    let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    let serial = attach_legacy(vm, &mut devices, config, &reset_evt, serial)?;
    let snapshot_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    let (marks_tx, marks_rx) = channel();
    let mut timer = BootTimer::new(start, marks_tx);
    if config
        .snapshot
        .as_ref()
        .is_some_and(|s| s.when == SnapshotWhen::AgentReady)
    {
        let evt = snapshot_evt.try_clone().map_err(BuildError::EventFd)?;
        timer = timer.notify_on(MAGIC_AGENT_READY, evt);
    }
    devices.add_mmio(shared(timer), BOOT_TIMER_START, BOOT_TIMER_LEN)?;

    // Terminal exits: reported by vCPU threads and by devices that fail
    // for good, read by the event loop.
    let (exits_tx, exits_rx) = channel();
    let exit_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    let fatal = FatalExit {
        exits: exits_tx.clone(),
        exit_evt: exit_evt.try_clone().map_err(BuildError::EventFd)?,
    };

    let mut event_loop = EventLoop::new().map_err(|e| BuildError::EventLoop(e.to_string()))?;
    attach_virtio_devices(vm, mem, &mut devices, &mut event_loop, config, &fatal)?;
    Ok(Parts {
        devices,
        event_loop,
        marks_rx,
        exits_tx,
        exit_events: ExitEvents {
            exits: exits_rx,
            exit_evt,
            reset_evt,
        },
        serial,
        snapshot_evt,
    })
}

/// The [`Vmm`] around the VM, its memory, vCPUs and devices.
pub(crate) fn finish(
    vm: Vm,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    parts: Parts,
    config: &VmConfig,
    start: Instant,
    quirks: bool,
) -> Result<(Vmm, Receiver<BootMark>), BuildError> {
    let profile = config.profile.as_ref().map(|p| {
        Arc::new(ProfileOutput {
            profiler: Arc::new(Profiler::new(
                config.vcpus,
                Duration::from_millis(u64::from(p.interval_ms)),
                start,
            )),
            path: p.path.clone(),
            kernel: config.kernel.clone(),
            system_map: p
                .system_map
                .clone()
                .or_else(|| profile::symbols::beside(&config.kernel)),
            vcpus: config.vcpus,
        })
    });
    let shared = Arc::new(VcpuShared {
        pio: parts.devices.pio.clone(),
        mmio: parts.devices.mmio.clone(),
        mem: mem.clone(),
        exits: parts.exits_tx,
        exit_evt: parts
            .exit_events
            .exit_evt
            .try_clone()
            .map_err(BuildError::EventFd)?,
        stop: AtomicBool::new(false),
        unhandled_accesses: AtomicU64::new(0),
        start,
        profiler: profile.as_ref().map(|p| p.profiler.clone()),
        pause: PauseControl::default(),
    });
    let machine = Machine {
        slots: parts.devices.virtio_devices.clone(),
        transports: parts.devices.transports.clone(),
        serial: parts.serial,
        host_quirks: quirks,
        added: Vec::new(),
    };
    let mut vmm = Vmm::new(
        vm,
        mem,
        vcpus,
        shared,
        parts.event_loop,
        parts.exit_events,
        profile,
    )?;
    vmm.set_machine(machine);
    if let Some(snap) = &config.snapshot {
        vmm.plan_snapshot(snap.clone(), parts.snapshot_evt)
            .map_err(|e| {
                BuildError::Snapshot(SnapshotError::Dir {
                    path: snap.dir.display().to_string(),
                    source: e,
                })
            })?;
    }
    Ok((vmm, parts.marks_rx))
}

/// How a device ends the VM when it fails for good: a
/// [`VmExit::DeviceFailed`] on the exits channel, and the eventfd that
/// wakes the event loop to read it.
struct FatalExit {
    exits: Sender<VmExit>,
    exit_evt: EventFd,
}

impl FatalExit {
    /// A handler reporting `what` failed, with the device's error.
    fn handler(&self, what: String) -> Result<impl FnMut(String) + Send, BuildError> {
        let exits = self.exits.clone();
        let evt = self.exit_evt.try_clone().map_err(BuildError::EventFd)?;
        Ok(move |why: String| {
            let message = format!("{what}: {why}");
            tracing::error!("{message}; ending the VM");
            let _ = exits.send(VmExit::DeviceFailed { message });
            let _ = evt.write(1);
        })
    }
}

/// The vsock device, the rng, the disks (in order: `/dev/vda`,
/// `/dev/vdb`, …), the virtio-fs shares, the network device, then
/// `config.free_slots` free slots. The devices every VM of a shape has
/// come first, so that a template VM's (vsock and rng, then free slots)
/// keep their slots when a restored VM adds its own after them
/// (docs/snapshot.md, "Devices added at restore").
fn attach_virtio_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    devices: &mut DeviceManager,
    event_loop: &mut EventLoop,
    config: &VmConfig,
    fatal: &FatalExit,
) -> Result<(), BuildError> {
    if let Some(vsock) = &config.vsock {
        let dev = Vsock::new(&VsockDeviceConfig {
            guest_cid: u64::from(vsock.guest_cid),
            uds_path: vsock.uds_path.clone(),
        })
        .map_err(|e| BuildError::Vsock(e.to_string()))?;
        devices.attach_virtio(&vm.fd, mem, event_loop, dev)?;
    }
    if config.rng {
        let rng = Rng::new().map_err(BuildError::Rng)?;
        devices.attach_virtio(&vm.fd, mem, event_loop, rng)?;
    }
    for (index, disk) in config.disks.iter().enumerate() {
        let block = Block::new(&BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            serial: None,
        })
        .map_err(|e| BuildError::Disk {
            index,
            message: e.to_string(),
        })?;
        devices.attach_virtio(&vm.fd, mem, event_loop, block)?;
    }
    for (index, share) in config.fs.iter().enumerate() {
        let fs_err = |message: String| BuildError::Fs {
            index,
            tag: share.tag.clone(),
            message,
        };
        // vhost-user maps guest memory from its file descriptor.
        if mem.iter().any(|r| r.file_offset().is_none()) {
            return Err(fs_err("guest memory is not file-backed".into()));
        }
        let (backend, stream) = match (&share.socket, share.socket_fd) {
            (Some(path), _) => (
                path.display().to_string(),
                UnixStream::connect(path)
                    .map_err(|e| fs_err(format!("cannot connect to {}: {e}", path.display())))?,
            ),
            (None, Some(fd)) => (
                format!("descriptor {fd}"),
                inherited_socket(fd).map_err(fs_err)?,
            ),
            (None, None) => return Err(fs_err("no socket".into())),
        };
        let mut lost = fatal.handler(format!(
            "virtio-fs share {:?} (virtiofsd at {backend})",
            share.tag
        ))?;
        let fs = Fs::with_stream(
            &share.tag,
            stream,
            DEFAULT_BACKEND_TIMEOUT,
            Box::new(move |e| lost(e.to_string())),
        )
        .map_err(|e| fs_err(e.to_string()))?;
        devices.attach_virtio(&vm.fd, mem, event_loop, fs)?;
    }
    if let Some(net) = &config.net {
        devices.attach_virtio(&vm.fd, mem, event_loop, net_device(net)?)?;
    }
    for _ in 0..config.free_slots {
        devices.attach_virtio(&vm.fd, mem, event_loop, FreeSlot)?;
    }
    Ok(())
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the inherited descriptor `fd`, which must be a socket (the
/// connection to a virtio-fs backend that `capsa create` made).
fn inherited_socket(fd: i32) -> Result<UnixStream, String> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    if fd < 3 {
        return Err(format!("descriptor {fd} is not an inherited socket"));
    }
    // SAFETY: only inspects the descriptor (fstat); a closed one fails.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let st =
        nix::sys::stat::fstat(borrowed).map_err(|e| format!("descriptor {fd} is not open: {e}"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("descriptor {fd} is not a socket"));
    }
    // SAFETY: the configuration names this descriptor as the backend's
    // connection, inherited for that use only: nothing else in this
    // process owns it, and the configuration is built once.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

/// The virtio-net device of `config`, over its TAP.
fn net_device(config: &config::NetConfig) -> Result<Net, BuildError> {
    let tap = match (config.tap_fd, &config.tap_name) {
        (Some(fd), _) => {
            // SAFETY: F_GETFD only queries the descriptor.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(BuildError::Net(format!(
                    "tap_fd {fd} is not an open descriptor"
                )));
            }
            // SAFETY: the descriptor is open (checked above) and was
            // inherited for this VMM alone (`--keep-fd`); nothing else in
            // this process owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            Tap::from_fd(owned)
        }
        (None, Some(name)) => Tap::create(name),
        (None, None) => return Err(BuildError::Net("no TAP given".into())),
    }
    .map_err(|e| BuildError::Net(e.to_string()))?;
    let mac = match &config.mac {
        Some(m) => {
            config::parse_mac(m).ok_or_else(|| BuildError::Net(format!("invalid MAC {m:?}")))?
        }
        None => random_mac().map_err(|e| BuildError::Net(e.to_string()))?,
    };
    tracing::info!(tap = tap.name(), "virtio-net on a TAP");
    Net::new(
        Box::new(tap),
        NetDeviceConfig {
            mac,
            mtu: config.mtu,
        },
    )
    .map_err(|e| BuildError::Net(e.to_string()))
}

/// A random unicast, locally administered MAC address.
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    capsa_devices::virtio::rng::fill_random(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// The i8042 (for guest resets) and, when asked for, the serial console.
fn attach_legacy(
    vm: &Vm,
    devices: &mut DeviceManager,
    config: &VmConfig,
    reset_evt: &EventFd,
    saved_serial: Option<&SerialSnapshot>,
) -> Result<Option<Arc<Mutex<Serial>>>, BuildError> {
    let reset = reset_evt.try_clone().map_err(BuildError::EventFd)?;
    devices.add_pio(shared(I8042::new(reset)), I8042::PORT_BASE, I8042::PORT_LEN)?;
    let out: Option<Box<dyn std::io::Write + Send>> = if config.serial_console {
        Some(Box::new(std::io::stdout()))
    } else if let Some(path) = &config.serial_log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| BuildError::SerialLog(format!("{}: {e}", path.display())))?;
        // The guest decides what goes there: capped (crate::logger).
        Some(Box::new(CappedWriter::new(
            file,
            "console.log",
            CONSOLE_LOG_LIMITS,
        )))
    } else {
        None
    };
    let Some(out) = out else {
        return Ok(None);
    };
    let irq = device_manager::irqfd(&vm.fd, SERIAL_PORT_IRQ)?;
    let serial = match saved_serial {
        Some(state) => Serial::from_state(irq, out, state)
            .map_err(|e| BuildError::Snapshot(SnapshotError::Device(e)))?,
        None => Serial::new(irq, out),
    };
    let serial = shared(serial);
    devices.add_pio(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
    Ok(Some(serial))
}
