//! A built micro-VM and its lifetime: the vCPU threads, the event loop on
//! the calling thread, and the end of the VM.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::profile::ProfileOutput;
use crate::seccomp::{Filters, ThreadKind};
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
    _mem: GuestMemoryMmap,
    _vm: Vm,
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
            _mem: mem,
            _vm: vm,
        })
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
        let exit = loop {
            if let Err(e) = self.event_loop.run() {
                tracing::error!("event loop: {e}");
            }
            if let Some(exit) = lock(&self.watcher).exit.take() {
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

    /// Stops the vCPU threads: sets the stop flag and kicks each thread
    /// out of `KVM_RUN` until it returns (bounded: a thread that does not
    /// stop within a second is left to end with the process).
    fn stop(&self, threads: Vec<JoinHandle<()>>) {
        self.shared.stop.store(true, Ordering::Release);
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
