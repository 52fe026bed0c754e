//! The launches that are timed: capsa's full container launch (agent,
//! vsock, virtio-blk rootfs, one container process), and the boot
//! comparison that every VMM runs with the same kernel and initramfs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use capsa_agent::client::{attach_stream, Client, HybridVsockConnector};
use capsa_agent::protocol::{
    method, CreateParams, Empty, MountSpec, ProcessSpec, RootfsSpec, RootfsType,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::fixtures::{Fixtures, CONTAINER_OUTPUT, INIT_LINE};
use crate::launch::{Event, Pipe, Watched};

/// The phases, in order; each is timed as the host time from spawn to the
/// event that ends it (cumulative). A phase's own duration is the time
/// since the previous phase that this launch saw.
pub const PHASES: &[(&str, &str)] = &[
    ("first_kvm_run", "exec → first KVM_RUN"),
    ("init", "→ guest /init"),
    ("agent_ready", "→ agent ready"),
    ("first_output", "→ container output"),
    ("exit", "→ exit"),
];

/// A VMM taking part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vmm {
    Capsa,
    Qemu(PathBuf),
    /// QEMU (the first path) booting a reference kernel (the second) with
    /// the same initramfs and command line: `--reference-kernel`.
    Reference(PathBuf, PathBuf),
    Firecracker(PathBuf),
    CloudHypervisor(PathBuf),
}

impl Vmm {
    pub fn name(&self) -> &'static str {
        match self {
            Vmm::Capsa => "capsa",
            Vmm::Qemu(_) => "qemu-microvm",
            Vmm::Reference(..) => REFERENCE,
            Vmm::Firecracker(_) => "firecracker",
            Vmm::CloudHypervisor(_) => "cloud-hypervisor",
        }
    }
}

/// The name of the reference kernel's launches (booted by QEMU).
pub const REFERENCE: &str = "reference-kernel";

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One timed launch.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct LaunchRecord {
    pub vmm: String,
    /// `launch` (capsa's full container launch) or `boot` (the comparison).
    pub workload: String,
    pub iteration: usize,
    /// Phase key → ms from spawn (host clock) to the event ending it.
    pub marks_ms: BTreeMap<String, f64>,
    /// Other host-clock marks (ms from spawn), e.g. the arrival of capsa's
    /// boot-timer line in the boot comparison.
    pub extra_ms: BTreeMap<String, f64>,
    /// What the VMM itself reported (µs from its `main`).
    pub vmm_reported_us: BTreeMap<String, u64>,
    pub cpu_user_ms: f64,
    pub cpu_sys_ms: f64,
    pub max_rss_kib: u64,
    /// Peak of RSS minus resident guest memory, KiB.
    pub rss_overhead_kib: u64,
    pub rss_kib_at_peak: u64,
    pub guest_rss_kib_at_peak: u64,
    pub rss_samples: u32,
    /// Largest total Rss and resident guest memory seen, KiB.
    pub rss_max_kib: u64,
    pub guest_rss_max_kib: u64,
    /// Host CPU time (user + system) used up to the init line, ms (boot
    /// comparison; from /proc/PID/stat when the line arrived).
    pub cpu_to_init_ms: Option<f64>,
    pub exit_code: i32,
    /// Why a launch has no exit mark although it did not fail.
    pub note: Option<String>,
    pub error: Option<String>,
}

/// The guest command line of the boot comparison, as capsa builds it with
/// `--serial-console --no-rng` (given verbatim to the peers).
pub fn comparison_cmdline() -> String {
    let mut c = format!("{} console=ttyS0", capsa_vmm::config::DEFAULT_CMDLINE);
    if capsa_vmm::pvm::is_pvm_host() {
        c.push_str(&format!(
            " {} clearcpuid={}",
            capsa_vmm::pvm::KERNEL_PARAMS.join(" "),
            capsa_vmm::pvm::CLEARCPUID.join(",")
        ));
    }
    c
}

