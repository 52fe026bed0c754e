//! The VMM's own seccomp filters: one **allow-list** per kind of thread,
//! built with `seccompiler` and installed by each thread for itself just
//! before it starts its work (Firecracker's model): the main thread before
//! the event loop, each vCPU thread before its first `KVM_RUN`, the
//! controller thread (agent client and stdio relays) and the helper
//! threads (profiler, boot-timer printer) first thing when they start.
//!
//! A call outside a thread's list kills the whole process
//! ([`Mode::Kill`], `SECCOMP_RET_KILL_PROCESS`: it dies of `SIGSYS` and
//! the kernel's audit log names the call, `type=1326 ... syscall=N`).
//! `CAPSA_SECCOMP` in the VMM's environment picks another action, for
//! diagnosis: `trap` (a `SIGSYS` handler names the thread and the call on
//! stderr, then the process exits with 159 = 128 + `SIGSYS`) or `log`
//! (the call is allowed and the kernel logs it: run a workload once to
//! find every missing call). See docs/security.md.
//!
//! The lists stack on the jailer's outer deny list (`capsa-jailer`,
//! `jailer/src/seccomp.rs`): the kernel runs every filter and the
//! strictest answer wins.
//!
//! What every list leaves out: `execve`/`execveat`, `fork`/`vfork`,
//! `clone` of a process (only threads, and only where a thread starts
//! threads), sockets of any family but `AF_UNIX`, every `ioctl` request
//! not named (no `TIOCSTI`, no KVM call that creates or reconfigures),
//! mounts, namespaces, `ptrace`, BPF and the like. `clone3` fails with
//! `ENOSYS` (a second, small filter: its flags are in memory, where
//! seccomp cannot look), so that the C library falls back to `clone`.
//!
//! Numbers and requests are x86_64's (the only architecture capsa runs
//! on); x32 calls (`nr | 0x4000_0000`) match no entry and are killed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Environment variable that picks the action for a call outside the
/// lists: `kill` (default), `trap` or `log`.
pub const SECCOMP_ENV: &str = "CAPSA_SECCOMP";

/// Exit status of a process that a trapped call ended ([`Mode::Trap`]):
/// 128 + `SIGSYS`, what a shell reports for a process killed by `SIGSYS`.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// Errors building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `CAPSA_SECCOMP` has a value other than `kill`, `trap` or `log`.
    #[error("{SECCOMP_ENV}={0:?}: expected kill, trap or log")]
    BadMode(String),
    /// seccompiler refused a rule or could not compile a filter.
    #[error("seccomp: building the {kind} filter: {source}")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// `seccomp(2)`/`prctl(2)` refused the filter.
    #[error("seccomp: installing the {kind} filter: {source}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
}

/// What a call outside a thread's list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The process is killed (`SIGSYS`; the default).
    Kill,
    /// `SIGSYS` to the thread; the handler names the call on stderr and
    /// the process exits with [`EXIT_SECCOMP`].
    Trap,
    /// The call is allowed and the kernel logs it (audit, `type=1326`).
    Log,
}

impl Mode {
    /// The mode named by [`SECCOMP_ENV`] (unset or empty: [`Mode::Kill`]).
    pub fn from_env() -> Result<Mode, SeccompError> {
        match std::env::var(SECCOMP_ENV).as_deref() {
            Err(_) | Ok("") | Ok("kill") => Ok(Mode::Kill),
            Ok("trap") => Ok(Mode::Trap),
            Ok("log") => Ok(Mode::Log),
            Ok(other) => Err(SeccompError::BadMode(other.to_owned())),
        }
    }

    fn action(self) -> SeccompAction {
        match self {
            Mode::Kill => SeccompAction::KillProcess,
            Mode::Trap => SeccompAction::Trap,
            Mode::Log => SeccompAction::Log,
        }
    }
}

