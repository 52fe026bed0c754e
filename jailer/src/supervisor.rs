//! The jailer process after the VMM started: it forwards the usual
//! termination signals to the VMM, waits for it and exits with its status
//! (128 + N when it was killed by signal N), as a shell does.

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals forwarded to the VMM.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The signals the jailer blocks (and takes with `sigwait`) while it
/// supervises: [`FORWARDED`] and `SIGCHLD`.
pub fn supervised_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks [`supervised_set`] (before the fork, so that no signal is lost
/// in between); returns the previous mask, which the child restores.
pub fn block() -> nix::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&supervised_set()),
        Some(&mut old),
    )?;
    Ok(old)
}

/// The exit status that reports `status` (None while it runs).
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => {
            if sig == nix::sys::signal::Signal::SIGSYS {
                // Said on the jailer's stderr, so that whoever started it
                // sees why: the VMM's own filters kill with SIGSYS.
                eprintln!(
                    "capsa-jailer: the VMM was killed by SIGSYS: it made a system call that \
                     its seccomp filter does not allow (the kernel log names it: \
                     type=1326 ... syscall=N; CAPSA_SECCOMP=trap or log to diagnose)"
                );
            }
            Some(128 + sig as i32)
        }
        _ => None,
    }
}

/// Forwards signals to `child` until it exits; returns its exit code.
pub fn wait_forwarding(child: Pid) -> i32 {
    let set = supervised_set();
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return code;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("capsa-jailer: error: waiting for the VMM (pid {child}): {e}");
                return 1;
            }
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = kill(child, sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_a_shell() {
        let pid = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