/// `capsa: boot-timer: guest init reached after N us`.
fn boot_timer_us(text: &str) -> Option<u64> {
    text.strip_prefix("capsa: boot-timer: guest init reached after ")?
        .strip_suffix(" us")?
        .parse()
        .ok()
}

/// capsa's JSON log line `first KVM_RUN` → its `elapsed_us`.
fn first_kvm_run_us(text: &str) -> Option<Option<u64>> {
    if !text.contains("first KVM_RUN") {
        return None;
    }
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    Some(v["fields"]["elapsed_us"].as_u64())
}

fn capsa_command(fx: &Fixtures) -> Command {
    let mut cmd = Command::new(&fx.capsa);
    cmd.env("CAPSA_LOG", "capsa_vmm=info")
        .env(capsa_vmm::guest_agent::AGENT_ENV, &fx.agent)
        .args(["--log-format", "json", "vmm", "--kernel"])
        .arg(&fx.kernel);
    cmd
}

/// Records the capsa marks found in the events seen so far.
fn collect_capsa_marks(w: &Watched, rec: &mut LaunchRecord, boot_timer_is_init: bool) {
    for ev in &w.seen {
        let Event::Line {
            pipe: Pipe::Stderr,
            text,
            at,
        } = ev
        else {
            continue;
        };
        if let Some(us) = first_kvm_run_us(text) {
            rec.marks_ms
                .entry("first_kvm_run".into())
                .or_insert(w.ms(*at));
            if let Some(us) = us {
                rec.vmm_reported_us
                    .entry("first_kvm_run".into())
                    .or_insert(us);
            }
        } else if let Some(us) = boot_timer_us(text) {
            let key = if boot_timer_is_init {
                rec.marks_ms.entry("init".into()).or_insert(w.ms(*at));
                "init"
            } else {
                rec.extra_ms
                    .entry("boot_timer_line".into())
                    .or_insert(w.ms(*at));
                "boot_timer_init"
            };
            rec.vmm_reported_us.entry(key.into()).or_insert(us);
        }
    }
}

fn finish_record(w: &mut Watched, rec: &mut LaunchRecord, deadline: Instant) -> anyhow::Result<()> {
    let (at, end, mem, killed) = w.finish(deadline);
    rec.cpu_user_ms = end.user_ms;
    rec.cpu_sys_ms = end.sys_ms;
    rec.max_rss_kib = end.max_rss_kib;
    rec.rss_overhead_kib = mem.overhead_kib;
    rec.rss_kib_at_peak = mem.rss_kib;
    rec.guest_rss_kib_at_peak = mem.guest_kib;
    rec.rss_samples = mem.samples;
    rec.rss_max_kib = mem.rss_max_kib;
    rec.guest_rss_max_kib = mem.guest_max_kib;
    rec.exit_code = end.code;
    if !killed {
        rec.marks_ms.insert("exit".into(), w.ms(at));
    }
    w.check_end(&end, killed)
}

/// capsa's full launch: `capsa vmm --agent` with a vsock socket and the
/// rootfs disk; the host connects, `hello`, `create` + `start` a process
/// that echoes one line, reads its first stdout byte, `wait`s for it and
/// asks the agent to `shutdown`; the VMM then exits.
/// What a capsa container launch runs: the `launch` workload (one vCPU,
/// `busybox echo`) or `smp` (two vCPUs, [`SMP_SCRIPT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchKind {
    /// The timed container launch.
    Echo,
    /// The SMP speed-up: a CPU-bound shell loop on one thread, then the
    /// same work split over two threads, in a 2-vCPU guest.
    Smp,
}

/// Loop iterations of the SMP workload's single thread (each of its two
/// threads runs half): about 1.5 s of busybox `sh` on an idle core here.
pub const SMP_ITERATIONS: u64 = 1_000_000;