/// The kinds of thread of a VMM process, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the device event loop, then the VM's shutdown and
    /// the process's exit.
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the MMIO/PIO exits it dispatches to the
    /// devices (register accesses, activation).
    Vcpu,
    /// The container's controller thread (`capsa vmm-process`): the agent
    /// client, and the stdio/console relay threads it starts (which
    /// inherit its filter).
    Controller,
    /// The guest profiler's sampler thread (`--profile`).
    Profiler,
    /// The boot-timer printer of `capsa vmm --boot-timer`.
    Printer,
}

impl ThreadKind {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Controller => "controller",
            ThreadKind::Profiler => "profiler",
            ThreadKind::Printer => "printer",
        }
    }

    /// Every kind.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Controller,
        ThreadKind::Profiler,
        ThreadKind::Printer,
    ];
}

/// The compiled filters of one VMM process, built once at start (so that
/// a bad [`SECCOMP_ENV`] fails before the VM exists) and installed by each
/// thread with [`Filters::install`].
pub struct Filters {
    mode: Mode,
    programs: Vec<(ThreadKind, BpfProgram)>,
    clone3: BpfProgram,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters").field("mode", &self.mode).finish()
    }
}

impl Filters {
    /// Compiles every kind's filter for the mode of [`SECCOMP_ENV`].
    pub fn from_env() -> Result<Filters, SeccompError> {
        Filters::new(Mode::from_env()?)
    }

    /// Compiles every kind's filter for `mode`.
    pub fn new(mode: Mode) -> Result<Filters, SeccompError> {
        Filters::build(mode, false)
    }

    /// [`Filters::new`] for a VMM that takes snapshots: the vCPU threads
    /// may also read their KVM state ([`ioctls::vcpu_snapshot`]) and the
    /// main thread the VM's ([`ioctls::vm_snapshot`]); it already writes
    /// and renames files.
    pub fn for_snapshots(mode: Mode) -> Result<Filters, SeccompError> {
        Filters::build(mode, true)
    }

    fn build(mode: Mode, snapshots: bool) -> Result<Filters, SeccompError> {
        // tgkill's target process (as this process's pid namespace sees
        // it, which is what tgkill takes).
        let pid = std::process::id();
        let mut programs = Vec::new();
        for kind in ThreadKind::ALL {
            let mut rules = allowed(kind, pid);
            if snapshots {
                match kind {
                    ThreadKind::Vcpu => allow_ioctls(&mut rules, &ioctls::vcpu_snapshot()),
                    ThreadKind::Vmm => allow_ioctls(&mut rules, &ioctls::vm_snapshot()),
                    _ => {}
                }
            }
            programs.push((kind, compile(kind, rules, mode.action())?));
        }
        // clone3 → ENOSYS; everything else is the first filter's to judge.
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|source| SeccompError::Build {
            kind: "clone3",
            source,
        })?;
        Ok(Filters {
            mode,
            programs,
            clone3,
        })
    }

    /// The action for calls outside the lists.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Installs `kind`'s filter on the calling thread (and the threads it
    /// starts afterwards). In [`Mode::Trap`] the `SIGSYS` handler is
    /// installed first.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        if self.mode == Mode::Trap {
            install_sigsys_handler();
        }
        let err = |source| SeccompError::Install {
            kind: kind.name(),
            source,
        };
        let program = self
            .programs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p)
            .expect("every kind is compiled");
        // The clone3 filter first: the allow-list does not hold seccomp(2).
        if kind_starts_threads(kind) {
            seccompiler::apply_filter(&self.clone3).map_err(err)?;
        }
        seccompiler::apply_filter(program).map_err(err)?;
        THREAD_KIND.with(|k| k.set(kind.name()));
        Ok(())
    }
}

/// Whether threads of `kind` start threads (and get the `clone3` filter).
fn kind_starts_threads(kind: ThreadKind) -> bool {
    matches!(
        kind,
        ThreadKind::Controller | ThreadKind::Vmm | ThreadKind::Vcpu
    )
}

fn compile(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(|source| SeccompError::Build {
            kind: kind.name(),
            source,
        })
}

/// A rule set: system call → conditions (none: allowed whatever the
/// arguments; several rules: allowed when one of them matches).
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, calls: &[libc::c_long]) {
    for &nr in calls {
        rules.entry(nr).or_default();
    }
}

