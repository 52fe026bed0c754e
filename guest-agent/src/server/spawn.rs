//! Starting a container process: clone (sharing the agent's memory, as
//! `posix_spawn` does), set up, optionally wait for `start`, exec.
//!
//! Everything the child needs (argv, envp, candidate paths for the `PATH`
//! lookup, ids, limits, the mounts it makes itself) is prepared in the
//! parent as a [`Plan`] and [`SpawnOptions`], because the child of a
//! multi-threaded process may only make async-signal-safe calls: it runs
//! raw system calls on prepared pointers and never allocates. The child
//! reports over a close-on-exec pipe as `(stage, errno)` records: a
//! failure (after which it `_exit(127)`s), or [`READY`] when it waits for
//! `start`; an empty read means the exec succeeded. The child is reaped by
//! [`reaper`](super::reaper), never here.
//!
//! The child is cloned with `CLONE_VM` onto a stack of its own
//! ([`ChildMemory`]) rather than forked: it runs in the agent's address
//! space until `execve` replaces it. A fork copied the agent's page tables,
//! then both sides took copy-on-write faults and the child's `execve` tore
//! the copy down again: about 0.45 s of a container start where the guest
//! kernel is emulated (docs/kernel.md, "The boot diet"). In exchange the
//! child must not write the agent's memory: it writes only its own stack,
//! and after it reported [`READY`] (when the agent thread that cloned it
//! runs on) it makes its system calls through [`raw`], which leaves that
//! thread's `errno` alone. The stack and the plan stay allocated until the
//! child has exec'd or exited (the report pipe's end of file).
//!
//! Order in the child (as runc's init): joining the container's cgroup
//! (writing `0` to its `cgroup.procs`, opened by the parent, so the child
//! and everything it will fork are in the group before any of the
//! container's code runs), signal mask and SIGPIPE reset, `setsid`,
//! controlling tty / stdio, the mounts that must be made from inside the
//! new PID namespace (its `/proc`), `chroot` + `chdir("/")`, rlimits (before
//! dropping privileges, so hard limits can be raised),
//! `setgroups`/`setgid`/`setuid`, `umask`, `chdir(cwd)`,
//! `PR_SET_NO_NEW_PRIVS`, the lookup of `args[0]` (as runc's
//! `exec.LookPath`, so that a missing command fails `create`, not `start`),
//! then — for a container's init — the wait for `start`, and `execve`.
//!
//! PID namespaces (OCI `linux.namespaces` type `pid`): the init process is
//! cloned with `CLONE_NEWPID`, so it is PID 1 of a namespace of its own,
//! with PID 1's signal semantics, and mounts `/proc` from inside it. An
//! `exec`'d process joins that namespace: the spawning thread `setns`es its
//! children's PID namespace to the init's around the `fork` (a per-thread
//! setting; the agent itself stays in the guest's namespace).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

use super::error::AgentError;
use super::reaper::{self, ExitRoute};
use crate::protocol::{ProcessSpec, Rlimit};

/// `PATH` used to look up `args[0]` when the process's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The file descriptors the child gets as 0, 1 and 2.
pub enum ChildStdio {
    /// Separate descriptors for stdin, stdout and stderr.
    Pipes {
        /// Becomes fd 0.
        stdin: RawFd,
        /// Becomes fd 1.
        stdout: RawFd,
        /// Becomes fd 2.
        stderr: RawFd,
    },
    /// A pty slave that becomes fds 0-2 and the controlling terminal.
    Tty {
        /// The slave.
        slave: RawFd,
    },
}

/// Names of the child's stages, indexed by the stage number it reports.
const STAGES: [&str; 17] = [
    "unknown",
    "sigprocmask",
    "setsid",
    "tty",
    "dup2",
    "chroot",
    "setrlimit",
    "setgroups",
    "setgid",
    "setuid",
    "chdir",
    "no_new_privs",
    "execve",
    "cgroup",
    "mount",
    "lookup",
    "start",
];
const STAGE_MOUNT: u32 = 14;
const STAGE_LOOKUP: u32 = 15;
const STAGE_START: u32 = 16;
/// `stat` of a `args[0]` that names a path failed (the errno is stat's).
const STAGE_LOOKUP_STAT: u32 = 100;
/// Not a failure: the child is set up and waits for `start`.
const READY: u32 = u32::MAX;

