//! The one place that reaps children: `wait4(-1)` in a dedicated thread.
//!
//! PID 1 inherits every orphan of the guest, so it must reap any child; but a
//! status reaped by a blind `waitpid(-1)` would be lost for the process that
//! `wait` is asking about. So all reaping happens here and each status is
//! routed to the callback registered for its pid by [`spawn_registered`];
//! statuses of unknown pids (orphans) only add to the orphan CPU counters.
//!
//! The registry is process-global (there is one set of children per
//! process), which also keeps several agents in one test process from
//! stealing each other's statuses. A callback is registered under the same
//! lock that is held across `fork`, so the reaper can never see a pid before
//! its route. When there are no children the thread sleeps on a condvar that
//! every spawn signals: no polling, no SIGCHLD handler.

use std::collections::HashMap;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock};

/// What the reaper learnt about one exited child.
#[derive(Debug, Clone, Copy)]
pub struct RawExit {
    /// The pid.
    pub pid: i32,
    /// The wait status (see `waitpid(2)`: `WIFEXITED`, `WTERMSIG`, …).
    pub status: i32,
    /// User CPU time of the child and its reaped descendants, ns.
    pub user_ns: u64,
    /// System CPU time of the child and its reaped descendants, ns.
    pub system_ns: u64,
}

/// Called once, on the reaper thread, with the child's exit.
pub type ExitRoute = Box<dyn FnOnce(RawExit) + Send>;

#[derive(Default)]
struct State {
    routes: HashMap<i32, ExitRoute>,
    generation: u64,
    orphan_user_ns: u64,
    orphan_system_ns: u64,
}

struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    static THREAD: Once = Once::new();
    let r = REAPER.get_or_init(|| Reaper {
        state: Mutex::new(State::default()),
        spawned: Condvar::new(),
    });
    THREAD.call_once(|| {
        if let Err(e) = std::thread::Builder::new()
            .name("capsa-reaper".into())
            .spawn(reap_loop)
        {
            crate::agent_log!("cannot start the reaper thread: {e}");
        }
    });
    r
}

fn lock() -> MutexGuard<'static, State> {
    reaper()
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the reaper thread if it is not running yet.
pub fn start() {
    let _ = reaper();
}

/// Runs `fork` (which must return the new child's pid, in the parent) with
/// the reaper's lock held and registers `route` for that pid before anything
/// can reap it.
pub fn spawn_registered(
    fork: impl FnOnce() -> io::Result<i32>,
    route: ExitRoute,
) -> io::Result<i32> {
    let r = reaper();
    let mut state = lock();
    let pid = fork()?;
    state.routes.insert(pid, route);
    state.generation = state.generation.wrapping_add(1);
    r.spawned.notify_all();
    Ok(pid)
}

/// CPU time (user ns, system ns) of reaped children nobody registered
/// (orphans that PID 1 inherited).
pub fn orphan_cpu_ns() -> (u64, u64) {
    let state = lock();
    (state.orphan_user_ns, state.orphan_system_ns)
}

fn timeval_ns(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add((tv.tv_usec.max(0) as u64).saturating_mul(1000))
}

fn reap_loop() {
    let r = reaper();
    loop {
        let generation = lock().generation;
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 writes it and `status`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals.
        let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
        if pid > 0 {
            let exit = RawExit {
                pid,
                status,
                user_ns: timeval_ns(usage.ru_utime),
                system_ns: timeval_ns(usage.ru_stime),
            };
            let route = {
                let mut state = lock();
                let route = state.routes.remove(&pid);
                if route.is_none() {
                    state.orphan_user_ns = state.orphan_user_ns.saturating_add(exit.user_ns);
                    state.orphan_system_ns = state.orphan_system_ns.saturating_add(exit.system_ns);
                }
                route
            };
            if let Some(route) = route {
                route(exit);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // ECHILD: no children; sleep until the next spawn.
        let mut state = lock();
        while state.generation == generation {
            state = r
                .spawned
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}