/// `arg` (32 bits) equal to `value`.
fn arg_eq(arg: u8, value: u64) -> SeccompRule {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )
    .expect("a valid condition")])
    .expect("a non-empty rule")
}

/// `ioctl` allowed for exactly `requests` (argument 1; the kernel reads
/// the request as 32 bits).
fn allow_ioctls(rules: &mut Rules, requests: &[u64]) {
    let list = rules.entry(libc::SYS_ioctl).or_default();
    for &r in requests {
        list.push(arg_eq(1, r));
    }
}

/// `socket(AF_UNIX, ...)` only (any type: stream for vsock and the agent,
/// seqpacket is not used but harmless).
fn allow_unix_sockets(rules: &mut Rules) {
    rules
        .entry(libc::SYS_socket)
        .or_default()
        .push(arg_eq(0, libc::AF_UNIX as u64));
}

/// `clone` of a thread only: `CLONE_THREAD` set and no `CLONE_NEW*` flag
/// (a new process, or a thread in new namespaces, is killed).
fn allow_thread_clone(rules: &mut Rules) {
    const NEW_NAMESPACES: u64 = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u64;
    let thread = libc::CLONE_THREAD as u64;
    let rule = SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )
        .expect("a valid condition"),
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(NEW_NAMESPACES),
            0,
        )
        .expect("a valid condition"),
    ])
    .expect("a non-empty rule");
    rules.entry(libc::SYS_clone).or_default().push(rule);
}

/// The list of `kind`.
fn allowed(kind: ThreadKind, pid: u32) -> Rules {
    let mut rules = Rules::new();
    allow(&mut rules, BASE);
    // tgkill to this process's own threads only: raise(SIGABRT) when a
    // panic aborts, the vCPU kicks (pthread_kill) that end the VM and take
    // the profiler's samples.
    rules
        .entry(libc::SYS_tgkill)
        .or_default()
        .push(arg_eq(0, u64::from(pid)));
    match kind {
        ThreadKind::Vmm => {
            allow(&mut rules, EVENT_LOOP);
            allow(&mut rules, FILES);
            allow_unix_sockets(&mut rules);
            allow_ioctls(&mut rules, &[ioctls::FIONBIO]);
            // The virtio-fs frontend runs each vhost-user exchange under a
            // watchdog thread (`Session::guarded`, devices/src/virtio/fs/
            // frontend.rs: a scoped thread that shuts the socket down when
            // the backend misses its deadline); the device's activation
            // (`Fs::start`) runs on this thread, so it starts one per
            // activation. Threads only, no processes. The watchdog
            // inherits this list (it needs `shutdown`, in EVENT_LOOP).
            allow(&mut rules, THREADS);
            allow(&mut rules, &[libc::SYS_clone3]);
            allow_thread_clone(&mut rules);
        }
        ThreadKind::Vcpu => {
            allow(&mut rules, VCPU);
            allow_ioctls(&mut rules, &ioctls::vcpu());
            // A virtio-fs reset (the guest wrote status 0 to a running
            // device) runs on the vCPU thread and stops the backend under
            // the frontend's watchdog thread (see the main thread's list):
            // threads only (unnamed: no prctl), clone3 → ENOSYS.
            allow(
                &mut rules,
                &[
                    libc::SYS_set_robust_list,
                    libc::SYS_rseq,
                    libc::SYS_sched_getaffinity,
                    libc::SYS_clone3,
                ],
            );
            allow_thread_clone(&mut rules);
        }
        ThreadKind::Controller => {
            allow(&mut rules, CONTROLLER);
            allow(&mut rules, FILES);
            allow(&mut rules, THREADS);
            allow_unix_sockets(&mut rules);
            allow_thread_clone(&mut rules);
            // Let through here so that the second filter answers ENOSYS
            // (with both filters, the stricter answer wins: a kill here
            // would beat the ENOSYS).
            allow(&mut rules, &[libc::SYS_clone3]);
            allow_ioctls(
                &mut rules,
                &[ioctls::FIONBIO, ioctls::TCGETS, ioctls::TIOCGWINSZ],
            );
        }
        ThreadKind::Profiler => {
            allow(&mut rules, FILES);
        }
        ThreadKind::Printer => {}
    }
    rules
}