/// Everything the child needs, prepared before `fork`.
pub struct Plan {
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// `args[0]`, for error messages.
    name: String,
    /// Whether `args[0]` names a path (has a `/`): then it is the only
    /// candidate and is not looked up in `PATH`.
    is_path: bool,
    candidates: Vec<CString>,
    root: Option<CString>,
    cwd: CString,
    set_ids: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    umask: Option<libc::mode_t>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    no_new_privs: bool,
}

/// One mount(2) call that the child makes before `chroot`: the mounts that
/// must be made from inside the container's PID namespace (a `proc`
/// instance shows the PID namespace of the process that mounts it).
pub struct ChildMount {
    source: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: Option<CString>,
}

impl ChildMount {
    /// `mount(source, target, fstype, flags, data)`; an empty `data` is
    /// passed as NULL.
    pub fn new(
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> Result<ChildMount, AgentError> {
        let c = |what: &str, s: &str| cstring(what, s);
        Ok(ChildMount {
            source: c("mount source", source)?,
            target: c("mount destination", &target.to_string_lossy())?,
            fstype: c("mount type", fstype)?,
            flags,
            data: if data.is_empty() {
                None
            } else {
                Some(c("mount options", data)?)
            },
        })
    }
}

/// Which PID namespace the child is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNamespace {
    /// The agent's (the guest's).
    Inherit,
    /// A new one, whose PID 1 the child is (`CLONE_NEWPID`).
    New,
    /// The one of this descriptor (`/proc/PID/ns/pid` of the container's
    /// init, opened by the agent).
    Join(RawFd),
}

/// How to spawn, besides the [`Plan`].
pub struct SpawnOptions<'a> {
    /// An open, writable `cgroup.procs` of the cgroup v2 group the child
    /// joins first.
    pub cgroup_procs: Option<RawFd>,
    /// Its PID namespace.
    pub pid_ns: PidNamespace,
    /// Mounts it makes before `chroot` (see [`ChildMount`]).
    pub mounts: &'a [ChildMount],
    /// Whether it waits for [`Spawned::release`] before `execve` (the
    /// container's init, between `create` and `start`).
    pub wait_for_start: bool,
}

fn cstring(what: &str, s: &str) -> Result<CString, AgentError> {
    CString::new(s).map_err(|_| AgentError::InvalidParams(format!("{what} contains a NUL byte")))
}

/// The `RLIMIT_*` constant for an OCI rlimit name.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// The agent's own `GLIBC_TUNABLES`, if it has one. On PVM hosts the VMM
/// puts one on the kernel command line (the kernel hands it to init's
/// environment) that keeps glibc from using AVX, whose register state the
/// guest kernel cannot switch there (see `capsa_vmm::pvm`).
fn agent_tunables() -> Option<&'static str> {
    static TUNABLES: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TUNABLES
        .get_or_init(|| {
            std::env::var("GLIBC_TUNABLES")
                .ok()
                .filter(|t| !t.is_empty())
        })
        .as_deref()
}

/// `env` with the agent's tunables passed on: added as `GLIBC_TUNABLES`, or
/// appended (`:`-separated, so they win) to the process's own.
fn with_tunables(env: &[String], tunables: Option<&str>) -> Vec<String> {
    let mut env = env.to_vec();
    let Some(t) = tunables else {
        return env;
    };
    match env
        .iter_mut()
        .rev()
        .find(|e| e.starts_with("GLIBC_TUNABLES="))
    {
        Some(e) if e.len() > "GLIBC_TUNABLES=".len() => {
            e.push(':');
            e.push_str(t);
        }
        Some(e) => e.push_str(t),
        None => env.push(format!("GLIBC_TUNABLES={t}")),
    }
    env
}

