//! The process table: every process started by `start`/`exec`, its state and
//! its exit, and the waiters on it.

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::error::AgentError;
use super::reaper::RawExit;
use super::spawn::Spawned;
use crate::protocol::{ProcessExit, ProcessId};

/// A created process that waits for `start`: spawned and set up by
/// `create`, blocked before `execve` until [`Spawned::release`].
pub struct Pending {
    /// The waiting child.
    pub child: Spawned,
}

/// An exit as the reaper saw it, and whether the guest's OOM killer had
/// killed a process of the container by then.
type Exit = (RawExit, bool);

enum State {
    /// Spawned by `create`, waiting for `start` (`None` while `start`
    /// releases it).
    Created(Option<Box<Pending>>),
    /// Being forked or released; an exit seen meanwhile is parked here.
    Starting(Option<Exit>),
    Running,
    Exited(ProcessExit),
}

struct Entry {
    pid: i32,
    state: State,
    tty: Option<Arc<File>>,
    cpu_ns: (u64, u64),
}

#[derive(Default)]
struct Inner {
    next_id: ProcessId,
    procs: HashMap<ProcessId, Entry>,
}

/// Owner of the processes; exits are reported to `exits` (the notifier).
pub struct ProcessTable {
    inner: Mutex<Inner>,
    changed: Condvar,
    exits: Mutex<Sender<ProcessExit>>,
}

fn exit_of(process_id: ProcessId, raw: &RawExit, oom_killed: bool) -> ProcessExit {
    let status = raw.status;
    let (exit_code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (Some(255), None)
    };
    ProcessExit {
        process_id,
        pid: raw.pid,
        exit_code,
        signal,
        oom_killed,
    }
}

