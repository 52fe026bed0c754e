//! The launches that are timed: capsa's full container launch (agent,
//! vsock, the rootfs over virtio-blk or virtio-fs, one container process
//! that echoes a line or works on small files), and the boot comparison
//! that every VMM runs with the same kernel and initramfs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use capsa_agent::client::{attach_stream, Client, HybridVsockConnector};
use capsa_agent::protocol::{
    method, CreateParams, Empty, MountSpec, NewMachineParams, ProcessSpec, RootfsSpec, RootfsType,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::fixtures::{Fixtures, CONTAINER_OUTPUT, INIT_LINE, WRITTEN_FILES};
use crate::launch::{Event, Pipe, Watched};
use crate::stats::{summarize, Summary};

/// The phases, in order; each is timed as the host time from spawn to the
/// event that ends it (cumulative). A phase's own duration is the time
/// since the previous phase that this launch saw.
pub const PHASES: &[(&str, &str)] = &[
    ("restored", "→ restored from the template"),
    ("first_kvm_run", "→ first KVM_RUN"),
    ("init", "→ guest /init"),
    ("agent_ready", "→ agent ready"),
    ("new_machine", "→ new machine"),
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

/// Whether `text` is the VMM's "VM restored from snapshot" log line, and
/// its `elapsed_us` if it has one.
fn restored_us(text: &str) -> Option<Option<u64>> {
    if !text.contains("VM restored from snapshot") {
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
        if let Some(us) = restored_us(text) {
            rec.marks_ms.entry("restored".into()).or_insert(w.ms(*at));
            if let Some(us) = us {
                rec.vmm_reported_us.entry("restored".into()).or_insert(us);
            }
        } else if let Some(us) = first_kvm_run_us(text) {
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

/// How a launch's rootfs reaches the guest (the runtime's
/// `io.capsa.rootfs`, docs/runtime.md § Rootfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The ext4 image on a read-only virtio-blk disk under a RAM overlay.
    Block,
    /// The rootfs directory, shared by virtiofsd (started as the runtime
    /// starts it), written through.
    Virtiofs,
}

/// What the container process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Echoes one line (time to container output).
    Echo,
    /// Reads the rootfs's small files, writes [`WRITTEN_FILES`] small
    /// files to `/tmp`, then echoes the line.
    SmallFiles,
    /// The SMP speed-up, in a 2-vCPU guest: a CPU-bound shell loop on one
    /// thread, then the same work split over two threads ([`smp_script`]).
    Smp,
}

impl Job {
    /// The guest's vCPUs for this job.
    fn vcpus(self) -> u8 {
        match self {
            Job::Smp => 2,
            Job::Echo | Job::SmallFiles => 1,
        }
    }
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

/// The `workload` name of a launch: `launch` (the echo on a block rootfs,
/// as in earlier runs), `launch-virtiofs`, `smallfiles-block`,
/// `smallfiles-virtiofs`.
pub fn launch_workload(job: Job, transport: Transport) -> &'static str {
    match (job, transport) {
        (Job::Echo, Transport::Block) => "launch",
        (Job::Echo, Transport::Virtiofs) => "launch-virtiofs",
        (Job::SmallFiles, Transport::Block) => "smallfiles-block",
        (Job::SmallFiles, Transport::Virtiofs) => "smallfiles-virtiofs",
        (Job::Smp, _) => "smp",
    }
}

/// The workload name of a warm launch (restored from a template) of the
/// echo on `transport`.
pub fn warm_workload(transport: Transport) -> &'static str {
    match transport {
        Transport::Block => "launch-warm",
        Transport::Virtiofs => "launch-virtiofs-warm",
    }
}

/// Free virtio-mmio slots of the benchmark's template (the runtime's
/// number, docs/runtime.md "Warm starts").
const TEMPLATE_FREE_SLOTS: u8 = capsa_vmm::runtime::template::FREE_SLOTS;

/// Boots the template of the warm launches once: `capsa vmm --agent`
/// with the launches' memory and free slots, snapshotted when the agent
/// is ready, into `work/template`. Returns that directory.
pub fn build_template(
    fx: &Fixtures,
    work: &Path,
    memory_mib: u32,
    timeout: Duration,
) -> anyhow::Result<PathBuf> {
    let dir = work.join("template");
    let uds = work.join("template.sock");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&uds);
    let mut cmd = capsa_command(fx);
    cmd.arg("--agent")
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--boot-timer")
        .args(["--memory-mib", &memory_mib.to_string()])
        .args(["--free-slots", &TEMPLATE_FREE_SLOTS.to_string()])
        .arg("--snapshot-to")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().context("start the template VM")?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the template VM did not snapshot within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    anyhow::ensure!(
        status.success() && dir.join("state").is_file(),
        "the template VM ended with {status} without a snapshot"
    );
    let _ = std::fs::remove_file(&uds);
    Ok(dir)
}

/// One launch's setup.
#[derive(Debug, Clone, Copy)]
pub struct LaunchSpec<'a> {
    pub work: &'a Path,
    /// Restore from this template (a warm launch) instead of booting.
    pub template: Option<&'a Path>,
    pub tag: &'a str,
    pub memory_mib: u32,
    pub timeout: Duration,
    pub job: Job,
    pub transport: Transport,
}