/// The SMP workload's container process (busybox `sh -c`): prints
/// [`CONTAINER_OUTPUT`], then `capsa-bench-smp A B C` with the guest's
/// `/proc/uptime` before the single-thread loop, between, and after the
/// two-thread run. The loops are shell builtins only: no system calls,
/// so they run in guest user mode at full speed even where guest kernel
/// mode is emulated.
pub fn smp_script() -> String {
    let half = SMP_ITERATIONS / 2;
    format!(
        "l() {{ i=0; while [ $i -lt $1 ]; do i=$((i+1)); done; }}; \
         u() {{ read a b < /proc/uptime; echo $a; }}; \
         echo '{CONTAINER_OUTPUT}'; a=$(u); l {SMP_ITERATIONS}; b=$(u); \
         l {half} & l {half} & wait; c=$(u); echo \"capsa-bench-smp $a $b $c\""
    )
}

impl LaunchKind {
    fn workload(self) -> &'static str {
        match self {
            LaunchKind::Echo => "launch",
            LaunchKind::Smp => "smp",
        }
    }

    fn vcpus(self) -> u8 {
        match self {
            LaunchKind::Echo => 1,
            LaunchKind::Smp => 2,
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            LaunchKind::Echo => vec![
                "/bin/busybox".into(),
                "echo".into(),
                CONTAINER_OUTPUT.into(),
            ],
            LaunchKind::Smp => vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                smp_script(),
            ],
        }
    }
}

pub fn capsa_launch(
    fx: &Fixtures,
    work: &Path,
    tag: &str,
    memory_mib: u32,
    timeout: Duration,
    kind: LaunchKind,
) -> LaunchRecord {
    let mut rec = LaunchRecord {
        vmm: "capsa".into(),
        workload: kind.workload().into(),
        ..Default::default()
    };
    if let Err(e) = capsa_launch_inner(fx, work, tag, memory_mib, timeout, kind, &mut rec) {
        rec.error = Some(format!("{e:#}"));
    }
    rec
}

fn capsa_launch_inner(
    fx: &Fixtures,
    work: &Path,
    tag: &str,
    memory_mib: u32,
    timeout: Duration,
    kind: LaunchKind,
    rec: &mut LaunchRecord,
) -> anyhow::Result<()> {
    let uds = work.join(format!("vsock-{tag}.sock"));
    let _ = std::fs::remove_file(&uds);
    let disk = work.join(format!("rootfs-{tag}.ext4"));
    std::fs::copy(&fx.rootfs, &disk).context("copy the rootfs image")?;
    let mut cmd = capsa_command(fx);
    cmd.arg("--agent")
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--disk")
        .arg(&disk)
        .arg("--boot-timer")
        .args(["--vcpus", &kind.vcpus().to_string()])
        .args(["--memory-mib", &memory_mib.to_string()]);
    let mut w = Watched::spawn(cmd, memory_mib)?;
    let deadline = w.t0 + timeout;
    let result = drive_agent(&mut w, &uds, deadline, kind.args(), rec);
    if result.is_err() {
        w.kill();
    }
    let finished = finish_record(&mut w, rec, deadline + Duration::from_secs(30));
    collect_capsa_marks(&w, rec, true);
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&disk);
    let out = result.and_then(|out| finished.map(|()| out))?;
    if kind == LaunchKind::Smp {
        record_smp(&out, rec)?;
    }
    Ok(())
}

/// The SMP workload's times from its output line, into `extra_ms`:
/// `one_thread`, `two_threads` (guest clock).
fn record_smp(out: &str, rec: &mut LaunchRecord) -> anyhow::Result<()> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("capsa-bench-smp "))
        .ok_or_else(|| anyhow!("no capsa-bench-smp line in {out:?}"))?;
    let t: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("capsa-bench-smp line {line:?}"))?;
    let [a, b, c] = t[..] else {
        bail!("capsa-bench-smp line {line:?}: three times expected");
    };
    rec.extra_ms.insert("one_thread".into(), (b - a) * 1e3);
    rec.extra_ms.insert("two_threads".into(), (c - b) * 1e3);
    Ok(())
}