/// Every thread: memory, locks, time, signals' return, logging and the
/// thread's own end.
const BASE: &[libc::c_long] = &[
    libc::SYS_brk,             // malloc
    libc::SYS_mmap,            // malloc of large blocks, channel blocks
    libc::SYS_munmap,          // free of large blocks, a thread's stacks at its end
    libc::SYS_mremap,          // realloc of large blocks
    libc::SYS_madvise,         // free (MADV_DONTNEED), glibc's thread-stack cache
    libc::SYS_mprotect,        // malloc arenas grow by mprotect
    libc::SYS_futex,           // Mutex, Condvar, channels, thread join
    libc::SYS_sched_yield,     // spinning locks back off
    libc::SYS_clock_gettime,   // Instant/SystemTime when the vDSO is not used
    libc::SYS_clock_nanosleep, // thread::sleep
    libc::SYS_nanosleep,       // thread::sleep (older C libraries)
    libc::SYS_getrandom,       // HashMap's random keys
    libc::SYS_write,           // log lines (vmm.log, stderr), eventfd signals
    libc::SYS_writev,          // buffered log writers
    libc::SYS_close,           // dropping descriptors
    libc::SYS_rt_sigreturn,    // return from the vCPU kick and SIGSYS handlers
    libc::SYS_rt_sigprocmask,  // glibc blocks signals around thread start/exit and abort
    libc::SYS_sigaltstack,     // Rust's stack-overflow handler, removed at thread end
    libc::SYS_exit,            // a thread's end
    libc::SYS_exit_group,      // the process's end (and abort after a panic)
    libc::SYS_gettid,          // log fields, glibc's raise()
    libc::SYS_getpid,          // glibc's raise() and pthread_kill()
    libc::SYS_rt_sigaction,    // abort() resets SIGABRT
];

/// The main thread's event loop: epoll, eventfds and irqfds, the devices'
/// host sides.
const EVENT_LOOP: &[libc::c_long] = &[
    libc::SYS_epoll_wait,      // event-manager's loop
    libc::SYS_epoll_pwait,     // the same, as some C libraries call it
    libc::SYS_epoll_ctl,       // devices register their fds on activation
    libc::SYS_timerfd_settime, // vsock: the muxer's connection deadlines
    libc::SYS_read,            // eventfds, the TAP, vsock sockets
    libc::SYS_readv,           // virtio-net RX from the TAP
    libc::SYS_recvfrom,        // vsock Unix sockets (read on a socket)
    libc::SYS_recvmsg,         // vhost-user replies; vsock
    libc::SYS_sendto,          // vsock Unix sockets (write on a socket)
    libc::SYS_sendmsg,         // vhost-user messages with SCM_RIGHTS (memfd, eventfds)
    libc::SYS_accept4,         // vsock: host connections on the hybrid socket
    libc::SYS_connect,         // vsock: guest-initiated connections to <uds>_<port>
    libc::SYS_shutdown,        // vsock: half-close
    libc::SYS_getsockopt,      // SO_ERROR after a non-blocking connect
    libc::SYS_setsockopt,      // socket buffer sizes and timeouts
    libc::SYS_fcntl,           // O_NONBLOCK, F_DUPFD_CLOEXEC
    libc::SYS_dup,             // EventFd::try_clone
    libc::SYS_pread64,         // virtio-blk reads
    libc::SYS_preadv,          // virtio-blk reads into several buffers
    libc::SYS_pwrite64,        // virtio-blk writes
    libc::SYS_pwritev,         // virtio-blk writes from several buffers
    libc::SYS_fsync,           // virtio-blk FLUSH
    libc::SYS_fdatasync,       // virtio-blk FLUSH
    libc::SYS_lseek,           // virtio-blk offsets, file sizes
];