/// The record of a launch of `spec`, before it runs.
fn launch_record(spec: LaunchSpec) -> LaunchRecord {
    LaunchRecord {
        vmm: "capsa".into(),
        workload: match spec.template {
            Some(_) => warm_workload(spec.transport),
            None => launch_workload(spec.job, spec.transport),
        }
        .into(),
        ..Default::default()
    }
}

/// capsa's full launch: `capsa vmm --agent` with a vsock socket and the
/// rootfs (a disk, or a virtio-fs share served by virtiofsd); the host
/// connects, `hello`, `create` + `start` a process that does its job and
/// echoes one line, reads its first stdout byte, `wait`s for it and asks
/// the agent to `shutdown`; the VMM then exits.
pub fn capsa_launch(fx: &Fixtures, spec: LaunchSpec) -> LaunchRecord {
    match launch_start(fx, spec) {
        Ok(run) => run.finish().0,
        Err(e) => LaunchRecord {
            error: Some(format!("{e:#}")),
            ..launch_record(spec)
        },
    }
}

/// virtiofsd sharing the rootfs tree on `socket` (killed on drop), with
/// the runtime's options.
struct Virtiofsd(std::process::Child);

impl Virtiofsd {
    fn start(fx: &Fixtures, socket: &Path) -> anyhow::Result<Virtiofsd> {
        let bin = fx
            .virtiofsd
            .as_ref()
            .ok_or_else(|| anyhow!("virtiofsd is not installed (scripts/virtiofsd.sh)"))?;
        let _ = std::fs::remove_file(socket);
        let child = Command::new(bin)
            .arg("--shared-dir")
            .arg(&fx.rootfs_tree)
            .arg("--socket-path")
            .arg(socket)
            .args(capsa_vmm::runtime::virtiofsd::SERVER_ARGS)
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let d = Virtiofsd(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            anyhow::ensure!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A launch that is running: started by [`launch_start`], driven to its
/// end by [`Running::finish`].
pub struct LaunchRun<'a> {
    fx: &'a Fixtures,
    spec: LaunchSpec<'a>,
    w: Watched,
    rec: LaunchRecord,
    uds: PathBuf,
    socket: PathBuf,
    _virtiofsd: Option<Virtiofsd>,
}

/// Spawns the VMM of a launch (and first its virtiofsd, as the runtime
/// does).
pub fn launch_start<'a>(fx: &'a Fixtures, spec: LaunchSpec<'a>) -> anyhow::Result<LaunchRun<'a>> {
    let (work, tag) = (spec.work, spec.tag);
    let uds = work.join(format!("vsock-{tag}.sock"));
    let _ = std::fs::remove_file(&uds);
    let mut cmd = capsa_command(fx);
    match spec.template {
        Some(t) => cmd.arg("--restore-from").arg(t),
        None => cmd.arg("--agent"),
    };
    // The guest profiler on every launch (docs/kernel.md "Profiling the
    // boot"): one report per launch, named by its tag.
    if let Some(dir) = std::env::var_os(PROFILE_DIR_ENV) {
        cmd.arg("--profile")
            .arg(Path::new(&dir).join(format!("{}-{tag}.prof", launch_record(spec).workload)));
    }
    cmd.arg("--vsock-uds")
        .arg(&uds)
        .arg("--boot-timer")
        .args(["--vcpus", &spec.job.vcpus().to_string()])
        .args(["--memory-mib", &spec.memory_mib.to_string()]);
    let socket = work.join(format!("virtiofsd-{tag}.sock"));
    // Started before the clock: the runtime starts it before the VMM too.
    let virtiofsd = match spec.transport {
        Transport::Block => {
            cmd.arg("--disk").arg(format!("{},ro", fx.rootfs.display()));
            None
        }
        Transport::Virtiofs => {
            let d = Virtiofsd::start(fx, &socket)?;
            cmd.arg("--fs")
                .arg(format!("tag={FS_TAG},socket={}", socket.display()));
            Some(d)
        }
    };
    Ok(LaunchRun {
        fx,
        spec,
        w: Watched::spawn(cmd, spec.memory_mib)?,
        rec: launch_record(spec),
        uds,
        socket,
        _virtiofsd: virtiofsd,
    })
}

impl LaunchRun<'_> {
    /// Drives the agent through the job, waits for the exit and records
    /// the marks.
    fn drive_to_end(&mut self) -> anyhow::Result<()> {
        let (fx, spec, rec) = (self.fx, self.spec, &mut self.rec);
        let deadline = self.w.t0 + spec.timeout;
        let result = drive_agent(&mut self.w, &self.uds, deadline, spec, rec);
        if result.is_err() {
            self.w.kill();
        }
        let finished = finish_record(&mut self.w, rec, deadline + Duration::from_secs(30));
        collect_capsa_marks(&self.w, rec, true);
        let _ = std::fs::remove_file(&self.uds);
        let _ = std::fs::remove_file(&self.socket);
        // What the job wrote through to the shared tree goes, so that each
        // launch creates its files anew.
        for i in 0..WRITTEN_FILES {
            let _ = std::fs::remove_file(fx.rootfs_tree.join(format!("tmp/w{i}")));
        }
        let out = result.and_then(|out| finished.map(|()| out))?;
        if spec.template.is_some() {
            check_restored(rec)?;
        }
        if spec.job == Job::Smp {
            record_smp(&out, rec)?;
        }
        Ok(())
    }
}

impl Running for LaunchRun<'_> {
    fn t0(&self) -> Instant {
        self.w.t0
    }