/// The paths tried for `arg0`, as Go's `exec.LookPath` (runc): `arg0`
/// itself when it has a `/`, else `arg0` in each directory of `PATH` (from
/// `env`, or [`DEFAULT_PATH`]); an empty `PATH` has no entries, an empty
/// entry is the working directory.
fn exec_candidates(arg0: &str, env: &[String]) -> Result<Vec<CString>, AgentError> {
    if arg0.contains('/') {
        return Ok(vec![cstring("process.args[0]", arg0)?]);
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if path_var.is_empty() {
        return Ok(Vec::new());
    }
    path_var
        .split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| cstring("PATH", &format!("{}/{}", dir.trim_end_matches('/'), arg0)))
        .collect()
}

/// The resource and limits of one OCI rlimit.
fn rlimit(r: &Rlimit) -> Result<(libc::__rlimit_resource_t, libc::rlimit), AgentError> {
    let resource = rlimit_resource(&r.kind).ok_or_else(|| {
        AgentError::InvalidParams(format!("process.rlimits: unknown type {:?}", r.kind))
    })?;
    let limit = libc::rlimit {
        rlim_cur: r.soft,
        rlim_max: r.hard,
    };
    Ok((resource, limit))
}

/// Pointers to `strings` followed by a null pointer (an `argv`/`envp`);
/// valid while `strings` lives.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl Plan {
    /// Prepares `spec` to run chrooted into `root` (no chroot when `root` is `/`).
    pub fn new(spec: &ProcessSpec, root: &Path) -> Result<Plan, AgentError> {
        let Some(arg0) = spec.args.first() else {
            return Err(AgentError::InvalidParams("process.args is empty".into()));
        };
        if arg0.is_empty() {
            return Err(AgentError::InvalidParams("process.args[0] is empty".into()));
        }
        let argv = spec
            .args
            .iter()
            .map(|a| cstring("process.args", a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = with_tunables(&spec.env, agent_tunables());
        let envp = env
            .iter()
            .map(|e| cstring("process.env", e))
            .collect::<Result<Vec<_>, _>>()?;
        let is_path = arg0.contains('/');
        let candidates = exec_candidates(arg0, &spec.env)?;
        let root = if root == Path::new("/") {
            None
        } else {
            Some(cstring("rootfs path", &root.to_string_lossy())?)
        };
        let cwd = if spec.cwd.is_empty() {
            "/"
        } else {
            spec.cwd.as_str()
        };
        if !cwd.starts_with('/') {
            return Err(AgentError::InvalidParams(format!(
                "process.cwd {cwd:?} is not absolute"
            )));
        }
        let rlimits = spec
            .rlimits
            .iter()
            .map(rlimit)
            .collect::<Result<Vec<_>, _>>()?;
        // SAFETY: these getters cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let user = &spec.user;
        let set_ids =
            euid == 0 || user.uid != euid || user.gid != egid || !user.additional_gids.is_empty();
        Ok(Plan {
            argv_ptrs: null_terminated(&argv),
            _argv: argv,
            envp_ptrs: null_terminated(&envp),
            _envp: envp,
            name: arg0.clone(),
            is_path,
            candidates,
            root,
            cwd: cstring("process.cwd", cwd)?,
            set_ids,
            uid: user.uid,
            gid: user.gid,
            groups: user.additional_gids.clone(),
            umask: user.umask.map(|m| m as libc::mode_t),
            rlimits,
            no_new_privs: spec.no_new_privileges,
        })
    }
}

/// A child that was spawned; see [`Spawned::release`].
pub struct Spawned {
    /// Its pid (in the agent's PID namespace).
    pub pid: i32,
    /// Write end of the pipe the child waits on before `execve` (only with
    /// [`SpawnOptions::wait_for_start`]). Closing it unreleased makes the
    /// child exit without running anything.
    go: Option<OwnedFd>,
    err_read: OwnedFd,
    plan_name: String,
    /// The stack and plan of a child that waits for `start`.
    memory: Option<ChildMemory>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Never released: closing `go` makes the child exit, but when is
        // not known here (a frozen cgroup can hold it), and it runs on this
        // memory until then. A few KiB per container that was created and
        // never started are left mapped instead.
        if let Some(memory) = self.memory.take() {
            std::mem::forget(memory);
        }
    }
}

