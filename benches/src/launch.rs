//! One VMM process under watch: every line it prints on stdout or stderr
//! with the host time it arrived, its end with the `wait4` resource usage,
//! and its memory sampled from `/proc/PID/smaps_rollup` and `/proc/PID/smaps`
//! while it runs.
//!
//! All times are host `Instant`s; the clock of a launch starts right before
//! `spawn` (fork + exec of the VMM).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// Something the watched process did.
#[derive(Debug, Clone)]
pub enum Event {
    /// A line (without its end of line) and when it arrived.
    Line {
        pipe: Pipe,
        text: String,
        at: Instant,
    },
    /// The process ended.
    Exited { at: Instant, end: ProcessEnd },
}

/// How the process ended, from `wait4`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnd {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// User CPU time, ms.
    pub user_ms: f64,
    /// System CPU time, ms (on a PVM host this includes the emulation of
    /// guest kernel mode, which runs in the host kernel on the vCPU thread).
    pub sys_ms: f64,
    /// Peak resident set, KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

/// Peak memory seen by the sampler.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemorySample {
    /// Samples taken.
    pub samples: u32,
    /// Largest `Rss` of smaps_rollup minus the `Rss` of the guest-memory
    /// mappings, KiB.
    pub overhead_kib: u64,
    /// Total Rss at that sample, KiB.
    pub rss_kib: u64,
    /// Guest memory resident at that sample, KiB.
    pub guest_kib: u64,
    /// Largest total Rss seen, KiB.
    pub rss_max_kib: u64,
    /// Largest resident guest memory seen, KiB.
    pub guest_max_kib: u64,
}

/// A running, watched VMM process.
pub struct Watched {
    pub pid: i32,
    /// When the clock started (right before spawn).
    pub t0: Instant,
    rx: Receiver<Event>,
    /// Every event consumed so far, in order.
    pub seen: Vec<Event>,
    ended: Option<(Instant, ProcessEnd)>,
    done: Arc<AtomicBool>,
    sampler: Option<JoinHandle<MemorySample>>,
}

fn read_lines<R: Read + Send + 'static>(r: R, pipe: Pipe, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if tx.send(Event::Line { pipe, text, at }).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn wait4(pid: i32) -> (i32, libc::rusage) {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    loop {
        // SAFETY: wait4 on our own child, with valid out pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return (-1, ru);
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    (code, ru)
}