/// Connects to the agent, runs one container process (`args`) to its
/// end, shuts the guest down; returns the process's stdout.
fn drive_agent(
    w: &mut Watched,
    uds: &Path,
    deadline: Instant,
    args: Vec<String>,
    rec: &mut LaunchRecord,
) -> anyhow::Result<String> {
    let connector = HybridVsockConnector::new(uds);
    // Retry until the agent answers `hello`, as Client::connect_retry does,
    // but stop as soon as the VMM has died.
    let client = loop {
        let attempt = Client::connect(&connector).and_then(|c| {
            c.hello(Duration::from_secs(5))?;
            Ok(c)
        });
        match attempt {
            Ok(c) => break c,
            Err(e) => {
                if Instant::now() >= deadline {
                    bail!("agent not ready before the timeout: {e}");
                }
                w.wait_for(Instant::now() + Duration::from_millis(10), |_| None::<()>);
                if w.ended().is_some() {
                    bail!(
                        "the VMM ended before the agent answered; last output:\n{}",
                        w.tail(20)
                    );
                }
            }
        }
    };
    rec.marks_ms
        .insert("agent_ready".into(), w.ms(Instant::now()));
    let rpc_timeout = Some(deadline.saturating_duration_since(Instant::now()));
    let params = CreateParams {
        container_id: "capsa-bench".into(),
        rootfs: RootfsSpec {
            source: Some("/dev/vda".into()),
            fstype: RootfsType::Ext4,
            readonly: false,
            tag: None,
        },
        process: ProcessSpec {
            args,
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            ..Default::default()
        },
        hostname: None,
        // /proc for the SMP workload's clock (/proc/uptime).
        mounts: vec![MountSpec {
            destination: "/proc".into(),
            kind: Some("proc".into()),
            source: Some("proc".into()),
            options: Vec::new(),
        }],
        stdin: false,
    };
    let created = client
        .call::<method::Create>(&params, rpc_timeout)
        .context("create")?;
    let process_id = created.process_id;
    let token = created
        .streams
        .stdout
        .clone()
        .ok_or_else(|| anyhow!("create gave no stdout stream: {created:?}"))?;
    let mut stream = attach_stream(&connector, &token).context("attach stdout")?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut first = None;
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
        let _ = tx.send((first, out));
    });
    client
        .call::<method::Start>(&Empty {}, rpc_timeout)
        .context("start")?;
    let exit = client.wait(process_id).context("wait")?;
    let (first, out) = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| anyhow!("the stdout stream did not end"))?;
    let first = first.ok_or_else(|| anyhow!("the container process printed nothing"))?;
    rec.marks_ms.insert("first_output".into(), w.ms(first));
    let out = String::from_utf8_lossy(&out);
    if !out.contains(CONTAINER_OUTPUT) || exit.status_code() != 0 {
        bail!("container process: output {out:?}, exit {exit:?}");
    }
    // The agent answers, then reboots the guest; the answer may be lost
    // with the connection.
    let _ = client.call::<method::Shutdown>(&Empty {}, rpc_timeout);
    Ok(out.into_owned())
}

