//! A VMM that is pid 1 of its own PID namespace (`capsa-jailer
//! --new-pid-ns`, as `create` starts it) and the signals engines send it.
//!
//! The kernel delivers a signal to the init process of a PID namespace
//! only if that process has a handler for it (pid_namespaces(7); SIGKILL
//! and SIGSTOP from an ancestor namespace always arrive): with the default
//! dispositions, the SIGTERM of `capsa kill` (a created container's VMM
//! stands for its process, as runc's init does) or the one the jailer
//! forwards would be dropped. So such a VMM catches the signals whose
//! default action ends a process and ends as that default would have,
//! with `_exit(128 + N)`: the jailer supervisor, and through it the
//! engine, sees the same status as for a death by signal N (the jailer
//! reports both as 128 + N).
//!
//! Not caught: SIGKILL and SIGSTOP (cannot be); the faults a bad access
//! raises (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS of seccomp): the kernel
//! forces them, and they kill pid 1 too; SIGXFSZ (ignored, see
//! [`crate::builder`]), SIGPIPE (ignored by Rust); the real-time signals,
//! of which the VMM uses `SIGRTMIN` to kick its vCPU threads.

/// The signals a VMM that is pid 1 handles by exiting with 128 + N.
pub const TERMINATING: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
];

extern "C" fn exit_as_killed(signal: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + signal) }
}

/// When this process is pid 1 of its PID namespace, installs the handlers
/// for [`TERMINATING`] (see the module docs); otherwise changes nothing
/// (the default dispositions already end the process). Returns whether
/// it did.
pub fn handle_termination_signals() -> bool {
    if std::process::id() != 1 {
        return false;
    }
    install(TERMINATING);
    true
}

fn install(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: a zeroed sigaction with a plain handler function that
        // only calls _exit; sigaction(2) is sound to call at any time.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = exit_as_killed as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_pid_ns_not_pid_1_keeps_the_default_dispositions() {
        assert!(!handle_termination_signals());
        // SAFETY: reads the current disposition only.
        let current = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut old);
            old.sa_sigaction
        };
        assert_eq!(current, libc::SIG_DFL);
    }

    #[test]
    fn vmm_pid_ns_handled_signal_exits_with_128_plus_n() {
        // In a forked child (the test harness's threads are not copied):
        // install, then raise SIGTERM.
        // SAFETY: the child only calls async-signal-safe functions and
        // exits.
        match unsafe { libc::fork() } {
            0 => {
                install(&[libc::SIGTERM]);
                // SAFETY: raise(3) on this process.
                unsafe {
                    libc::raise(libc::SIGTERM);
                    libc::_exit(0)
                }
            }
            pid => {
                assert!(pid > 0);
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status));
                assert_eq!(libc::WEXITSTATUS(status), 128 + libc::SIGTERM);
            }
        }
    }
}
