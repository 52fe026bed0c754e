//! A sampling profiler of the guest: where the vCPUs spend their time.
//!
//! Every `interval` on average (each period drawn between half and one and
//! a half of it, see [`Jitter`]), a sampler thread asks each vCPU thread for a sample
//! and kicks it out of `KVM_RUN` with the vCPU kick signal. The vCPU
//! thread, back in its run loop, reads its registers (`KVM_GET_REGS`,
//! `KVM_GET_SREGS`, `KVM_GET_MP_STATE`) and records the instruction
//! pointer, the privilege level and the time since the VMM started (the
//! boot timer's clock), then enters the guest again. At the end of the VM
//! the samples are named with the guest kernel's `System.map`
//! ([`symbols`]) and written as a report ([`report`]).
//!
//! A kick that lands while the vCPU thread is outside `KVM_RUN` (handling
//! an exit) is not lost: the request stays set and the thread takes the
//! sample at the top of its loop, before entering the guest again. Where
//! guest kernel mode is emulated (PVM hosts), the emulator returns to the
//! host between instruction batches, so a kicked vCPU stops within
//! microseconds; each sample costs three ioctls.
//!
//! This is for measuring, not for production: the sampler thread wakes
//! every `interval` and every sample interrupts the guest.

pub mod report;
pub mod symbols;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// What a vCPU was doing when it was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// Running guest code at `rip` with privilege level `cpl` (0 = kernel
    /// mode, 3 = user mode).
    Running {
        /// Instruction pointer (a guest virtual address).
        rip: u64,
        /// Current privilege level (CS.DPL).
        cpl: u8,
    },
    /// An application processor that the guest has not started yet
    /// (`KVM_MP_STATE_UNINITIALIZED` or `INIT_RECEIVED`).
    NotStarted,
    /// The registers could not be read.
    Unknown,
}

/// One sample of one vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Time since the VMM process started.
    pub at: Duration,
    /// vCPU index.
    pub cpu: u8,
    /// CPU time the vCPU's thread had used when the sample was taken
    /// (`CLOCK_THREAD_CPUTIME_ID`). Where guest kernel mode is emulated by
    /// the host, the emulation counts here too, so the difference between
    /// two samples of a vCPU is what the guest's work between them cost
    /// the host, whatever else the host was running.
    pub cpu_time: Duration,
    /// What it was doing.
    pub what: Where,
    /// In kernel mode: the words of the kernel stack above the stack
    /// pointer that look like kernel text addresses, nearest first (at
    /// most [`MAX_STACK_WORDS`]). Most are the return addresses of the
    /// functions that led here; some are stale. This is how the kernel's
    /// own `UNWINDER_GUESS` walks a stack without frame pointers.
    pub stack: Vec<u64>,
}

/// Bytes of kernel stack scanned above the stack pointer, at most (and
/// never past the top of the 16 KiB kernel stack, Linux `THREAD_SIZE`).
pub const STACK_SCAN_BYTES: u64 = 4096;
/// Kernel stacks are 16 KiB, 16 KiB aligned (x86_64 `THREAD_SIZE`).
const THREAD_SIZE: u64 = 16 << 10;
/// Candidates kept per sample.
pub const MAX_STACK_WORDS: usize = 64;

/// The profiler's state shared by the sampler thread and the vCPU threads.
pub struct Profiler {
    interval: Duration,
    start: Instant,
    requested: Vec<AtomicBool>,
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
}