    fn finish(mut self) -> (LaunchRecord, Option<Instant>) {
        if let Err(e) = self.drive_to_end() {
            self.rec.error = Some(format!("{e:#}"));
        }
        let exit = self.w.ended().map(|(at, _)| at);
        (self.rec, exit)
    }
}

/// A warm launch counts only if its VM was restored from the template:
/// the VMM logged the restore, and no guest kernel booted (no /init
/// mark). Anything else (a fallback to a cold boot) is an error.
fn check_restored(rec: &LaunchRecord) -> anyhow::Result<()> {
    if !rec.marks_ms.contains_key("restored") {
        bail!("warm launch not restored: the VMM logged no \"VM restored from snapshot\"");
    }
    if rec.marks_ms.contains_key("init") {
        bail!("warm launch booted the guest kernel (its /init mark) instead of restoring");
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

/// Set to a directory, every capsa launch writes a guest profile there.
pub const PROFILE_DIR_ENV: &str = "CAPSA_BENCH_PROFILE_DIR";

/// The virtio-fs tag of the rootfs share in the launches.
const FS_TAG: &str = "rootfs";

/// The `new_machine` of a warm launch: 64 bytes from the host's
/// `/dev/urandom`, its clock, the rootfs device in slot 2.
fn new_machine_params() -> anyhow::Result<NewMachineParams> {
    let mut entropy = [0u8; 64];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut entropy)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(NewMachineParams {
        realtime_ns: u64::try_from(now.as_nanos())?,
        entropy: entropy.iter().map(|b| format!("{b:02x}")).collect(),
        devices: vec!["virtio-mmio.2".into()],
    })
}

/// The agent's `create` for a launch.
fn create_params(spec: LaunchSpec) -> CreateParams {
    let script = match spec.job {
        Job::Echo => format!("echo '{CONTAINER_OUTPUT}'"),
        Job::SmallFiles => format!(
            "/bin/busybox cat /files/* > /dev/null && i=0 && \
             while [ $i -lt {WRITTEN_FILES} ]; do echo x > /tmp/w$i; i=$((i+1)); done && \
             echo '{CONTAINER_OUTPUT}'"
        ),
        Job::Smp => smp_script(),
    };
    let rootfs = match spec.transport {
        // As the runtime mounts `io.capsa.rootfs=block`: read-only image,
        // RAM overlay.
        Transport::Block => RootfsSpec {
            source: Some("/dev/vda".into()),
            fstype: RootfsType::Ext4,
            readonly: true,
            tag: None,
        },
        Transport::Virtiofs => RootfsSpec {
            source: None,
            fstype: RootfsType::Virtiofs,
            readonly: false,
            tag: Some(FS_TAG.into()),
        },
    };
    CreateParams {
        container_id: "capsa-bench".into(),
        rootfs,
        process: ProcessSpec {
            args: vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            ..Default::default()
        },
        hostname: None,
        shares: Vec::new(),
        // /proc for the SMP workload's clock (/proc/uptime).
        mounts: if spec.job == Job::Smp {
            vec![MountSpec {
                destination: "/proc".into(),
                kind: Some("proc".into()),
                source: Some("proc".into()),
                options: Vec::new(),
            }]
        } else {
            Vec::new()
        },
        stdin: false,
        pid_namespace: false,
        network: None,
        sysctl: Default::default(),
    }
}

fn drive_agent(
    w: &mut Watched,
    uds: &Path,
    deadline: Instant,
    spec: LaunchSpec,
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
    if spec.template.is_some() {
        // As the runtime's VMM process does: the rootfs device took the
        // first free slot, after vsock (0) and rng (1).
        client
            .call::<method::NewMachine>(&new_machine_params()?, rpc_timeout)
            .context("new_machine")?;
        rec.marks_ms
            .insert("new_machine".into(), w.ms(Instant::now()));
    }
    let params = create_params(spec);
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
    rec.extra_ms.insert("start".into(), w.ms(Instant::now()));
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

/// A launch that is running (for the parallel rounds).
pub trait Running: Send {
    /// When it was spawned.
    fn t0(&self) -> Instant;

    /// Waits for its end; returns the record and the exit instant.
    fn finish(self) -> (LaunchRecord, Option<Instant>);
}

impl Running for BootRun {
    fn t0(&self) -> Instant {
        self.w.t0
    }

    /// Waits for the init line and the exit.
    fn finish(mut self) -> (LaunchRecord, Option<Instant>) {
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
    /// Launches that succeeded per second of `wall_ms`.
    pub launches_per_second: f64,
    /// Per launch, spawn → the container's first output, ms (container
    /// launches only; absent from runs before 2026-12-03).
    #[serde(default)]
    pub first_output_ms: Option<Summary>,
    pub launches: Vec<LaunchRecord>,
    pub error: Option<String>,
}

/// Starts `k` launches at once (`start(i)` spawns the i-th), finishes
/// each on its own thread so that none waits on another, and times the
/// round from the first spawn to the last exit.
fn run_parallel<R: Running>(
    vmm: &str,
    workload: &str,
    k: usize,
    mut start: impl FnMut(usize) -> anyhow::Result<R>,
) -> ParallelRecord {
    let mut runs = Vec::new();
    let mut launches = Vec::new();
    for i in 0..k {
        match start(i) {
            Ok(r) => runs.push((i, r)),
            Err(e) => launches.push(LaunchRecord {
                vmm: vmm.into(),
                workload: workload.into(),
                iteration: i,
                error: Some(format!("{e:#}")),
                ..Default::default()
            }),
        }
    }
    let first = runs.iter().map(|(_, r)| r.t0()).min();
    let ended: Vec<(LaunchRecord, Option<Instant>)> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|(i, r)| {
                s.spawn(move || {
                    let (mut rec, exit) = r.finish();
                    rec.iteration = i;
                    (rec, exit)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let last = ended.iter().filter_map(|(_, exit)| *exit).max();
    launches.extend(ended.into_iter().map(|(rec, _)| rec));
    launches.sort_by_key(|l| l.iteration);
    let wall_ms = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64() * 1e3,
        _ => 0.0,
    };
    let ok: Vec<&LaunchRecord> = launches.iter().filter(|l| l.error.is_none()).collect();
    let output: Vec<f64> = ok
        .iter()
        .filter_map(|l| l.marks_ms.get("first_output").copied())
        .collect();
    ParallelRecord {
        vmm: vmm.into(),
        workload: workload.into(),
        parallel: k,
        wall_ms,
        launches_per_second: if wall_ms > 0.0 {
            ok.len() as f64 / (wall_ms / 1e3)
        } else {
            0.0
        },
        first_output_ms: summarize(&output),
        error: launches.iter().find_map(|l| l.error.clone()),
        launches,
    }
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
    run_parallel(vmm.name(), "boot", k, |i| {
        boot_start(vmm, fx, work, &format!("par{i}"), memory_mib, timeout)
    })
}

/// Starts `k` capsa container launches of `spec` at once (each with its
/// own tag: `spec.tag` and its index) and waits for all. With a
/// template, each VM is restored from it on its own; a launch that was
/// not restored is an error ([`check_restored`]).
pub fn launch_parallel(fx: &Fixtures, spec: LaunchSpec, k: usize) -> ParallelRecord {
    let tags: Vec<String> = (0..k).map(|i| format!("{}{i}", spec.tag)).collect();
    let workload = launch_record(spec).workload;
    run_parallel("capsa", &workload, k, |i| {
        launch_start(
            fx,
            LaunchSpec {
                tag: &tags[i],
                ..spec
            },
        )
    })
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

    #[test]
    fn a_warm_launch_must_have_been_restored() {
        let mut rec = LaunchRecord::default();
        rec.marks_ms.insert("first_output".into(), 5000.0);
        assert!(check_restored(&rec).is_err(), "no restore line");
        rec.marks_ms.insert("restored".into(), 20.0);
        assert!(check_restored(&rec).is_ok());
        rec.marks_ms.insert("init".into(), 20_000.0);
        assert!(check_restored(&rec).is_err(), "booted cold");
    }
}