impl Spawned {
    /// Lets a child that waits for `start` exec; returns once `execve`
    /// succeeded, or why it failed (the child then exits with 127).
    pub fn release(mut self) -> Result<i32, AgentError> {
        let Some(go) = self.go.take() else {
            return Ok(self.pid);
        };
        // SAFETY: writes one byte from a local to a descriptor we own.
        if unsafe { libc::write(go.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
            return Err(AgentError::last_os("release the container's process"));
        }
        drop(go);
        let report = read_report(&self.err_read);
        if report.is_some() {
            // It failed and exits now.
            wait_eof(&self.err_read);
        }
        // The child has exec'd or exited: its memory is free.
        drop(self.memory.take());
        match report {
            None => Ok(self.pid),
            Some((stage, errno)) => Err(report_error(&self.plan_name, stage, errno)),
        }
    }
}

/// The agent's own PID namespace (`/proc/self/ns/pid`), to return to after
/// a [`PidNamespace::Join`] spawn.
fn own_pid_ns() -> Result<RawFd, AgentError> {
    static OWN: OnceLock<Result<OwnedFd, i32>> = OnceLock::new();
    match OWN.get_or_init(|| {
        std::fs::File::open("/proc/self/ns/pid")
            .map(OwnedFd::from)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }) {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(errno) => Err(AgentError::Os {
            what: "open /proc/self/ns/pid".into(),
            errno: *errno,
        }),
    }
}

/// Reads one `(stage, errno)` record; `None` at EOF (the exec succeeded, or
/// the child died without a word, which its exit status then tells).
fn read_report(fd: &OwnedFd) -> Option<(u32, i32)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled part of a local buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    match got {
        0 => None,
        8 => Some((
            u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
            i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        )),
        _ => Some((0, libc::EIO)),
    }
}

fn report_error(name: &str, stage: u32, errno: i32) -> AgentError {
    match stage {
        STAGE_LOOKUP | STAGE_LOOKUP_STAT => AgentError::NotExecutable {
            name: name.to_string(),
            stat_failed: stage == STAGE_LOOKUP_STAT,
            errno,
        },
        _ => AgentError::ExecFailed {
            stage: STAGES.get(stage as usize).copied().unwrap_or("unknown"),
            errno,
        },
    }
}

/// Creates a close-on-exec pipe.
fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(AgentError::last_os("pipe2"));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `plan` with `stdio` and `options`, registering `route` with the
/// reaper. Returns once the child exec'd, or — with
/// [`SpawnOptions::wait_for_start`] — once it is set up and waits for
/// [`Spawned::release`]; or why it failed before that (a missing command
/// is [`AgentError::NotExecutable`]).
pub fn spawn(
    plan: Plan,
    stdio: &ChildStdio,
    options: &SpawnOptions<'_>,
    route: ExitRoute,
) -> Result<Spawned, AgentError> {
    let memory = ChildMemory {
        stack: ChildStack::new()?,
        plan: Box::new(plan),
    };
    let plan = &*memory.plan;
    let (err_read, err_write) = pipe()?;
    let (go_read, go_write) = if options.wait_for_start {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let own_ns = match options.pid_ns {
        PidNamespace::Join(_) => Some(own_pid_ns()?),
        _ => None,
    };
    let child = ChildArgs {
        plan,
        stdio,
        cgroup_procs: options.cgroup_procs,
        mounts: options.mounts,
        err_fd: err_write.as_raw_fd(),
        go_fd: go_read.as_ref().map(|fd| fd.as_raw_fd()),
    };
    let stack_top = memory.stack.top();
    let pid = reaper::spawn_registered(
        || clone_child(&child, stack_top, options.pid_ns, own_ns),
        route,
    )
    .map_err(|e| match (options.pid_ns, e.raw_os_error()) {
        // clone into a PID namespace whose init has exited.
        (PidNamespace::Join(_), Some(libc::ENOMEM)) => {
            AgentError::InvalidState("the container's process has exited".into())
        }
        _ => AgentError::from_io("clone", &e),
    })?;
    drop(err_write);
    drop(go_read);
    let plan_name = plan.name.clone();
    match read_report(&err_read) {
        // It waits for `start` on its stack: `memory` goes with it.
        Some((READY, _)) if go_write.is_some() => Ok(Spawned {
            pid,
            go: go_write,
            err_read,
            plan_name,
            memory: Some(memory),
        }),
        // It exec'd.
        None if go_write.is_none() => Ok(Spawned {
            pid,
            go: None,
            err_read,
            plan_name,
            memory: None,
        }),
        // The child died before reporting (it cannot, unless killed).
        None => Err(AgentError::ExecFailed {
            stage: "unknown",
            errno: libc::EIO,
        }),
        Some((stage, errno)) => {
            // It exits now; its stack is freed once it has.
            wait_eof(&err_read);
            Err(report_error(&plan_name, stage, errno))
        }
    }
}

/// The memory a child cloned with `CLONE_VM` uses until it has exec'd or
/// exited: its stack, and the plan whose strings its `execve` reads.
struct ChildMemory {
    stack: ChildStack,
    plan: Box<Plan>,
}

// SAFETY: the plan's raw pointers point into its own strings, which move
// with it; nothing in it is tied to a thread.
unsafe impl Send for ChildMemory {}

/// An anonymous mapping for a child's stack, with a guard page below it.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Enough for `child_main` and the libc calls it makes (it uses a few
    /// KiB; only the pages it touches are ever allocated).
    const LEN: usize = 256 * 1024;
    const GUARD: usize = 4096;

    fn new() -> Result<ChildStack, AgentError> {
        // SAFETY: a fresh anonymous mapping, owned by the result.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(AgentError::last_os("mmap the child's stack"));
        }
        let stack = ChildStack {
            base,
            len: Self::LEN,
        };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(AgentError::last_os("mprotect the child's stack guard"));
        }
        Ok(stack)
    }

    /// The initial stack pointer (the stack grows down from the end).
    fn top(&self) -> usize {
        self.base as usize + self.len
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; no child runs on it any more
        // (see `ChildMemory`).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Reads `fd` until end of file: the child has exec'd or exited (or a read
/// failed, which cannot happen on a pipe we own).
fn wait_eof(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)) {
            continue;
        }
        return;
    }
}

