//! Pausing the vCPUs for a snapshot: the event loop thread asks, kicks
//! each vCPU thread out of `KVM_RUN` (the same signal that stops them),
//! and each thread completes its last MMIO/PIO exit, saves its own KVM
//! state and parks until it is resumed or stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::snapshot::vcpu::VcpuState;

/// What a parked vCPU left: its state, or why it could not be saved.
pub type Parked = (u8, Result<VcpuState, String>);

/// The pause handshake between the event loop thread and the vCPU threads.
#[derive(Debug, Default)]
pub struct PauseControl {
    requested: AtomicBool,
    parked: Mutex<Vec<Parked>>,
    cond: Condvar,
}

impl PauseControl {
    /// Whether a pause is asked for (read by each vCPU thread at the top
    /// of its loop).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Asks every vCPU to park (the caller then kicks them).
    pub fn request(&self) {
        lock(&self.parked).clear();
        self.requested.store(true, Ordering::Release);
    }

    /// Called by a vCPU thread with its saved state: records it and blocks
    /// until [`PauseControl::resume`], or until `stop` is set and
    /// [`PauseControl::wake`] called.
    pub fn park(&self, parked: Parked, stop: &AtomicBool) {
        let mut list = lock(&self.parked);
        list.push(parked);
        self.cond.notify_all();
        while self.requested() && !stop.load(Ordering::Acquire) {
            list = self.cond.wait(list).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until `count` vCPUs are parked, calling `kick` every
    /// millisecond to bring the others out of `KVM_RUN`; gives up at
    /// `timeout`. Returns the parked vCPUs' states in index order.
    ///
    /// Errors: a vCPU did not park in time (the list of those that did).
    pub fn wait_parked(
        &self,
        count: usize,
        timeout: Duration,
        mut kick: impl FnMut(),
    ) -> Result<Vec<Parked>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut list = lock(&self.parked);
            if list.len() >= count {
                let mut out = std::mem::take(&mut *list);
                out.sort_by_key(|p| p.0);
                return Ok(out);
            }
            if Instant::now() >= deadline {
                let parked: Vec<u8> = list.iter().map(|p| p.0).collect();
                return Err(format!(
                    "only vCPUs {parked:?} of {count} paused within {timeout:?}"
                ));
            }
            drop(list);
            kick();
            let list = lock(&self.parked);
            let _ = self
                .cond
                .wait_timeout(list, Duration::from_millis(1))
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) {
        let mut list = lock(&self.parked);
        list.clear();
        self.requested.store(false, Ordering::Release);
        self.cond.notify_all();
    }

    /// Wakes parked vCPUs so that they see the stop flag.
    pub fn wake(&self) {
        let _list = lock(&self.parked);
        self.cond.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_park_until_resumed_or_stopped() {
        let pause = Arc::new(PauseControl::default());
        let stop = Arc::new(AtomicBool::new(false));
        pause.request();
        let threads: Vec<_> = (0..2u8)
            .map(|i| {
                let (pause, stop) = (pause.clone(), stop.clone());
                std::thread::spawn(move || {
                    while pause.requested() {
                        pause.park((i, Err(format!("cpu {i}"))), &stop);
                    }
                })
            })
            .collect();
        let parked = pause.wait_parked(2, Duration::from_secs(5), || {}).unwrap();
        assert_eq!(parked.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1]);
        pause.resume();
        for t in threads {
            t.join().unwrap();
        }
        pause.request();
        let e = pause
            .wait_parked(1, Duration::from_millis(20), || {})
            .unwrap_err();
        assert!(e.contains("of 1"), "{e}");
        stop.store(true, Ordering::Release);
        pause.wake();
    }
}