impl Profiler {
    /// A profiler for `vcpus` vCPUs that samples every `interval`, timing
    /// samples from `start`.
    pub fn new(vcpus: u8, interval: Duration, start: Instant) -> Self {
        Self {
            interval: interval.max(Duration::from_millis(1)),
            start,
            requested: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Called by vCPU `cpu`'s thread each time before it enters the guest:
    /// takes a sample when one was asked for. `mem` is the guest memory,
    /// for reading the kernel stack.
    pub fn sample_if_requested(&self, cpu: u8, fd: &VcpuFd, mem: &GuestMemoryMmap) {
        let Some(flag) = self.requested.get(usize::from(cpu)) else {
            return;
        };
        if !flag.swap(false, Ordering::AcqRel) {
            return;
        }
        let at = self.start.elapsed();
        let cpu_time = thread_cpu_time();
        let (what, rsp) = read_where(fd);
        let stack = match (what, rsp) {
            (Where::Running { cpl: 0, .. }, Some(rsp)) => scan_stack(fd, mem, rsp),
            _ => Vec::new(),
        };
        lock(&self.samples).push(Sample {
            at,
            cpu,
            cpu_time,
            what,
            stack,
        });
    }

    /// Starts the sampler thread, which kicks `threads` (the vCPU threads,
    /// in vCPU order) with `signal` every interval until [`Self::stop`]
    /// (under the profiler's seccomp filter, from `filters`),
    /// and rewrites `output`'s report every [`REWRITE_EVERY`], so that a
    /// guest that never ends can be profiled too.
    pub fn start_sampler(
        self: &Arc<Self>,
        threads: Vec<libc::pthread_t>,
        signal: i32,
        output: Arc<ProfileOutput>,
        filters: Arc<crate::seccomp::Filters>,
    ) -> std::io::Result<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("capsa-profiler".into())
            .spawn(move || {
                // Seeded before the filter (std may read the kernel's
                // randomness for it).
                let mut jitter = Jitter::new();
                if let Err(e) = filters.install(crate::seccomp::ThreadKind::Profiler) {
                    tracing::error!("guest profiler: {e}");
                    return;
                }
                let symbols = output.symbols();
                let mut next = Instant::now() + me.interval;
                let mut next_write = Instant::now() + REWRITE_EVERY;
                while !me.stop.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    next += jitter.around(me.interval);
                    for (flag, thread) in me.requested.iter().zip(&threads) {
                        flag.store(true, Ordering::Release);
                        // SAFETY: `thread` is a vCPU thread that the VMM
                        // joins only after it has stopped and joined this
                        // sampler, so the pthread_t is valid; the signal
                        // has a no-op handler installed by the VMM.
                        unsafe { libc::pthread_kill(*thread, signal) };
                    }
                    if Instant::now() >= next_write {
                        next_write += REWRITE_EVERY;
                        if let Ok(symbols) = &symbols {
                            let _ = output.write_with(symbols);
                        }
                    }
                }
            })
    }

    /// Makes the sampler thread return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// The samples taken so far, in the order they were taken.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }
}

/// A profiler together with where its report goes.
pub struct ProfileOutput {
    /// The profiler the vCPU threads feed.
    pub profiler: Arc<Profiler>,
    /// The report file.
    pub path: PathBuf,
    /// The guest kernel (named in the report).
    pub kernel: PathBuf,
    /// The `System.map` that names kernel addresses, if any.
    pub system_map: Option<PathBuf>,
    /// Number of vCPUs.
    pub vcpus: u8,
}

impl ProfileOutput {
    /// The symbols of [`Self::system_map`] (none without one).
    pub fn symbols(&self) -> std::io::Result<symbols::Symbols> {
        match &self.system_map {
            Some(map) => symbols::Symbols::load(map)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", map.display()))),
            None => Ok(symbols::Symbols::default()),
        }
    }

    /// Writes the report of the samples taken so far to [`Self::path`].
    pub fn write(&self) -> std::io::Result<()> {
        self.write_with(&self.symbols()?)
    }