/// Opening, writing and renaming files in the jail: the profile report,
/// the `exit`/`oom` marks of the VMM process.
const FILES: &[libc::c_long] = &[
    libc::SYS_openat,     // File::open/create
    libc::SYS_read,       // reading what was opened
    libc::SYS_newfstatat, // metadata
    libc::SYS_statx,      // metadata (Rust's std)
    libc::SYS_fstat,      // metadata of an open file
    libc::SYS_lseek,      // seeking in it
    libc::SYS_rename,     // atomic rewrite of a report
    libc::SYS_renameat,   // the same
    libc::SYS_unlink,     // removing a temporary file
    libc::SYS_unlinkat,   // the same
    libc::SYS_fcntl,      // file flags
    libc::SYS_ftruncate,  // rewriting a report in place
];

/// A vCPU thread besides `KVM_RUN`: device register accesses, activation
/// (which clones and signals eventfds), virtio-fs resets (vhost-user
/// messages), the serial console's log.
const VCPU: &[libc::c_long] = &[
    libc::SYS_read,     // eventfds
    libc::SYS_dup,      // EventFd::try_clone on activation
    libc::SYS_fcntl,    // F_DUPFD_CLOEXEC
    libc::SYS_sendmsg,  // vhost-user messages on a virtio-fs reset
    libc::SYS_recvmsg,  // vhost-user replies
    libc::SYS_sendto,   // the same on a socket
    libc::SYS_recvfrom, // the same on a socket
    libc::SYS_shutdown, // the virtio-fs watchdog (a thread of this one) ends a late exchange
];

/// The controller: the agent client over the hybrid vsock socket, the
/// stdio relays, the console.
const CONTROLLER: &[libc::c_long] = &[
    libc::SYS_read,       // sockets, stdin, the pty
    libc::SYS_connect,    // the hybrid vsock socket, --console-socket
    libc::SYS_recvfrom,   // socket reads
    libc::SYS_recvmsg,    // socket reads
    libc::SYS_sendto,     // socket writes
    libc::SYS_sendmsg,    // socket writes
    libc::SYS_shutdown,   // EOF of stdin to the guest
    libc::SYS_setsockopt, // read/write timeouts of the agent calls
    libc::SYS_getsockopt, // SO_ERROR after a connect with a timeout
    libc::SYS_poll,       // connect with a timeout
    libc::SYS_ppoll,      // the same
    libc::SYS_dup,        // dup of the stdio descriptors
    libc::SYS_dup3,       // the same
    libc::SYS_fcntl,      // F_DUPFD_CLOEXEC, O_NONBLOCK
];

/// Starting threads (the controller's relays, the virtio-fs watchdog).
const THREADS: &[libc::c_long] = &[
    libc::SYS_set_robust_list,   // glibc, in each new thread
    libc::SYS_rseq,              // glibc registers rseq in each new thread
    libc::SYS_sched_getaffinity, // glibc's thread start
    libc::SYS_prctl,             // thread names (PR_SET_NAME)
];

/// `ioctl` request numbers: KVM's (linux/kvm.h), TUN's (linux/if_tun.h)
/// and the terminal's (asm-generic/ioctls.h).
pub mod ioctls {
    use nr::*;

    /// The numbers, computed from the argument types as the uapi headers
    /// do (`_IO`, `_IOR`, `_IOW`, `_IOWR`).
    mod nr {
        use kvm_bindings::{
            kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
            kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events,
            kvm_xcrs, kvm_xsave, KVMIO,
        };
        use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

        ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
        ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
        ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
        ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
        ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
        ioctl_iow_nr!(TUNSETOFFLOAD, 'T' as u32, 208, libc::c_uint);
        ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
        ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
        ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
        ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
        ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
        ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
        ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
        ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
        ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
        ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    }

