//! A built micro-VM and its lifetime: the vCPU threads, the event loop on
//! the calling thread, and the end of the VM.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use capsa_devices::legacy::Serial;
use capsa_devices::virtio::MmioTransport;
use vmm_sys_util::timerfd::TimerFd;

use crate::boot::cmdline::MmioDeviceInfo;
use crate::config::{SnapshotConfig, SnapshotThen, SnapshotWhen};
use crate::profile::ProfileOutput;
use crate::seccomp::{Filters, ThreadKind};
use crate::snapshot::{self, Snapshot, SnapshotError, VirtioSlot};
use crate::vstate::pause::Parked;
use crate::vstate::vcpu::{Vcpu, VcpuShared, VmExit};
use crate::vstate::vm::Vm;

/// The event loop's subscriber set.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// A micro-VM ready to run.
pub struct Vmm {
    // Field order is drop order: the vCPUs and devices go before the VM.
    vcpus: Vec<Vcpu>,
    shared: Arc<VcpuShared>,
    event_loop: EventLoop,
    watcher: Arc<Mutex<ExitWatcher>>,
    profile: Option<Arc<ProfileOutput>>,
    filters: Arc<Filters>,
    machine: Machine,
    snapshot: Option<SnapshotPlan>,
    mem: GuestMemoryMmap,
    vm: Vm,
}

/// The devices a snapshot saves besides the vCPUs and memory.
#[derive(Default)]
pub(crate) struct Machine {
    /// The virtio-mmio slots, in order.
    pub slots: Vec<MmioDeviceInfo>,
    /// Their transports, in the same order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The COM1 UART, when there is one.
    pub serial: Option<Arc<Mutex<Serial>>>,
    /// Whether the guest runs with the PVM host workarounds.
    pub host_quirks: bool,
    /// After a restore: the slots (indexes into `slots`) whose device was
    /// put in a free slot of the snapshot, which the guest must bind.
    pub added: Vec<usize>,
}

/// A snapshot to take: where and what then, and the event that says when.
struct SnapshotPlan {
    config: SnapshotConfig,
    trigger: Arc<Mutex<SnapshotTrigger>>,
}

impl Vmm {
    /// Also compiles the seccomp filters ([`Filters::from_env`]): a bad
    /// `CAPSA_SECCOMP` fails here, before the VM runs.
    pub(crate) fn new(
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        shared: Arc<VcpuShared>,
        mut event_loop: EventLoop,
        exit_events: ExitEvents,
        profile: Option<Arc<ProfileOutput>>,
    ) -> Result<Self, crate::seccomp::SeccompError> {
        let filters = Arc::new(Filters::from_env()?);
        let watcher = Arc::new(Mutex::new(ExitWatcher {
            exit_evt: exit_events.exit_evt,
            reset_evt: exit_events.reset_evt,
            exits: exit_events.exits,
            exit: None,
        }));
        event_loop.add_subscriber(watcher.clone());
        Ok(Self {
            vcpus,
            shared,
            event_loop,
            watcher,
            profile,
            filters,
            machine: Machine::default(),
            snapshot: None,
            mem,
            vm,
        })
    }

    /// The devices that a snapshot saves.
    pub(crate) fn set_machine(&mut self, machine: Machine) {
        self.machine = machine;
    }

    /// Records the devices a restore put in free slots of the snapshot.
    pub(crate) fn set_added_devices(&mut self, added: Vec<usize>) {
        self.machine.added = added;
    }

    /// The Linux platform device names (`virtio-mmio.<N>`, N = the slot's
    /// place on the kernel command line) of the devices a restore put in
    /// free slots of the snapshot, in slot order: the guest must bind
    /// them (`/sys/bus/platform/drivers/virtio-mmio/bind`) to probe them.
    /// Empty after a cold boot.
    pub fn added_devices(&self) -> Vec<String> {
        self.machine
            .added
            .iter()
            .map(|i| format!("virtio-mmio.{i}"))
            .collect()
    }