/// Clones the child that runs `child_main` on the stack ending at
/// `stack_top`, sharing the agent's memory (`CLONE_VM`), in a new PID
/// namespace or inside the container's; the child's pid. `own_ns` is the
/// agent's PID namespace to return this thread to after a
/// [`PidNamespace::Join`].
fn clone_child(
    child: &ChildArgs<'_>,
    stack_top: usize,
    pid_ns: PidNamespace,
    own_ns: Option<RawFd>,
) -> std::io::Result<libc::pid_t> {
    if let PidNamespace::Join(fd) = pid_ns {
        // SAFETY: setns on a descriptor the caller keeps open; it
        // changes only this thread's namespace for new children.
        if unsafe { libc::setns(fd, libc::CLONE_NEWPID) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut flags = libc::CLONE_VM | libc::SIGCHLD;
    if pid_ns == PidNamespace::New {
        flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: the child runs `child_entry` on its own stack (a mapping
    // that outlives it, see `ChildMemory`) and reads `child`, which the
    // caller keeps alive until the child reported READY or is gone; it
    // never returns into this frame (it execs or exits).
    let pid = unsafe {
        libc::clone(
            child_entry,
            stack_top as *mut libc::c_void,
            flags,
            (child as *const ChildArgs<'_>).cast_mut().cast(),
        )
    };
    let clone_error = std::io::Error::last_os_error();
    if let Some(own) = own_ns {
        // Back to the agent's namespace for this thread's next
        // children (allowed: it is the thread's active one).
        // SAFETY: setns on the descriptor `own_pid_ns` keeps open.
        if unsafe { libc::setns(own, libc::CLONE_NEWPID) } != 0 {
            crate::agent_log!(
                "cannot return to the agent's PID namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    match pid {
        -1 => Err(clone_error),
        pid => Ok(pid),
    }
}

/// The cloned child's entry: `arg` is the `ChildArgs` of `clone_child`.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `clone_child` passes a `ChildArgs` that lives until the
    // child reported READY or is gone, and `child_main` reads it only
    // before that.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    child_main(args)
}

/// What the child reads: pointers into memory prepared before the fork.
struct ChildArgs<'a> {
    plan: &'a Plan,
    stdio: &'a ChildStdio,
    cgroup_procs: Option<RawFd>,
    mounts: &'a [ChildMount],
    err_fd: RawFd,
    go_fd: Option<RawFd>,
}

/// Writes a `(stage, errno)` record; async-signal-safe, `errno` untouched.
fn report(err_fd: RawFd, stage: u32, errno: i32) {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) of a local buffer.
    unsafe { raw::write(err_fd, &msg) };
}

/// Reports `(stage, errno)` and exits; async-signal-safe, `errno`
/// untouched.
fn fail_with(err_fd: RawFd, stage: u32, errno: i32) -> ! {
    report(err_fd, stage, errno);
    // SAFETY: exit_group does not return.
    unsafe { raw::exit_group(127) }
}

/// Reports `(stage, errno)` with the current errno and exits. Only before
/// READY (the cloning thread's `errno` is the child's until then).
fn fail(err_fd: RawFd, stage: u32) -> ! {
    // SAFETY: the errno location is thread-local and valid.
    let errno = unsafe { *libc::__errno_location() };
    fail_with(err_fd, stage, errno)
}

/// Makes `src` the child's `dst`, clearing close-on-exec when they are equal.
///
/// # Safety
/// Only called in the forked child.
unsafe fn move_fd(src: RawFd, dst: RawFd) -> bool {
    if src == dst {
        libc::fcntl(src, libc::F_SETFD, 0) == 0
    } else {
        libc::dup2(src, dst) == dst
    }
}

/// Whether `path` is a file that may be executed: not a directory and with
/// an execute bit (Go's `exec.LookPath`, which runc uses). `Err(errno)`
/// when `stat` fails.
///
/// # Safety
/// Only called in the forked child (async-signal-safe).
unsafe fn executable(path: &CString) -> Result<bool, i32> {
    let mut st: libc::stat = std::mem::zeroed();
    if libc::stat(path.as_ptr(), &mut st) != 0 {
        return Err(*libc::__errno_location());
    }
    Ok(st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_mode & 0o111 != 0)
}

/// The index of the candidate to exec, or the `(stage, errno)` to report.
///
/// # Safety
/// Only called in the forked child (async-signal-safe).
unsafe fn look_up(plan: &Plan) -> Result<usize, (u32, i32)> {
    if plan.is_path {
        return match executable(&plan.candidates[0]) {
            Ok(true) => Ok(0),
            Ok(false) => Err((STAGE_LOOKUP, libc::EACCES)),
            Err(errno) => Err((STAGE_LOOKUP_STAT, errno)),
        };
    }
    plan.candidates
        .iter()
        .position(|c| executable(c) == Ok(true))
        .ok_or((STAGE_LOOKUP, libc::ENOENT))
}

fn child_main(args: &ChildArgs<'_>) -> ! {
    let (plan, err_fd) = (args.plan, args.err_fd);
    // SAFETY: runs in the freshly cloned child, on its own stack: only
    // async-signal-safe raw system calls on pointers into `plan`, which
    // outlives the child's use of it (`ChildMemory`); every failure ends in
    // `fail`, success in execve.
    unsafe {
        // Not dumpable: the memory is the agent's until execve, so only a
        // tracer with CAP_SYS_PTRACE may attach (`ptrace_may_access`); the
        // flag is the shared memory's, and execve sets the program's own.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        if let Some(fd) = args.cgroup_procs {
            // "0" moves the writing process (cgroup-v2.rst, cgroup.procs).
            if libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                fail(err_fd, 13);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            fail(err_fd, 1);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::setsid() < 0 {
            fail(err_fd, 2);
        }
        child_stdio(args.stdio, err_fd);
        child_mounts(args.mounts, err_fd);
        if let Some(root) = &plan.root {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                fail(err_fd, 5);
            }
        }
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                fail(err_fd, 6);
            }
        }
        if plan.set_ids {
            set_ids(plan, err_fd);
        }
        if let Some(mask) = plan.umask {
            libc::umask(mask);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(err_fd, 10);
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(err_fd, 11);
        }
        let exe = match look_up(plan) {
            Ok(i) => &plan.candidates[i],
            Err((stage, errno)) => fail_with(err_fd, stage, errno),
        };
        // From here on `args` may be gone (the agent runs on after
        // READY): only these pointers into the plan's heap strings.
        let (exe, argv, envp) = (
            exe.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        if let Some(go) = args.go_fd {
            wait_for_start(go, err_fd);
        }
        let errno = raw::execve(exe, argv, envp);
        fail_with(err_fd, 12, errno)
    }
}

/// In the child: groups, gid, uid, by raw system calls. glibc's
/// `setgroups`/`setgid`/`setuid` change every thread of the process
/// (`__nptl_setxid`: a signal to each thread it knows, then a wait); after
/// a raw `clone` the child's glibc still knows the agent's threads, and in
/// a new PID namespace the agent's main thread's tid (1 in the guest) is
/// the child itself, so glibc signalled itself forever. The child has one
/// thread: the raw calls are all it needs.
///
/// # Safety
/// Only in the forked child (async-signal-safe calls only).
unsafe fn set_ids(plan: &Plan, err_fd: RawFd) {
    let calls: [(libc::c_long, libc::c_long, libc::c_long, u32); 3] = [
        (
            libc::SYS_setgroups,
            plan.groups.len() as libc::c_long,
            plan.groups.as_ptr() as libc::c_long,
            7,
        ),
        (libc::SYS_setgid, libc::c_long::from(plan.gid), 0, 8),
        (libc::SYS_setuid, libc::c_long::from(plan.uid), 0, 9),
    ];
    for (nr, a, b, stage) in calls {
        // SAFETY: a raw system call; setgroups reads `plan.groups`, which
        // lives as long as the child.
        if unsafe { libc::syscall(nr, a, b) } != 0 {
            fail(err_fd, stage);
        }
    }
}

/// In the child: the stdio descriptors onto 0, 1 and 2 (and the pty as the
/// controlling terminal).
///
/// # Safety
/// Only in the forked child (async-signal-safe calls only).
unsafe fn child_stdio(stdio: &ChildStdio, err_fd: RawFd) {
    match *stdio {
        ChildStdio::Tty { slave } => {
            // SAFETY: an ioctl on a descriptor the child owns.
            if unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) } != 0 {
                fail(err_fd, 3);
            }
            for fd in 0..3 {
                if !move_fd(slave, fd) {
                    fail(err_fd, 4);
                }
            }
        }
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            // Descriptors below 3 would be clobbered by an earlier dup2;
            // the agent keeps 0-2 open (on /dev/null at worst), so the
            // stdio descriptors are always >= 3 or already in place.
            if !move_fd(stdin, 0) || !move_fd(stdout, 1) || !move_fd(stderr, 2) {
                fail(err_fd, 4);
            }
        }
    }
}