    /// What a vCPU thread adds when the VMM takes snapshots: the reads of
    /// its own state (`crate::snapshot::vcpu::save`) besides `KVM_GET_REGS`,
    /// `SREGS` and `MP_STATE` (already in [`vcpu`]); `KVM_RUN` with
    /// `immediate_exit` is `KVM_RUN`. No `KVM_SET_*`: a restore sets the
    /// state before any thread is confined.
    pub fn vcpu_snapshot() -> [u64; 7] {
        [
            KVM_GET_FPU(),
            KVM_GET_MSRS(),
            KVM_GET_LAPIC(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
        ]
    }

    /// What the main thread adds when the VMM takes snapshots: the reads
    /// of the VM's state (`crate::snapshot::vm::save`).
    pub fn vm_snapshot() -> [u64; 3] {
        [KVM_GET_CLOCK(), KVM_GET_IRQCHIP(), KVM_GET_PIT2()]
    }

    /// `FIONBIO`: Rust's `set_nonblocking` on sockets.
    pub const FIONBIO: u64 = libc::FIONBIO;
    /// `TCGETS`: `isatty` (the inherited console descriptor).
    pub const TCGETS: u64 = libc::TCGETS;
    /// `TIOCGWINSZ`: the console's window size, polled for `resize`.
    pub const TIOCGWINSZ: u64 = libc::TIOCGWINSZ;

    /// A vCPU thread's requests: `KVM_RUN`; `KVM_GET_REGS`/`SREGS` and
    /// `KVM_TRANSLATE` to describe a failed exit (RIP, code bytes) and for
    /// the profiler's samples, with `KVM_GET_MP_STATE`; `TUNSETOFFLOAD`
    /// when virtio-net is activated (the guest wrote `DRIVER_OK`).
    pub fn vcpu() -> [u64; 6] {
        [
            KVM_RUN(),
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_TRANSLATE(),
            KVM_GET_MP_STATE(),
            TUNSETOFFLOAD(),
        ]
    }
}

static SIGSYS_HANDLER: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The kind of the calling thread's filter, for the SIGSYS message (a
    /// const-initialised thread-local: no allocation, safe to read in a
    /// signal handler).
    static THREAD_KIND: std::cell::Cell<&'static str> = const { std::cell::Cell::new("") };
}

/// [`Mode::Trap`]: a `SIGSYS` handler that writes which call of which
/// thread was refused to stderr and ends the process with
/// [`EXIT_SECCOMP`] (only async-signal-safe calls: `write`, `_exit`).
fn install_sigsys_handler() {
    if SIGSYS_HANDLER.swap(true, Ordering::AcqRel) {
        return;
    }
    extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO; for
        // SIGSYS from seccomp, si_syscall is the int at offset 24 of the
        // x86_64 siginfo (after si_call_addr), which libc does not expose.
        let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
        let mut buf = [0u8; 160];
        let mut n = 0;
        let mut put = |b: &[u8]| {
            for &c in b {
                if n < buf.len() {
                    buf[n] = c;
                    n += 1;
                }
            }
        };
        // Only calls every list allows may run here: the handler runs
        // under the thread's filter, and a refused call would kill.
        put(b"capsa: seccomp: SIGSYS: a ");
        put(THREAD_KIND.with(|k| k.get()).as_bytes());
        put(b" thread made system call ");
        let mut digits = [0u8; 12];
        let mut i = digits.len();
        let mut v = nr.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 || i == 0 {
                break;
            }
        }
        put(&digits[i..]);
        put(b", which its allow-list does not hold (docs/security.md)\n");
        // SAFETY: write and _exit are async-signal-safe; `buf` is valid.
        unsafe {
            libc::write(2, buf.as_ptr().cast(), n);
            libc::_exit(EXIT_SECCOMP);
        }
    }
    // SAFETY: installs a handler that only calls async-signal-safe
    // functions; the sigaction struct is fully initialised.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}