    /// Takes a snapshot as `config` says: when `evt` is signalled (the
    /// boot timer's agent-ready mark does so), on `SIGUSR1`, or after
    /// `after-ms`. Creates the snapshot directory now (before the process
    /// is confined).
    ///
    /// Errors: the directory cannot be created, or no timer.
    pub(crate) fn plan_snapshot(
        &mut self,
        config: SnapshotConfig,
        evt: EventFd,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&config.dir)?;
        let filters = crate::seccomp::Mode::from_env()
            .and_then(Filters::for_snapshots)
            .map_err(std::io::Error::other)?;
        self.filters = Arc::new(filters);
        let timer = match config.when {
            SnapshotWhen::AfterMs(_) => {
                Some(TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?)
            }
            _ => None,
        };
        install_sigusr1(&evt)?;
        let trigger = Arc::new(Mutex::new(SnapshotTrigger {
            evt,
            timer,
            fired: false,
        }));
        self.event_loop.add_subscriber(trigger.clone());
        self.snapshot = Some(SnapshotPlan { config, trigger });
        Ok(())
    }

    /// A handle with which other threads can end the VM.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            shared: self.shared.clone(),
        }
    }

    /// The process's seccomp filters (crate::seccomp), for the threads
    /// that callers start beside the VM's own.
    pub fn filters(&self) -> Arc<Filters> {
        self.filters.clone()
    }

    /// Runs the VM until it ends; returns why it ended. Each vCPU thread
    /// installs its seccomp filter before its first `KVM_RUN`, and this
    /// (the calling) thread installs the event loop's once every thread of
    /// the VM has started: from then on the process runs confined.
    pub fn run(mut self) -> VmExit {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        if let Err(e) = register_signal_handler(kick_signal(), noop) {
            tracing::warn!("cannot install the vCPU kick signal handler: {e}");
        }
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (i, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let shared = self.shared.clone();
            let filters = self.filters.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("capsa-vcpu{i}"))
                .spawn(move || match filters.install(ThreadKind::Vcpu) {
                    Ok(()) => vcpu.run(shared),
                    Err(e) => vcpu.fail(&shared, e.to_string()),
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.stop(threads);
                    return VmExit::Error {
                        cpu: i as u8,
                        message: format!("cannot start the vCPU thread: {e}"),
                    };
                }
            }
        }
        let sampler = self.profile.as_ref().and_then(|p| {
            use std::os::unix::thread::JoinHandleExt;
            let ids = threads.iter().map(|t| t.as_pthread_t()).collect();
            p.profiler
                .start_sampler(ids, kick_signal(), p.clone(), self.filters.clone())
                .map_err(|e| tracing::warn!("cannot start the guest profiler: {e}"))
                .ok()
        });
        if let Err(e) = self.filters.install(ThreadKind::Vmm) {
            self.stop(threads);
            return VmExit::Error {
                cpu: 0,
                message: e.to_string(),
            };
        }
        self.arm_snapshot_timer();
        let exit = loop {
            if let Err(e) = self.event_loop.run() {
                tracing::error!("event loop: {e}");
            }
            if let Some(exit) = lock(&self.watcher).exit.take() {
                break exit;
            }
            if let Some(exit) = self.snapshot_if_triggered(&threads) {
                break exit;
            }
        };
        let unhandled = self.shared.unhandled_accesses.load(Ordering::Relaxed);
        if unhandled > 0 {
            tracing::debug!(unhandled, "guest accesses to addresses without a device");
        }
        if let Some(p) = &self.profile {
            // The sampler signals the vCPU threads: it ends before they do.
            p.profiler.stop();
            if let Some(sampler) = sampler {
                let _ = sampler.join();
            }
        }
        self.stop(threads);
        if let Some(p) = &self.profile {
            match p.write() {
                Ok(()) => tracing::info!(path = %p.path.display(), "guest profile written"),
                Err(e) => tracing::error!("cannot write the guest profile: {e}"),
            }
        }
        exit
    }

    fn arm_snapshot_timer(&self) {
        let Some(plan) = &self.snapshot else { return };
        if let SnapshotWhen::AfterMs(ms) = plan.config.when {
            let mut trigger = lock(&plan.trigger);
            if let Some(timer) = trigger.timer.as_mut() {
                // A zero duration would disarm the timer: at least 1 ms.
                if let Err(e) = timer.reset(Duration::from_millis(ms.max(1)), None) {
                    tracing::error!("snapshot timer: {e}");
                }
            }
        }
    }

    /// Takes the snapshot once its trigger fired; returns the VM's exit
    /// when the VM is to stop after it (or the snapshot failed and it was
    /// to stop).
    fn snapshot_if_triggered(&mut self, threads: &[JoinHandle<()>]) -> Option<VmExit> {
        let plan = self.snapshot.as_ref()?;
        if !std::mem::take(&mut lock(&plan.trigger).fired) {
            return None;
        }
        let (dir, then) = (plan.config.dir.clone(), plan.config.then);
        let began = Instant::now();
        let result = self.take_snapshot(threads, &dir);
        let stop = then == SnapshotThen::Exit;
        match result {
            Ok(()) => {
                tracing::info!(
                    dir = %dir.display(),
                    elapsed_ms = began.elapsed().as_millis() as u64,
                    "snapshot written"
                );
                stop.then_some(VmExit::Snapshotted { dir })
            }
            Err(e) => {
                tracing::error!("snapshot failed: {e}");
                stop.then(|| VmExit::SnapshotFailed {
                    message: e.to_string(),
                })
            }
        }
    }

    /// Pauses the vCPUs (each saves its own state), saves the VM, the
    /// devices and guest memory into `dir`, then lets the vCPUs run again
    /// (the caller stops them when the VM is to end). Runs on the event
    /// loop thread, between events: no device is serving a queue.
    fn take_snapshot(&self, threads: &[JoinHandle<()>], dir: &Path) -> Result<(), SnapshotError> {
        let pause = &self.shared.pause;
        pause.request();
        let parked = pause.wait_parked(threads.len(), PAUSE_TIMEOUT, || {
            for t in threads {
                let _ = t.kill(kick_signal());
            }
        });
        let result = parked
            .map_err(SnapshotError::Pause)
            .and_then(|parked| self.save(parked, dir));
        pause.resume();
        result
    }

    fn save(&self, parked: Vec<Parked>, dir: &Path) -> Result<(), SnapshotError> {
        let vcpus = parked
            .into_iter()
            .map(|(cpu, state)| state.map_err(|e| SnapshotError::Pause(format!("vCPU {cpu}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = snapshot::vm::save(&self.vm.fd)?;
        let mut virtio = Vec::with_capacity(self.machine.transports.len());
        for (i, (slot, t)) in self
            .machine
            .slots
            .iter()
            .zip(&self.machine.transports)
            .enumerate()
        {
            let transport = lock(t)
                .save_state()
                .map_err(|e| SnapshotError::Device(format!("virtio device {i}: {e}")))?;
            virtio.push(VirtioSlot {
                base: slot.base,
                irq: slot.irq,
                transport,
            });
        }
        let serial = self.machine.serial.as_ref().map(|s| lock(s).state());
        let memory = snapshot::memory::save(&self.mem, &dir.join(snapshot::memory::MEMORY_FILE))?;
        let state = Snapshot {
            capsa_version: env!("CARGO_PKG_VERSION").into(),
            host_quirks: self.machine.host_quirks,
            memory,
            vm,
            vcpus,
            virtio,
            serial,
        };
        snapshot::format::write_file(&dir.join(snapshot::STATE_FILE), &state)?;
        Ok(())
    }

    /// Stops the vCPU threads: sets the stop flag and kicks each thread
    /// out of `KVM_RUN` until it returns (bounded: a thread that does not
    /// stop within a second is left to end with the process).
    fn stop(&self, threads: Vec<JoinHandle<()>>) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.pause.wake();
        let deadline = Instant::now() + Duration::from_secs(1);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Ends a running VM from another thread (the container runtime does so
/// when the container's process has exited and the guest was shut down).
#[derive(Clone)]
pub struct VmmHandle {
    shared: Arc<VcpuShared>,
}

impl VmmHandle {
    /// Makes [`Vmm::run`] return `exit` (unless the VM already ended for
    /// another reason).
    pub fn request_exit(&self, exit: VmExit) {
        let _ = self.shared.exits.send(exit);
        let _ = self.shared.exit_evt.write(1);
    }
}

/// How long the vCPUs have to park for a snapshot.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The file descriptor of the snapshot trigger's eventfd, for the
/// `SIGUSR1` handler (-1: none).
static SNAPSHOT_EVT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigusr1(_: libc::c_int) {
    let fd = SNAPSHOT_EVT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a local
        // buffer to an eventfd that the VMM keeps open for its life.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Makes `SIGUSR1` signal `evt` (a snapshot now).
fn install_sigusr1(evt: &EventFd) -> std::io::Result<()> {
    let dup = evt.try_clone()?;
    SNAPSHOT_EVT_FD.store(dup.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(dup);
    // SAFETY: a zeroed sigaction with a handler that only calls write(2);
    // sigaction(2) is sound to call at any time.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Watches what asks for a snapshot: the trigger eventfd (the boot
/// timer's agent-ready mark, `SIGUSR1`) and the `after-ms` timer.
struct SnapshotTrigger {
    evt: EventFd,
    timer: Option<TimerFd>,
    fired: bool,
}

impl MutEventSubscriber for SnapshotTrigger {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.evt.as_raw_fd() {
            let _ = self.evt.read();
        } else if let Some(t) = &mut self.timer {
            let _ = t.wait();
        }
        self.fired = true;
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot watch the snapshot trigger: {e}");
        }
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::new(t, EventSet::IN)) {
                tracing::error!("cannot watch the snapshot timer: {e}");
            }
        }
    }
}

/// The sources of VM exits the event loop watches.
pub(crate) struct ExitEvents {
    /// Exits reported by vCPU threads (and [`VmmHandle`]).
    pub exits: Receiver<VmExit>,
    /// Signalled with every report on `exits`.
    pub exit_evt: EventFd,
    /// Signalled by the i8042 when the guest resets the machine.
    pub reset_evt: EventFd,
}

/// Watches the events that end the VM: the i8042 reset and the vCPU exit
/// eventfd.
struct ExitWatcher {
    exit_evt: EventFd,
    reset_evt: EventFd,
    exits: Receiver<VmExit>,
    exit: Option<VmExit>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.exit.get_or_insert(VmExit::Reset);
        } else if events.fd() == self.exit_evt.as_raw_fd() {
            let _ = self.exit_evt.read();
            if let Ok(exit) = self.exits.try_recv() {
                self.exit.get_or_insert(exit);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.exit_evt, &self.reset_evt] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                tracing::error!("cannot watch a VM exit event: {e}");
            }
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