    fn write_with(&self, symbols: &symbols::Symbols) -> std::io::Result<()> {
        let header = report::ReportHeader {
            kernel: &self.kernel,
            system_map: self.system_map.as_deref(),
            interval: self.profiler.interval(),
            vcpus: self.vcpus,
        };
        let text = report::render(&header, symbols, &self.profiler.samples(), TIMELINE_SLICE);
        // Written next to the report and renamed over it, so that a reader
        // never sees half a report.
        let tmp = self.path.with_extension("partial");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

/// How often the sampler thread rewrites the report while the VM runs.
pub const REWRITE_EVERY: Duration = Duration::from_secs(2);

/// Time step of the report's timeline.
pub const TIMELINE_SLICE: Duration = Duration::from_millis(500);

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// What the vCPU is doing, and its stack pointer.
fn read_where(fd: &VcpuFd) -> (Where, Option<u64>) {
    match fd.get_mp_state() {
        Ok(s)
            if s.mp_state == kvm_bindings::KVM_MP_STATE_UNINITIALIZED
                || s.mp_state == kvm_bindings::KVM_MP_STATE_INIT_RECEIVED =>
        {
            return (Where::NotStarted, None)
        }
        _ => {}
    }
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(regs), Ok(sregs)) => (
            Where::Running {
                rip: regs.rip,
                cpl: sregs.cs.dpl,
            },
            Some(regs.rsp),
        ),
        _ => (Where::Unknown, None),
    }
}

/// The words from `rsp` up to [`STACK_SCAN_BYTES`] (or the top of its
/// kernel stack) that lie in the kernel's text mapping, read through the
/// vCPU's page tables (`KVM_TRANSLATE`, one page at a time). Whatever the
/// guest left in its stack or page tables, this only reads guest memory
/// within bounds and stops at the first page that does not translate.
fn scan_stack(fd: &VcpuFd, mem: &GuestMemoryMmap, rsp: u64) -> Vec<u64> {
    const PAGE: u64 = 4096;
    let mut words = Vec::new();
    let Some(top) = (rsp | (THREAD_SIZE - 1)).checked_add(1) else {
        return words;
    };
    let end = top.min(rsp.saturating_add(STACK_SCAN_BYTES));
    let mut addr = rsp & !7;
    while addr < end && words.len() < MAX_STACK_WORDS {
        let chunk_end = ((addr / PAGE) + 1).saturating_mul(PAGE).min(end);
        let phys = match fd.translate_gva(addr) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ => break,
        };
        let mut buf = vec![0u8; (chunk_end - addr) as usize];
        if mem.read_slice(&mut buf, GuestAddress(phys)).is_err() {
            break;
        }
        for word in buf.chunks_exact(8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if (symbols::KERNEL_MAP..symbols::KERNEL_MAP + (1 << 30)).contains(&w) {
                words.push(w);
                if words.len() == MAX_STACK_WORDS {
                    break;
                }
            }
        }
        addr = chunk_end;
    }
    words
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spreads the sampler's periods uniformly over 0.5–1.5 times the
/// interval (the mean stays the interval). A fixed period phase-locks with
/// the guest's own periodic work: with the default 10 ms and the guest's
/// 100 Hz tick, every sample of a restored guest landed in the timer
/// interrupt, which then seemed to take half of its CPU time.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        // A random seed without a crate: std's hasher keys are random.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Jitter(seed | 1)
    }

    /// The next period: `interval` times a uniform factor in [0.5, 1.5).
    fn around(&mut self, interval: Duration) -> Duration {
        // xorshift64 (Marsaglia): statistical quality is all this needs.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(0.5 + unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_periods_stay_within_half_and_one_and_a_half_intervals() {
        let mut j = Jitter::new();
        let interval = Duration::from_millis(10);
        let periods: Vec<Duration> = (0..10_000).map(|_| j.around(interval)).collect();
        assert!(periods
            .iter()
            .all(|p| *p >= interval / 2 && *p < interval * 3 / 2));
        let mean = periods.iter().sum::<Duration>() / periods.len() as u32;
        assert!(mean > Duration::from_micros(9_800) && mean < Duration::from_micros(10_200));
        // Not a fixed period: the spread covers most of the range.
        let (min, max) = (periods.iter().min().unwrap(), periods.iter().max().unwrap());
        assert!(*max - *min > Duration::from_millis(9));
    }

    #[test]
    fn interval_has_a_floor_and_samples_start_empty() {
        let p = Profiler::new(2, Duration::ZERO, Instant::now());
        assert_eq!(p.interval(), Duration::from_millis(1));
        assert!(p.samples().is_empty());
        p.stop();
    }
}