/// Describes an exit by `SIGSYS` (killed, or the trap handler's
/// [`EXIT_SECCOMP`]) for the messages that report a VMM's end; `None` for
/// any other status.
pub fn describe_sigsys(status: &std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let by_signal = status.signal() == Some(libc::SIGSYS);
    let by_code = status.code() == Some(EXIT_SECCOMP);
    (by_signal || by_code).then(|| {
        "the VMM was killed by SIGSYS: it made a system call outside its seccomp \
         allow-list (run with CAPSA_SECCOMP=trap or log to name it; docs/security.md)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child under `kind`'s filter (compiled for
    /// `mode` before the fork); returns the child's wait status.
    fn in_child(mode: Mode, kind: ThreadKind, body: impl FnOnce() -> i32) -> i32 {
        in_child_with_stderr(mode, kind, None, body)
    }

    /// [`in_child`], with the child's stderr on `stderr` when given.
    fn in_child_with_stderr(
        mode: Mode,
        kind: ThreadKind,
        stderr: Option<i32>,
        body: impl FnOnce() -> i32,
    ) -> i32 {
        let filters = Filters::new(mode).expect("filters compile");
        in_child_under(filters, kind, stderr, body)
    }

    /// [`in_child_with_stderr`] under the given compiled `filters`.
    fn in_child_under(
        filters: Filters,
        kind: ThreadKind,
        stderr: Option<i32>,
        body: impl FnOnce() -> i32,
    ) -> i32 {
        // SAFETY: the child only installs the filter, runs `body` (system
        // calls, and allocations, which glibc's fork makes safe) and
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if let Some(fd) = stderr {
                // SAFETY: stderr onto the given descriptor, in the child.
                unsafe { libc::dup2(fd, 2) };
            }
            let code = match filters.install(kind) {
                Ok(()) => body(),
                Err(_) => 100,
            };
            // SAFETY: ends the child without running the parent's code.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    fn killed_by_sigsys(status: i32) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    fn execve() -> i32 {
        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: valid NUL-terminated arrays of C strings.
        unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        1
    }

    fn socket(family: libc::c_int) -> i32 {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return 2;
        }
        // SAFETY: closes the descriptor just made.
        unsafe { libc::close(fd) };
        0
    }

    fn tiocsti() -> i32 {
        let c = b'x';
        // SAFETY: TIOCSTI reads one byte through the pointer (fd 0 may
        // not be a terminal: the filter decides before the kernel looks).
        unsafe { libc::ioctl(0, libc::TIOCSTI, &c) };
        3
    }

    fn fork() -> i32 {
        // SAFETY: a raw fork(2); the child (if any) leaves at once.
        let pid = unsafe { libc::syscall(libc::SYS_fork) };
        if pid == 0 {
            // SAFETY: ends the grandchild.
            unsafe { libc::_exit(0) };
        }
        4
    }

    #[test]
    fn item9_seccomp_allow_list_denied_calls_kill_the_process() {
        type Case = (ThreadKind, &'static str, fn() -> i32);
        let cases: [Case; 10] = [
            (ThreadKind::Vcpu, "execve", execve),
            (ThreadKind::Vmm, "execve", execve),
            (ThreadKind::Controller, "execve", execve),
            (ThreadKind::Vcpu, "socket(AF_INET)", || {
                socket(libc::AF_INET)
            }),
            (ThreadKind::Vmm, "socket(AF_INET)", || socket(libc::AF_INET)),
            (ThreadKind::Controller, "socket(AF_INET6)", || {
                socket(libc::AF_INET6)
            }),
            (ThreadKind::Vcpu, "ioctl(TIOCSTI)", tiocsti),
            (ThreadKind::Controller, "ioctl(TIOCSTI)", tiocsti),
            (ThreadKind::Controller, "fork", fork),
            (ThreadKind::Vmm, "fork", fork),
        ];
        for (kind, what, call) in cases {
            let status = in_child(Mode::Kill, kind, call);
            assert!(
                killed_by_sigsys(status),
                "{what} on a {} thread: status {status:#x}, not SIGSYS",
                kind.name()
            );
        }
    }

    /// The reads of KVM state that a snapshot makes are allowed only in a
    /// VMM that takes snapshots, each on its own kind of thread.
    #[test]
    fn snapshot_state_reads_are_allowed_only_with_snapshots() {
        let ebadf = |request: u64| {
            move || {
                // SAFETY: an ioctl on a bad descriptor: the filter decides,
                // then the kernel answers EBADF without touching memory.
                let rc = unsafe { libc::ioctl(-1, request as _, 0) };
                i32::from(
                    rc != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF),
                )
            }
        };
        let cases = ioctls::vcpu_snapshot()
            .into_iter()
            .map(|r| (ThreadKind::Vcpu, r))
            .chain(
                ioctls::vm_snapshot()
                    .into_iter()
                    .map(|r| (ThreadKind::Vmm, r)),
            );
        for (kind, request) in cases {
            let with = Filters::for_snapshots(Mode::Kill).unwrap();
            let status = in_child_under(with, kind, None, ebadf(request));
            assert_eq!(status, 0, "{request:#x} on a {} thread", kind.name());
            let without = Filters::new(Mode::Kill).unwrap();
            let status = in_child_under(without, kind, None, ebadf(request));
            assert!(
                killed_by_sigsys(status),
                "{request:#x} without snapshots on a {} thread: {status:#x}",
                kind.name()
            );
        }
        // Never on the other kind of thread.
        let with = Filters::for_snapshots(Mode::Kill).unwrap();
        let status = in_child_under(
            with,
            ThreadKind::Vmm,
            None,
            ebadf(ioctls::vcpu_snapshot()[1]),
        );
        assert!(killed_by_sigsys(status), "KVM_GET_MSRS on the main thread");
    }

    #[test]
    fn item9_seccomp_allow_list_lets_the_needed_calls_through() {
        // KVM_RUN on a bad descriptor: the filter lets it through, the
        // kernel says EBADF.
        let status = in_child(Mode::Kill, ThreadKind::Vcpu, || {
            // SAFETY: KVM_RUN takes no argument.
            let rc = unsafe { libc::ioctl(-1, ioctls::vcpu()[0] as _, 0) };
            i32::from(
                rc != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF),
            )
        });
        assert_eq!(status, 0, "KVM_RUN on a vCPU thread: {status:#x}");
        let status = in_child(Mode::Kill, ThreadKind::Vmm, || socket(libc::AF_UNIX));
        assert_eq!(status, 0, "socket(AF_UNIX) on the main thread: {status:#x}");
        // The controller starts relay threads, which inherit its filter.
        let status = in_child(Mode::Kill, ThreadKind::Controller, || {
            let t = std::thread::spawn(|| socket(libc::AF_UNIX));
            t.join().unwrap_or(5)
        });
        assert_eq!(status, 0, "a thread of the controller: {status:#x}");
        // The virtio-fs watchdog: a scoped thread started by the main
        // thread (activation) or a vCPU thread (reset), which may shut the
        // vhost-user socket down.
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            let status = in_child(Mode::Kill, kind, || {
                std::thread::scope(|s| {
                    // SAFETY: shutdown(2) on a bad descriptor: EBADF.
                    s.spawn(|| unsafe { libc::shutdown(-1, libc::SHUT_RDWR) })
                        .join()
                        .map_or(6, |_| 0)
                })
            });
            assert_eq!(
                status,
                0,
                "a watchdog of a {} thread: {status:#x}",
                kind.name()
            );
        }
    }

    #[test]
    fn item9_seccomp_trap_mode_names_the_call_and_exits_159() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&write);
        let status = in_child_with_stderr(Mode::Trap, ThreadKind::Vcpu, Some(fd), || {
            socket(libc::AF_INET)
        });
        drop(write);
        let mut message = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut message).unwrap();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == EXIT_SECCOMP,
            "status {status:#x}"
        );
        assert!(
            message.contains("seccomp: SIGSYS") && message.contains("system call 41,"),
            "{message}"
        );
    }

    #[test]
    fn sigsys_exits_are_described() {
        use std::os::unix::process::ExitStatusExt;
        let killed = std::process::ExitStatus::from_raw(libc::SIGSYS);
        let jailer = std::process::ExitStatus::from_raw(EXIT_SECCOMP << 8);
        let other = std::process::ExitStatus::from_raw(1 << 8);
        assert!(describe_sigsys(&killed).unwrap().contains("SIGSYS"));
        assert!(describe_sigsys(&jailer).unwrap().contains("seccomp"));
        assert!(describe_sigsys(&other).is_none());
    }
}