/// The command of the boot comparison for `vmm`.
fn boot_command(vmm: &Vmm, fx: &Fixtures, work: &Path, tag: &str, memory_mib: u32) -> Command {
    let cmdline = comparison_cmdline();
    match vmm {
        Vmm::Capsa => {
            let mut cmd = capsa_command(fx);
            cmd.arg("--initramfs")
                .arg(&fx.boot_initramfs)
                .args(["--serial-console", "--boot-timer", "--no-rng"])
                .args(["--memory-mib", &memory_mib.to_string()]);
            cmd
        }
        Vmm::Qemu(bin) => qemu_command(bin, &fx.kernel, fx, memory_mib, &cmdline),
        Vmm::Reference(bin, kernel) => qemu_command(bin, kernel, fx, memory_mib, &cmdline),
        Vmm::Firecracker(bin) => {
            let config = json!({
                "boot-source": {
                    "kernel_image_path": fx.kernel,
                    "initrd_path": fx.boot_initramfs,
                    "boot_args": cmdline,
                },
                "drives": [],
                "machine-config": { "vcpu_count": 1, "mem_size_mib": memory_mib },
            });
            let path = work.join(format!("firecracker-{tag}.json"));
            let _ = std::fs::write(&path, config.to_string());
            let mut cmd = Command::new(bin);
            cmd.arg("--no-api").arg("--config-file").arg(path);
            cmd
        }
        Vmm::CloudHypervisor(bin) => {
            let mut cmd = Command::new(bin);
            cmd.arg("--kernel")
                .arg(&fx.kernel)
                .arg("--initramfs")
                .arg(&fx.boot_initramfs)
                .arg("--cmdline")
                .arg(&cmdline)
                .args(["--cpus", "boot=1", "--memory"])
                .arg(format!("size={memory_mib}M"))
                .args(["--serial", "tty", "--console", "off"]);
            cmd
        }
    }
}

/// QEMU's microvm machine without legacy devices but the serial port,
/// booting `kernel` through its PVH entry with the comparison's initramfs
/// (docs/performance.md, Peers).
fn qemu_command(
    bin: &Path,
    kernel: &Path,
    fx: &Fixtures,
    memory_mib: u32,
    cmdline: &str,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off,pic=off,pit=off",
        "-accel",
        "kvm",
        "-cpu",
        "qemu64,-cx16,+tsc-deadline,+xsaveerptr",
        "-smp",
        "1",
        "-m",
        &memory_mib.to_string(),
        "-display",
        "none",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(kernel)
    .arg("-initrd")
    .arg(&fx.boot_initramfs)
    .arg("-append")
    .arg(cmdline);
    cmd
}

/// A boot-comparison launch running (for the parallel rounds).
pub struct BootRun {
    vmm: Vmm,
    w: Watched,
    rec: LaunchRecord,
    timeout: Duration,
}

/// Starts one boot-comparison launch.
pub fn boot_start(
    vmm: &Vmm,
    fx: &Fixtures,
    work: &Path,
    tag: &str,
    memory_mib: u32,
    timeout: Duration,
) -> anyhow::Result<BootRun> {
    let cmd = boot_command(vmm, fx, work, tag, memory_mib);
    Ok(BootRun {
        vmm: vmm.clone(),
        w: Watched::spawn(cmd, memory_mib)?,
        rec: LaunchRecord {
            vmm: vmm.name().into(),
            workload: "boot".into(),
            ..Default::default()
        },
        timeout,
    })
}

impl BootRun {
    /// When it was spawned.
    pub fn t0(&self) -> Instant {
        self.w.t0
    }

    /// Waits for the init line and the exit; returns the record and the
    /// exit instant.
    pub fn finish(mut self) -> (LaunchRecord, Option<Instant>) {
        let deadline = self.w.t0 + self.timeout;
        let init = self.w.wait_for(deadline, |ev| match ev {
            Event::Line {
                pipe: Pipe::Stdout,
                text,
                at,
            } if text.contains(INIT_LINE) => Some(*at),
            _ => None,
        });
        if let Some(at) = init {
            let ms = self.w.ms(at);
            self.rec.marks_ms.insert("init".into(), ms);
            self.rec.cpu_to_init_ms = self.w.cpu_ms_now();
        }
        // The guest resets right after the line. capsa and Firecracker end
        // on the i8042 reset; QEMU microvm has no i8042 and on this host the
        // kernel's fallbacks do not end it, and cloud-hypervisor reboots the
        // guest: those are killed 5 s after the line and have no exit mark.
        let exits_on_reset = matches!(self.vmm, Vmm::Capsa | Vmm::Firecracker(_));
        let exit_deadline = match init {
            Some(at) if !exits_on_reset => at + Duration::from_secs(5),
            _ => deadline,
        };
        let result = finish_record(&mut self.w, &mut self.rec, exit_deadline);
        if self.vmm == Vmm::Capsa {
            collect_capsa_marks(&self.w, &mut self.rec, false);
        }
        let exit = self.w.ended().map(|(at, _)| at);
        match (init, result) {
            (None, Err(e)) => self.rec.error = Some(format!("no init line: {e:#}")),
            (None, Ok(())) => {
                self.rec.error = Some(format!("no init line; last output:\n{}", self.w.tail(20)))
            }
            (Some(_), Err(e)) if exits_on_reset => self.rec.error = Some(format!("{e:#}")),
            (Some(_), Err(_)) => {
                self.rec.marks_ms.remove("exit");
                self.rec.note = Some(
                    "does not exit on the guest's reset here: killed 5 s after the init line, \
                     no exit mark"
                        .into(),
                )
            }
            (Some(_), Ok(())) => {}
        }
        (self.rec, exit)
    }
}

