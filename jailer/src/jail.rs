//! One jailed start, step by step (docs/jailer.md says the same in prose).
//!
//! The jailer forks once. The parent stays root in the host's namespaces:
//! it builds what lives on the host (the jail directory, the cgroups),
//! learns through a close-on-exec pipe whether the child reached `execve`,
//! undoes everything when it did not, and otherwise writes the pid file
//! and supervises (or, with `--daemonize`, exits). The child jails itself
//! (cgroups, namespaces, mounts, `pivot_root`, rlimits, uid/gid, seccomp)
//! and execs the VMM; a failure is written to the pipe as text.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult, Pid};

use capsa_cgroup::Mounts;

use crate::cgroup::{self, CgroupPlan};
use crate::chroot::{self, DeviceNode, JailPaths};
use crate::cli::{BindMount, ExitMarker, JailArgs};
use crate::rlimits::{self, ResourceLimit};
use crate::rollback::Rollback;
use crate::seccomp::{self, Filters};
use crate::{env, fds, namespaces, privileges, supervisor};

/// Everything the child needs, computed and checked before anything is
/// created on the host.
struct Plan {
    paths: JailPaths,
    exec_file: PathBuf,
    /// The exec file, opened on the host (`O_PATH`): the child execs it
    /// through this descriptor after `pivot_root`, so the jail's root can
    /// be `noexec`.
    exec_fd: OwnedFd,
    uid: u32,
    gid: u32,
    cgroups: Option<CgroupPlan>,
    devices: Vec<DeviceNode>,
    binds: Vec<BindMount>,
    proc: bool,
    netns: Option<(PathBuf, OwnedFd)>,
    new_net_ns: bool,
    limits: Vec<ResourceLimit>,
    keep_fds: Vec<i32>,
    new_pid_ns: bool,
    new_ipc_ns: bool,
    daemonize: bool,
    exit_markers: Vec<ExitMarker>,
    dev_null: Option<OwnedFd>,
    argv: Vec<std::ffi::CString>,
    envp: Vec<std::ffi::CString>,
    filters: Filters,
}

/// Runs the jailer's main job; returns the jailer's exit code (the VMM's
/// status, or 0 with `--daemonize`).
pub fn run(args: JailArgs) -> Result<i32> {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o022) };
    fds::close_inherited(&args.keep_fds)?;
    let plan = plan(args)?;

    let mut rollback = Rollback::default();
    let exec_bound = chroot::prepare(
        &chroot::Prepare {
            paths: &plan.paths,
            exec_file: &plan.exec_file,
            uid: plan.uid,
            gid: plan.gid,
            binds: &plan.binds,
            proc: plan.proc,
        },
        &mut rollback,
    )?;
    if let Some(cg) = &plan.cgroups {
        cg.create(&mut rollback)?;
    }

    // SIGCHLD must reach us even if our caller ignored it.
    // SAFETY: restores the default disposition; no handler runs.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl) }
        .context("resetting SIGCHLD")?;
    let old_mask = supervisor::block().context("blocking signals")?;
    if plan.new_pid_ns {
        namespaces::new_pid_ns_for_children()?;
    }
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    let parent_pid = nix::unistd::getpid();

    // SAFETY: the jailer is single-threaded here, so the child may run
    // any code.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            // The parent owns the rollback; this copy must never undo.
            rollback.commit();
            drop(err_read);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(&plan, exec_bound, &old_mask, parent_pid)
            }));
            let message = match result {
                Ok(e) => format!("{e:#}"),
                Err(_) => "the jailer's child panicked".to_owned(),
            };
            let mut w = std::fs::File::from(err_write);
            let _ = w.write_all(message.as_bytes());
            // SAFETY: ends the child without unwinding into the parent's
            // code or running destructors twice.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop(err_write);
            let mut message = String::new();
            let _ = std::fs::File::from(err_read).read_to_string(&mut message);
            if !message.is_empty() {
                let _ = nix::sys::wait::waitpid(child, None);
                rollback.undo();
                return Err(anyhow!(message));
            }
            rollback.commit();
            parent_after_exec(&plan, child)
        }
    }
}

/// Checks and computes everything before the host is touched.
fn plan(args: JailArgs) -> Result<Plan> {
    let id = args.id.context("--id is required")?;
    let exec_file = args.exec_file.context("--exec-file is required")?;
    let uid = args.uid.context("--uid is required")?;
    let gid = args.gid.context("--gid is required")?;
    let paths = JailPaths::new(&args.chroot_base_dir, &exec_file, &id)?;
    chroot::check_exec_file(&exec_file, &paths, &args.binds)?;
    let exec_fd = nix::fcntl::open(
        &exec_file,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("--exec-file {}: cannot open", exec_file.display()))?;
    let cgroups = if args.cgroups.is_empty() {
        None
    } else {
        let mounts = Mounts::read()?;
        let version = match args.cgroup_version {
            Some(v) => v,
            None => cgroup::detect_version(&mounts).context("--cgroup-version")?,
        };
        Some(CgroupPlan::new(
            version,
            &mounts,
            &args.parent_cgroup,
            &id,
            &args.cgroups,
        )?)
    };
    let devices = chroot::device_nodes(args.tun)?;
    let netns = match args.netns {
        Some(p) => {
            let fd = namespaces::open_netns(&p)?;
            Some((p, fd))
        }
        None => None,
    };
    let dev_null = if args.daemonize {
        Some(
            nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .context("--daemonize: cannot open /dev/null")?,
        )
    } else {
        None
    };
    Ok(Plan {
        argv: env::argv(&paths.exec_in_jail(), &args.exec_args)?,
        envp: env::envp(&args.envs)?,
        filters: seccomp::compile(args.seccomp_action, args.no_fork)?,
        limits: rlimits::effective(&args.resource_limits),
        paths,
        exec_file,
        exec_fd,
        uid,
        gid,
        cgroups,
        devices,
        binds: args.binds,
        proc: !args.no_proc,
        netns,
        new_net_ns: args.new_net_ns,
        keep_fds: args.keep_fds,
        new_pid_ns: args.new_pid_ns,
        new_ipc_ns: args.new_ipc_ns,
        daemonize: args.daemonize,
        exit_markers: args.exit_markers,
        dev_null,
    })
}