impl ProcessTable {
    /// An empty table reporting exits to `exits`.
    pub fn new(exits: Sender<ProcessExit>) -> Self {
        ProcessTable {
            inner: Mutex::new(Inner {
                next_id: 1,
                procs: HashMap::new(),
            }),
            changed: Condvar::new(),
            exits: Mutex::new(exits),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, state: State, tty: Option<Arc<File>>) -> ProcessId {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.procs.insert(
            id,
            Entry {
                pid: 0,
                state,
                tty,
                cpu_ns: (0, 0),
            },
        );
        id
    }

    /// Adds a process about to be forked.
    pub fn add_starting(&self, tty: Option<Arc<File>>) -> ProcessId {
        self.insert(State::Starting(None), tty)
    }

    /// Takes the pending spec of a created process and marks it starting.
    pub fn take_pending(&self, id: ProcessId) -> Result<Pending, AgentError> {
        let mut inner = self.lock();
        let entry = inner
            .procs
            .get_mut(&id)
            .ok_or(AgentError::NoSuchProcess(id))?;
        match &mut entry.state {
            State::Created(pending) => {
                let p = pending
                    .take()
                    .ok_or_else(|| AgentError::InvalidState("process is being started".into()))?;
                entry.state = State::Starting(None);
                Ok(*p)
            }
            State::Exited(_) => Err(AgentError::InvalidState(
                "the container's process has exited".into(),
            )),
            _ => Err(AgentError::InvalidState("process already started".into())),
        }
    }

    /// `create` spawned the process, which now waits for `start`; an exit
    /// parked meanwhile is reported (and the waiting child let go).
    pub fn mark_created(&self, id: ProcessId, pending: Pending) {
        let parked = {
            let mut inner = self.lock();
            let Some(entry) = inner.procs.get_mut(&id) else {
                return;
            };
            entry.pid = pending.child.pid;
            match std::mem::replace(&mut entry.state, State::Created(Some(Box::new(pending)))) {
                State::Starting(parked) => parked,
                other => {
                    entry.state = other;
                    None
                }
            }
        };
        if let Some((raw, oom_killed)) = parked {
            self.on_exit(id, raw, oom_killed);
        }
    }

    /// Removes a process whose exec failed (its early exit is dropped).
    pub fn remove(&self, id: ProcessId) {
        self.lock().procs.remove(&id);
        self.changed.notify_all();
    }

    /// The forked child exec'd: record its pid; report an exit parked meanwhile.
    pub fn mark_running(&self, id: ProcessId, pid: i32) {
        let parked = {
            let mut inner = self.lock();
            let Some(entry) = inner.procs.get_mut(&id) else {
                return;
            };
            entry.pid = pid;
            match std::mem::replace(&mut entry.state, State::Running) {
                State::Starting(parked) => parked,
                other => {
                    entry.state = other;
                    None
                }
            }
        };
        if let Some((raw, oom_killed)) = parked {
            self.on_exit(id, raw, oom_killed);
        }
    }

    /// Called by the reaper with the process's exit (`oom_killed`: see
    /// [`ProcessExit::oom_killed`]).
    pub fn on_exit(&self, id: ProcessId, raw: RawExit, oom_killed: bool) {
        let exit = {
            let mut inner = self.lock();
            let Some(entry) = inner.procs.get_mut(&id) else {
                return;
            };
            if let State::Starting(parked) = &mut entry.state {
                *parked = Some((raw, oom_killed));
                return;
            }
            let exit = exit_of(id, &raw, oom_killed);
            entry.pid = raw.pid;
            entry.cpu_ns = (raw.user_ns, raw.system_ns);
            entry.state = State::Exited(exit.clone());
            exit
        };
        self.changed.notify_all();
        if let Ok(tx) = self.exits.lock() {
            let _ = tx.send(exit);
        }
    }

    /// Blocks until the process has exited.
    pub fn wait(&self, id: ProcessId) -> Result<ProcessExit, AgentError> {
        let mut inner = self.lock();
        loop {
            match inner.procs.get(&id) {
                None => return Err(AgentError::NoSuchProcess(id)),
                Some(Entry {
                    state: State::Exited(exit),
                    ..
                }) => return Ok(exit.clone()),
                Some(_) => {}
            }
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The pid of a running process; errors for unknown, not started or
    /// exited ones.
    pub fn running_pid(&self, id: ProcessId) -> Result<i32, AgentError> {
        let inner = self.lock();
        let entry = inner.procs.get(&id).ok_or(AgentError::NoSuchProcess(id))?;
        match entry.state {
            State::Running if entry.pid > 0 => Ok(entry.pid),
            State::Exited(_) => Err(AgentError::InvalidState(format!("process {id} has exited"))),
            _ => Err(AgentError::InvalidState(format!(
                "process {id} is not started"
            ))),
        }
    }

    /// The pty master of a process.
    pub fn tty(&self, id: ProcessId) -> Result<Arc<File>, AgentError> {
        let inner = self.lock();
        let entry = inner.procs.get(&id).ok_or(AgentError::NoSuchProcess(id))?;
        entry
            .tty
            .clone()
            .ok_or_else(|| AgentError::InvalidState(format!("process {id} has no terminal")))
    }

    /// `(processId, pid)` of every running process.
    pub fn running(&self) -> Vec<(ProcessId, i32)> {
        self.lock()
            .procs
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Running) && e.pid > 0)
            .map(|(id, e)| (*id, e.pid))
            .collect()
    }

    /// Pids of every process that has not exited: running ones and a
    /// created one waiting for `start`.
    pub fn live_pids(&self) -> Vec<i32> {
        self.lock()
            .procs
            .values()
            .filter(|e| matches!(e.state, State::Running | State::Created(_)) && e.pid > 0)
            .map(|e| e.pid)
            .collect()
    }

    /// CPU time (user ns, system ns) of exited processes.
    pub fn exited_cpu_ns(&self) -> (u64, u64) {
        self.lock().procs.values().fold((0, 0), |(u, s), e| {
            (u.saturating_add(e.cpu_ns.0), s.saturating_add(e.cpu_ns.1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pid: i32, status: i32) -> RawExit {
        RawExit {
            pid,
            status,
            user_ns: 1,
            system_ns: 2,
        }
    }

    #[test]
    fn exit_parked_while_starting_is_reported_once_running() {
        let (tx, rx) = std::sync::mpsc::channel();
        let table = ProcessTable::new(tx);
        let id = table.add_starting(None);
        table.on_exit(id, raw(42, 7 << 8), true);
        assert!(rx.try_recv().is_err());
        table.mark_running(id, 42);
        let exit = rx.try_recv().unwrap();
        assert_eq!(exit.exit_code, Some(7));
        assert!(exit.oom_killed);
        assert_eq!(table.wait(id).unwrap(), exit);
        assert_eq!(table.exited_cpu_ns(), (1, 2));
    }

    #[test]
    fn removed_process_ignores_its_exit() {
        let (tx, rx) = std::sync::mpsc::channel();
        let table = ProcessTable::new(tx);
        let id = table.add_starting(None);
        table.remove(id);
        table.on_exit(id, raw(1, 9), false);
        assert!(rx.try_recv().is_err());
        assert!(matches!(table.wait(id), Err(AgentError::NoSuchProcess(_))));
    }

    #[test]
    fn signal_status_is_decoded() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let table = ProcessTable::new(tx);
        let id = table.add_starting(None);
        table.mark_running(id, 5);
        table.on_exit(id, raw(5, libc::SIGKILL), false);
        let exit = table.wait(id).unwrap();
        assert_eq!((exit.exit_code, exit.signal), (None, Some(9)));
    }
}