/// In the child: the mounts it makes itself (from inside its PID
/// namespace), in order.
///
/// # Safety
/// Only in the forked child (async-signal-safe calls only).
unsafe fn child_mounts(mounts: &[ChildMount], err_fd: RawFd) {
    for m in mounts {
        let data = m.data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
        // SAFETY: NUL-terminated strings that `mounts` owns.
        let done = unsafe {
            libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                data.cast(),
            )
        };
        if done != 0 {
            fail(err_fd, STAGE_MOUNT);
        }
    }
}

/// In the child: reports [`READY`], then blocks until the agent writes the
/// `start` byte on `go`; exits (running nothing) if the agent lets go
/// without it.
///
/// # Safety
/// Only in the forked child (async-signal-safe calls only).
unsafe fn wait_for_start(go: RawFd, err_fd: RawFd) {
    report(err_fd, READY, 0);
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: a one-byte read into a local.
        match unsafe { raw::read(go, &mut byte) } {
            1 => return,
            // The agent let go without `start` (shutdown): run nothing.
            // SAFETY: exit_group does not return.
            0 => unsafe { raw::exit_group(255) },
            n if n == -(libc::EINTR as isize) => continue,
            n => fail_with(err_fd, STAGE_START, -n as i32),
        }
    }
}

/// The system calls the child makes after it reported READY, without
/// libc's `errno`: the child shares the memory, and so the thread-local
/// `errno`, of the agent thread that cloned it, which runs on meanwhile.
/// They return `-errno` on failure, as the kernel does.
mod raw {
    use std::arch::asm;