fn tv_ms(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Rss of the mappings at least `guest_kib` large (the guest memory: one
/// mapping of the whole RAM in capsa and in QEMU; glibc's 64 MiB malloc
/// arenas stay below a 128 MiB guest), KiB.
fn guest_rss_kib(smaps: &str, guest_kib: u64) -> u64 {
    let mut size = 0;
    let mut guest = 0;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if size >= guest_kib {
                guest += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    guest
}

fn sample_memory(pid: i32, guest_kib: u64, done: Arc<AtomicBool>) -> MemorySample {
    let mut best = MemorySample::default();
    while !done.load(Ordering::Acquire) {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"));
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"));
        if let (Ok(rollup), Ok(smaps)) = (rollup, smaps) {
            if let Some(rss) = kib_field(&rollup, "Rss:") {
                let guest = guest_rss_kib(&smaps, guest_kib);
                best.samples += 1;
                best.rss_max_kib = best.rss_max_kib.max(rss);
                best.guest_max_kib = best.guest_max_kib.max(guest);
                let overhead = rss.saturating_sub(guest);
                if overhead >= best.overhead_kib {
                    best.overhead_kib = overhead;
                    best.rss_kib = rss;
                    best.guest_kib = guest;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    best
}

impl Watched {
    /// Spawns `cmd` (stdin from /dev/null, stdout and stderr watched).
    /// `guest_mib` tells the memory sampler which mappings are guest RAM.
    pub fn spawn(mut cmd: Command, guest_mib: u32) -> anyhow::Result<Watched> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let pid = child.id() as i32;
        let (tx, rx) = channel();
        if let Some(out) = child.stdout.take() {
            read_lines(out, Pipe::Stdout, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            read_lines(err, Pipe::Stderr, tx.clone());
        }
        // The child is reaped by wait4 below, not by `Child`.
        drop(child);
        let done = Arc::new(AtomicBool::new(false));
        let sampler_done = done.clone();
        let sampler = std::thread::spawn(move || {
            sample_memory(pid, u64::from(guest_mib) * 1024, sampler_done)
        });
        let waiter_done = done.clone();
        std::thread::spawn(move || {
            let (code, ru) = wait4(pid);
            let at = Instant::now();
            waiter_done.store(true, Ordering::Release);
            let end = ProcessEnd {
                code,
                user_ms: tv_ms(ru.ru_utime),
                sys_ms: tv_ms(ru.ru_stime),
                max_rss_kib: ru.ru_maxrss as u64,
            };
            let _ = tx.send(Event::Exited { at, end });
        });
        Ok(Watched {
            pid,
            t0,
            rx,
            seen: Vec::new(),
            ended: None,
            done,
            sampler: Some(sampler),
        })
    }

    /// Milliseconds from spawn to `at`.
    pub fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64() * 1e3
    }

    fn take(&mut self, ev: Event) -> Event {
        if let Event::Exited { at, end } = &ev {
            self.ended = Some((*at, *end));
        }
        self.seen.push(ev.clone());
        ev
    }

    /// CPU time (user + system) the process has used so far, ms, from
    /// `/proc/PID/stat` (clock-tick resolution).
    pub fn cpu_ms_now(&self) -> Option<f64> {
        if self.ended.is_some() {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some((utime + stime) / hz * 1e3)
    }

    /// Whether the process has ended (as far as events consumed tell).
    pub fn ended(&self) -> Option<(Instant, ProcessEnd)> {
        self.ended
    }

    /// Consumes events until `want` returns something (checked against the
    /// events already seen first), the process ends, or `deadline` passes.
    pub fn wait_for<T>(
        &mut self,
        deadline: Instant,
        mut want: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T> {
        if let Some(t) = self.seen.iter().find_map(&mut want) {
            return Some(t);
        }
        loop {
            if self.ended.is_some() {
                // Lines may still arrive right after the exit event.
                while let Ok(ev) = self.rx.recv_timeout(Duration::from_millis(50)) {
                    let ev = self.take(ev);
                    if let Some(t) = want(&ev) {
                        return Some(t);
                    }
                }
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => {
                    let ev = self.take(ev);
                    if let Some(t) = want(&ev) {
                        return Some(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits for the process to end; kills it (SIGKILL) at `deadline`.
    /// Returns the exit time, how it ended and the memory peak.
    pub fn finish(&mut self, deadline: Instant) -> (Instant, ProcessEnd, MemorySample, bool) {
        let mut killed = false;
        let ended = match self.wait_for(deadline, |_| None::<()>) {
            _ if self.ended.is_some() => self.ended.unwrap(),
            _ => {
                killed = true;
                self.kill();
                self.wait_for(Instant::now() + Duration::from_secs(30), |_| None::<()>);
                self.ended.unwrap_or((
                    Instant::now(),
                    ProcessEnd {
                        code: -1,
                        user_ms: 0.0,
                        sys_ms: 0.0,
                        max_rss_kib: 0,
                    },
                ))
            }
        };
        self.done.store(true, Ordering::Release);
        let mem = self
            .sampler
            .take()
            .and_then(|s| s.join().ok())
            .unwrap_or_default();
        (ended.0, ended.1, mem, killed)
    }

    /// SIGKILL to the process if it has not ended.
    pub fn kill(&self) {
        if self.ended.is_none() && !self.done.load(Ordering::Acquire) {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// The last `n` lines seen, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self
            .seen
            .iter()
            .filter_map(|e| match e {
                Event::Line { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Fails with the output tail when the process ended badly.
    pub fn check_end(&self, end: &ProcessEnd, killed: bool) -> anyhow::Result<()> {
        if killed {
            bail!("timed out and killed; last output:\n{}", self.tail(20));
        }
        if end.code != 0 {
            bail!("exited with {}; last output:\n{}", end.code, self.tail(20));
        }
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.kill();
        self.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mappings_are_told_by_size() {
        let smaps = "55-66 r-xp 0 00:00 0 /bin/x\nSize: 100 kB\nRss: 80 kB\n\
                     77-88 rw-s 0 00:01 9 /memfd:guest (deleted)\nSize: 131072 kB\nRss: 20000 kB\n\
                     99-aa rw-p 0 00:00 0\nSize: 65536 kB\nRss: 300 kB\n";
        assert_eq!(guest_rss_kib(smaps, 131072), 20000);
        assert_eq!(kib_field("Rss:   1234 kB\nPss: 1 kB\n", "Rss:"), Some(1234));
    }
}
