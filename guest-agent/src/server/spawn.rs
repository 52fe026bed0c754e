//! Starting a container process: fork, set up, exec.
//!
//! Everything the child needs (argv, envp, candidate paths for the `PATH`
//! lookup, ids, limits) is prepared in the parent as a [`Plan`], because
//! after `fork` in a multi-threaded process the child may only make
//! async-signal-safe calls: it runs raw system calls on prepared pointers and
//! never allocates. A failure in the child is written as `(stage, errno)` to a
//! close-on-exec pipe and the child `_exit(127)`s; an empty read means the
//! exec succeeded. The child is reaped by [`reaper`](super::reaper), never
//! here.
//!
//! Order in the child (as runc): joining the container's cgroup (writing `0`
//! to its `cgroup.procs`, opened by the parent, so the child and everything
//! it will fork are in the group before any of the container's code runs),
//! signal mask and SIGPIPE reset, `setsid`,
//! controlling tty / stdio, `chroot` + `chdir("/")`, rlimits (before dropping
//! privileges, so hard limits can be raised), `setgroups`/`setgid`/`setuid`,
//! `umask`, `chdir(cwd)`, `PR_SET_NO_NEW_PRIVS`, `execve`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

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

const STAGES: [&str; 14] = [
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
];

/// Everything the child needs, prepared before `fork`.
pub struct Plan {
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
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

/// The paths `execve` tries for `arg0`, as execvp(3) would: `arg0` itself
/// when it has a `/`, else `arg0` in each directory of `PATH` (from `env`,
/// or [`DEFAULT_PATH`]).
fn exec_candidates(arg0: &str, env: &[String]) -> Result<Vec<CString>, AgentError> {
    if arg0.contains('/') {
        return Ok(vec![cstring("process.args[0]", arg0)?]);
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
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

/// Forks and execs `plan` with `stdio`, registering `route` with the reaper.
/// With `cgroup_procs` (an open, writable `cgroup.procs` of a cgroup v2
/// group) the child joins that group first. Returns the child's pid once
/// `execve` succeeded, or why it failed.
pub fn spawn(
    plan: &Plan,
    stdio: &ChildStdio,
    cgroup_procs: Option<RawFd>,
    route: ExitRoute,
) -> Result<i32, AgentError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(AgentError::last_os("pipe2"));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors.
    let (err_read, err_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pid = reaper::spawn_registered(
        || {
            // SAFETY: the child only runs `child_main`, which makes raw system
            // calls on memory prepared before the fork and never returns.
            match unsafe { libc::fork() } {
                -1 => Err(std::io::Error::last_os_error()),
                0 => child_main(plan, stdio, cgroup_procs, err_write.as_raw_fd()),
                pid => Ok(pid),
            }
        },
        route,
    )
    .map_err(|e| AgentError::from_io("fork", &e))?;
    drop(err_write);
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled part of a local buffer.
        let n = unsafe {
            libc::read(
                err_read.as_raw_fd(),
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
    if got == 0 {
        return Ok(pid);
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Err(AgentError::ExecFailed {
        stage: STAGES.get(stage).copied().unwrap_or("unknown"),
        errno: if got == 8 { errno } else { libc::EIO },
    })
}

/// Reports `(stage, errno)` and exits; async-signal-safe.
fn fail(err_fd: RawFd, stage: u32) -> ! {
    // SAFETY: errno location is thread-local and valid; write/_exit are
    // async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&stage.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
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

fn child_main(plan: &Plan, stdio: &ChildStdio, cgroup_procs: Option<RawFd>, err_fd: RawFd) -> ! {
    // SAFETY: runs in the freshly forked child: only async-signal-safe raw
    // system calls on pointers into `plan`, which the fork copied; every
    // failure ends in `fail`, success in execve.
    unsafe {
        if let Some(fd) = cgroup_procs {
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
        child_stdio(stdio, err_fd);
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
            if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0 {
                fail(err_fd, 7);
            }
            if libc::setgid(plan.gid) != 0 {
                fail(err_fd, 8);
            }
            if libc::setuid(plan.uid) != 0 {
                fail(err_fd, 9);
            }
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
        exec_first(plan, err_fd)
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

/// In the child: `execve` of each candidate path in turn, as execvp(3);
/// returns only through `fail`.
///
/// # Safety
/// Only in the forked child (async-signal-safe calls only).
unsafe fn exec_first(plan: &Plan, err_fd: RawFd) -> ! {
    let mut first_error = libc::ENOENT;
    for candidate in &plan.candidates {
        // SAFETY: NUL-terminated strings and null-terminated pointer
        // arrays that `plan` owns; execve returns only on failure.
        let errno = unsafe {
            libc::execve(
                candidate.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            *libc::__errno_location()
        };
        // Like execvp: remember EACCES, keep looking past ENOENT/ENOTDIR.
        if errno != libc::ENOENT && errno != libc::ENOTDIR && first_error == libc::ENOENT {
            first_error = errno;
        }
    }
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = first_error };
    fail(err_fd, 12)
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