/// One boot-comparison launch, start to end.
pub fn boot_once(
    vmm: &Vmm,
    fx: &Fixtures,
    work: &Path,
    tag: &str,
    memory_mib: u32,
    timeout: Duration,
) -> LaunchRecord {
    match boot_start(vmm, fx, work, tag, memory_mib, timeout) {
        Ok(run) => run.finish().0,
        Err(e) => LaunchRecord {
            vmm: vmm.name().into(),
            workload: "boot".into(),
            error: Some(format!("{e:#}")),
            ..Default::default()
        },
    }
}

/// Throughput with `k` VMs at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParallelRecord {
    pub vmm: String,
    pub workload: String,
    pub parallel: usize,
    /// From the first spawn to the last exit, ms.
    pub wall_ms: f64,
    pub launches_per_second: f64,
    pub launches: Vec<LaunchRecord>,
    pub error: Option<String>,
}

/// Starts `k` boot-comparison launches of `vmm` at once and waits for all.
pub fn boot_parallel(
    vmm: &Vmm,
    fx: &Fixtures,
    work: &Path,
    k: usize,
    memory_mib: u32,
    timeout: Duration,
) -> ParallelRecord {
    let mut runs = Vec::new();
    let mut error = None;
    for i in 0..k {
        match boot_start(vmm, fx, work, &format!("par{i}"), memory_mib, timeout) {
            Ok(r) => runs.push(r),
            Err(e) => error = Some(format!("{e:#}")),
        }
    }
    let first = runs.iter().map(BootRun::t0).min();
    // Each run is finished on its own thread so that none waits on another.
    let handles: Vec<_> = runs
        .into_iter()
        .map(|r| std::thread::spawn(move || r.finish()))
        .collect();
    let mut launches = Vec::new();
    let mut last = None;
    for h in handles {
        if let Ok((rec, exit)) = h.join() {
            if let Some(e) = &rec.error {
                error.get_or_insert_with(|| e.clone());
            }
            last = last.max(exit);
            launches.push(rec);
        }
    }
    let wall_ms = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64() * 1e3,
        _ => 0.0,
    };
    let ok = launches.iter().filter(|l| l.error.is_none()).count();
    ParallelRecord {
        vmm: vmm.name().into(),
        workload: "boot".into(),
        parallel: k,
        wall_ms,
        launches_per_second: if wall_ms > 0.0 {
            ok as f64 / (wall_ms / 1e3)
        } else {
            0.0
        },
        launches,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsa_lines_are_parsed() {
        assert_eq!(
            boot_timer_us("capsa: boot-timer: guest init reached after 1234 us"),
            Some(1234)
        );
        let log = r#"{"timestamp":"x","level":"INFO","fields":{"message":"first KVM_RUN","elapsed_us":987},"target":"capsa_vmm::vstate::vcpu"}"#;
        assert_eq!(first_kvm_run_us(log), Some(Some(987)));
        assert_eq!(first_kvm_run_us("other"), None);
    }
}
