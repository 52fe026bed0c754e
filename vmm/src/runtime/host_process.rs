//! Host processes known by pid *and* start time, so that a later process
//! that reuses the pid is never mistaken for (or signalled as) the one
//! `create` started; and the one place that kills a VM's host processes
//! (`create`'s clean-up, `delete`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One host process: its pid (host pid namespace) and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

impl HostProcess {
    /// The process `pid` as it is now; `None` when there is none (a zombie
    /// still counts: it has a start time).
    pub fn of(pid: i32) -> Option<HostProcess> {
        if pid <= 0 {
            return None;
        }
        let (_, start_time) = proc_stat(pid)?;
        Some(HostProcess { pid, start_time })
    }

    /// Whether it is still alive (not a zombie) and still the same process.
    pub fn alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => !matches!(state, 'Z' | 'X' | 'x') && start == self.start_time,
            None => false,
        }
    }

    /// Sends `signal` if it is alive and still the same process; false when
    /// nothing was sent.
    pub fn signal(&self, signal: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: kill(2) with a positive pid has no memory effects.
        unsafe { libc::kill(self.pid, signal) == 0 }
    }
}

/// SIGKILLs each of `processes` that is still the process recorded, and
/// waits up to `timeout` for all of them to be gone.
pub fn kill_and_wait(processes: &[HostProcess], timeout: Duration) {
    for p in processes {
        p.signal(libc::SIGKILL);
    }
    wait_gone(processes, timeout);
}

/// Waits up to `timeout` for all of `processes` to be gone (exited, or
/// zombies); true when they are.
pub fn wait_gone(processes: &[HostProcess], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !processes.iter().any(HostProcess::alive) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `(state, start time)` of `pid` from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of the whole line is index 19 after the name.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        // Signal 0 tests for existence only.
        assert!(me.signal(0));
        let other = HostProcess {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(!other.signal(0));
        assert!(HostProcess::of(0).is_none());
        assert!(HostProcess::of(-1).is_none());
    }

    #[test]
    fn kill_and_wait_ends_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let p = HostProcess::of(child.id() as i32).unwrap();
        kill_and_wait(&[p], Duration::from_secs(5));
        // A killed child stays a zombie until reaped: not alive.
        assert!(!p.alive());
        child.wait().unwrap();
    }
}