    /// # Safety
    /// A Linux x86-64 system call with three arguments.
    unsafe fn syscall3(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
        let ret: isize;
        // SAFETY: the `syscall` instruction clobbers rcx and r11 and
        // returns in rax; the caller vouches for the arguments.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// read(2) into `buf`.
    pub unsafe fn read(fd: libc::c_int, buf: &mut [u8]) -> isize {
        // SAFETY: `buf` is writable for its length.
        unsafe { transfer(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) }
    }

    /// write(2) of `buf`.
    pub unsafe fn write(fd: libc::c_int, buf: &[u8]) -> isize {
        // SAFETY: `buf` is readable for its length.
        unsafe { transfer(libc::SYS_write, fd, buf.as_ptr(), buf.len()) }
    }

    /// read(2) or write(2) (`nr`) of `len` bytes at `buf`.
    ///
    /// # Safety
    /// `buf` is valid for `len` bytes in the call's direction.
    unsafe fn transfer<T>(nr: libc::c_long, fd: libc::c_int, buf: *const T, len: usize) -> isize {
        // SAFETY: the caller vouches for `buf`.
        unsafe { syscall3(nr, fd as usize, buf as usize, len) }
    }

    /// execve(2); returns only on failure, with the errno.
    pub unsafe fn execve(
        path: *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
    ) -> i32 {
        // SAFETY: NUL-terminated path, NULL-terminated arrays (the
        // caller's plan).
        let r = unsafe {
            syscall3(
                libc::SYS_execve,
                path as usize,
                argv as usize,
                envp as usize,
            )
        };
        -r as i32
    }

    /// exit_group(2).
    pub unsafe fn exit_group(code: libc::c_int) -> ! {
        // SAFETY: exit_group does not return.
        unsafe {
            syscall3(libc::SYS_exit_group, code as usize, 0, 0);
        }
        unreachable_exit()
    }

    fn unreachable_exit() -> ! {
        loop {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_tunables_are_passed_on() {
        let t = Some("glibc.cpu.hwcaps=-AVX2");
        assert_eq!(with_tunables(&["A=1".into()], None), vec!["A=1"]);
        assert_eq!(
            with_tunables(&["A=1".into()], t),
            vec!["A=1", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"]
        );
        assert_eq!(
            with_tunables(&["GLIBC_TUNABLES=glibc.malloc.check=3".into()], t),
            vec!["GLIBC_TUNABLES=glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX2"]
        );
        assert_eq!(
            with_tunables(&["GLIBC_TUNABLES=".into()], t),
            vec!["GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"]
        );
    }

    #[test]
    fn plan_resolves_path_candidates() {
        let spec = ProcessSpec {
            args: vec!["sh".into()],
            env: vec!["PATH=/a:/b/".into()],
            ..Default::default()
        };
        let plan = Plan::new(&spec, Path::new("/")).unwrap();
        let c: Vec<_> = plan
            .candidates
            .iter()
            .map(|c| c.to_str().unwrap().to_string())
            .collect();
        assert_eq!(c, vec!["/a/sh", "/b/sh"]);
        assert!(plan.root.is_none());
    }

    #[test]
    fn plan_rejects_bad_input() {
        let empty = ProcessSpec::default();
        assert!(Plan::new(&empty, Path::new("/")).is_err());
        let nul = ProcessSpec {
            args: vec!["a\0b".into()],
            ..Default::default()
        };
        assert!(Plan::new(&nul, Path::new("/")).is_err());
        let rel = ProcessSpec {
            args: vec!["a".into()],
            cwd: "tmp".into(),
            ..Default::default()
        };
        assert!(Plan::new(&rel, Path::new("/")).is_err());
        let rl = ProcessSpec {
            args: vec!["a".into()],
            rlimits: vec![crate::protocol::Rlimit {
                kind: "RLIMIT_BOGUS".into(),
                hard: 1,
                soft: 1,
            }],
            ..Default::default()
        };
        assert!(Plan::new(&rl, Path::new("/")).is_err());
    }
}