/// The child: jails itself and execs; returns only with the error.
fn child(plan: &Plan, exec_bound: bool, old_mask: &SigSet, parent: Pid) -> anyhow::Error {
    match child_steps(plan, exec_bound, old_mask, parent) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn child_steps(
    plan: &Plan,
    exec_bound: bool,
    old_mask: &SigSet,
    parent: Pid,
) -> Result<std::convert::Infallible> {
    // Signals: default dispositions, the caller's mask back.
    for sig in Signal::iterator() {
        if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: restores default dispositions; no handler is set.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None)
        .context("restoring the signal mask")?;

    if let Some(cg) = &plan.cgroups {
        cg.join()?;
    }
    if let Some((path, fd)) = &plan.netns {
        namespaces::join_netns(fd, path)?;
    }
    if plan.new_net_ns {
        namespaces::new_net_ns()?;
    }
    if plan.new_ipc_ns {
        namespaces::new_ipc_ns()?;
    }
    namespaces::new_private_mount_ns()?;
    chroot::enter(&chroot::Enter {
        paths: &plan.paths,
        devices: &plan.devices,
        binds: &plan.binds,
        exec_bind: exec_bound.then_some(plan.exec_file.as_path()),
        uid: plan.uid,
        gid: plan.gid,
    })?;
    if plan.proc {
        chroot::mount_proc()?;
    }
    rlimits::apply(&plan.limits)?;
    // A session of its own, always: the VMM has no controlling terminal,
    // so it can neither be stopped nor hung up by the caller's terminal
    // nor push input into it (TIOCSTI works only on one's controlling
    // terminal). The jailer stays in the caller's session and forwards
    // the terminal's signals.
    nix::unistd::setsid().context("setsid")?;
    if let Some(null) = &plan.dev_null {
        for target in [0, 1, 2] {
            // SAFETY: dup2 onto the standard descriptors, which this
            // process owns.
            if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
                return Err(std::io::Error::last_os_error())
                    .context("--daemonize: redirecting stdio to /dev/null");
            }
        }
    }
    fds::keep_across_exec(&plan.keep_fds)?;
    privileges::drop_to(plan.uid, plan.gid)?;
    if !plan.daemonize {
        // The VMM dies with the jailer (set after the uid change, which
        // clears it). In a new pid namespace the parent is outside it and
        // getppid() is 0.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
        let ppid = nix::unistd::getppid();
        let expected = if plan.new_pid_ns {
            Pid::from_raw(0)
        } else {
            parent
        };
        if ppid != expected {
            anyhow::bail!("the jailer exited before the VMM started");
        }
    }
    seccomp::install(&plan.filters)?;
    // execveat(fd, "", AT_EMPTY_PATH): the binary's own mount on the host
    // decides whether it may run, not the jail's noexec root.
    let e = nix::unistd::execveat(
        &plan.exec_fd,
        c"",
        &plan.argv,
        &plan.envp,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .unwrap_err();
    Err(anyhow!(
        "execveat {} (as {} in the jail): {e}",
        plan.exec_file.display(),
        plan.paths.exec_in_jail().display()
    ))
}

/// The VMM runs: write its pid, then supervise or (daemonize) leave.
fn parent_after_exec(plan: &Plan, child: Pid) -> Result<i32> {
    if let Err(e) = std::fs::write(&plan.paths.pid_file, format!("{child}\n")) {
        eprintln!(
            "capsa-jailer: warning: cannot write {}: {e}",
            plan.paths.pid_file.display()
        );
    }
    if plan.daemonize {
        return Ok(0);
    }
    let code = supervisor::wait_forwarding(child);
    relay_exit_markers(&plan.paths.root, &plan.exit_markers);
    Ok(code)
}

/// `--exit-marker`: for each marker whose NAME the VMM left in the jail's
/// root as a regular file, creates its empty host file. The root is the
/// VMM's to write: its entries are only `lstat`ed, never opened or followed.
fn relay_exit_markers(root: &std::path::Path, markers: &[ExitMarker]) {
    use std::os::unix::fs::OpenOptionsExt;
    for m in markers {
        let made = std::fs::symlink_metadata(root.join(&m.name)).is_ok_and(|md| md.is_file());
        if !made {
            continue;
        }
        // O_CREAT|O_EXCL never follows a symlink at PATH.
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&m.path);
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => eprintln!(
                "capsa-jailer: warning: --exit-marker {}:{}: {e}",
                m.name,
                m.path.display()
            ),
        }
    }
}
