//! `capsa-benches`: boot latency and overhead of capsa, side by side with
//! peer VMMs on the same kernel and initramfs. The method (what starts and
//! stops each clock) is described in docs/performance.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

mod fixtures;
mod launch;
mod net;
mod report;
mod stats;
mod vmms;

use vmms::{Job, LaunchRecord, LaunchSpec, Transport, Vmm};

#[derive(Debug, Parser)]
#[command(
    name = "capsa-benches",
    about = "capsa boot-latency and overhead benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot latency per phase, CPU time, RSS overhead and parallel
    /// launches/s of capsa, and the boot comparison with peer VMMs.
    Boot(BootArgs),
    /// TCP bulk transfer host <-> container on podman's network, runc vs
    /// capsa in one run (needs scripts/engines.sh's podman and the
    /// busybox image of scripts/images.sh).
    Net(net::NetArgs),
    /// Re-renders table.md and boot.png of a results directory from its
    /// results.json.
    Report {
        /// The results directory.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct BootArgs {
    /// Launches per VMM and workload.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Launches of the SMP workload: a 2-vCPU container runs a CPU-bound
    /// loop on one thread, then the same work on two (0: skip).
    #[arg(long, default_value_t = 1)]
    smp_iterations: usize,
    /// VMs at once in the launches/s rounds (0: skip them): capsa's boot
    /// comparison and, unless --no-warm, the echo container launched cold
    /// and warm (each VM restored from the one template).
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Results directory (default: benches/results/<UTC timestamp>/).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Peers of the boot comparison: `auto` (QEMU, plus Firecracker and
    /// Cloud Hypervisor when on PATH), `none`, or a comma-separated list of
    /// qemu, firecracker, cloud-hypervisor.
    #[arg(long, default_value = "auto")]
    peers: String,
    /// A reference guest kernel (uncompressed vmlinux with a PVH entry)
    /// that QEMU boots with the comparison's busybox initramfs, each
    /// iteration, to set capsa's container launch against (ratios
    /// capsa / reference; docs/performance.md). Needs qemu-system-x86_64.
    #[arg(long, value_name = "VMLINUX")]
    reference_kernel: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Timeout of one launch, s.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Rootfs transports of the container launches: `both` (the echo and
    /// the small-file job, each on `block` and on `virtiofs`; needs
    /// virtiofsd) or `block` (the echo on a block rootfs only).
    #[arg(long, default_value = "both", value_parser = ["both", "block"])]
    rootfs_transports: String,
    /// Skip the warm launches (the echo restored from a template VM
    /// snapshotted once at agent-ready, as `capsa create` starts
    /// containers; docs/runtime.md "Warm starts").
    #[arg(long)]
    no_warm: bool,
}

/// The peers asked for; those asked for by name but absent are an error,
/// those of `auto` are skipped with a reason.
fn select_peers(spec: &str) -> anyhow::Result<(Vec<Vmm>, Vec<serde_json::Value>)> {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    let find = |name: &str, bin: &str| vmms::which(bin).map(|p| (name.to_string(), p));
    let wanted: Vec<&str> = match spec {
        "none" => vec![],
        "auto" => vec!["qemu", "firecracker", "cloud-hypervisor"],
        list => list.split(',').map(str::trim).collect(),
    };
    for w in wanted {
        let (bin, make): (&str, fn(PathBuf) -> Vmm) = match w {
            "qemu" => ("qemu-system-x86_64", Vmm::Qemu),
            "firecracker" => ("firecracker", Vmm::Firecracker),
            "cloud-hypervisor" => ("cloud-hypervisor", Vmm::CloudHypervisor),
            other => anyhow::bail!("--peers: unknown peer {other:?}"),
        };
        match find(w, bin) {
            Some((_, path)) => peers.push(make(path)),
            None if spec == "auto" && w != "qemu" => skipped.push(json!({
                "peer": w, "reason": format!("{bin} is not on PATH (the bench never downloads it)")
            })),
            None => anyhow::bail!("--peers: {bin} is not on PATH"),
        }
    }
    Ok((peers, skipped))
}

/// `YYYYMMDDTHHMMSSZ` of now (UTC): RFC 3339 without separators.
fn timestamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k / 1024);
    let root = fixtures::workspace_root();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mib": mem_mib,
        "host_kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "kvm": if capsa_vmm::pvm::is_pvm_host() {
            "PVM (kvm_pvm): guest kernel mode is emulated"
        } else {
            "hardware-assisted KVM"
        },
        "pvm_host": capsa_vmm::pvm::is_pvm_host(),
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "qemu": first_line("qemu-system-x86_64", &["-version"]),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}

fn machine_line(m: &serde_json::Value) -> String {
    format!(
        "{} ({} CPUs, {} MiB), host kernel {}, {}",
        m["cpu"].as_str().unwrap_or("?"),
        m["cpus"],
        m["memory_mib"],
        m["host_kernel"].as_str().unwrap_or("?"),
        m["kvm"].as_str().unwrap_or("?")
    )
}

fn describe(rec: &LaunchRecord) -> String {
    match &rec.error {
        Some(e) => format!(
            "{} {} #{}: FAILED: {}",
            rec.vmm,
            rec.workload,
            rec.iteration,
            e.lines().next().unwrap_or("")
        ),
        None => {
            let marks: Vec<String> = vmms::PHASES
                .iter()
                .filter_map(|(k, _)| rec.marks_ms.get(*k).map(|v| format!("{k} {:.2}s", v / 1e3)))
                .collect();
            format!(
                "{} {} #{}: {}",
                rec.vmm,
                rec.workload,
                rec.iteration,
                marks.join(", ")
            )
        }
    }
}

fn describe_parallel(p: &vmms::ParallelRecord) -> String {
    let output = p
        .first_output_ms
        .map(|o| {
            format!(
                ", to container output {:.2} s median, {:.2} s max",
                o.median / 1e3,
                o.max / 1e3
            )
        })
        .unwrap_or_default();
    format!(
        "{} {}: {} at once: {:.3} launches/s (wall {:.2} s){output}{}",
        p.vmm,
        p.workload,
        p.parallel,
        p.launches_per_second,
        p.wall_ms / 1e3,
        p.error
            .as_deref()
            .map(|e| format!(" (error: {})", e.lines().next().unwrap_or("")))
            .unwrap_or_default()
    )
}

fn boot(args: BootArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.iterations >= 1, "--iterations must be at least 1");
    let (mut peers, skipped) = select_peers(&args.peers)?;
    if let Some(kernel) = &args.reference_kernel {
        anyhow::ensure!(
            kernel.is_file(),
            "--reference-kernel: {} is not a file",
            kernel.display()
        );
        let qemu = vmms::which("qemu-system-x86_64")
            .context("--reference-kernel: qemu-system-x86_64 is not on PATH")?;
        peers.push(Vmm::Reference(qemu, kernel.clone()));
    }
    let out = args.out.clone().unwrap_or_else(|| {
        fixtures::workspace_root()
            .join("benches/results")
            .join(timestamp())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let work = tempdir()?;
    eprintln!("capsa-benches: preparing (capsa, agent, kernel, initramfs, rootfs)...");
    let fx = fixtures::Fixtures::prepare(work.path())?;
    let machine = machine();
    let timeout = Duration::from_secs(args.timeout_s);
    let mem = args.memory_mib;

    let mut vmms_in_comparison = Vec::new();
    if !peers.is_empty() {
        vmms_in_comparison.push(Vmm::Capsa);
        vmms_in_comparison.extend(peers.iter().cloned());
    }
    // The container launches: the echo on a block rootfs always; with
    // virtiofsd installed, the rootfs transports side by side for the echo
    // and the small-file job.
    anyhow::ensure!(
        args.rootfs_transports == "block" || fx.virtiofsd.is_some(),
        "--rootfs-transports both: virtiofsd is not installed (scripts/virtiofsd.sh)"
    );
    let mut launch_kinds: Vec<(Job, Transport, bool)> = if args.rootfs_transports == "both" {
        vec![
            (Job::Echo, Transport::Block, false),
            (Job::Echo, Transport::Virtiofs, false),
            (Job::SmallFiles, Transport::Block, false),
            (Job::SmallFiles, Transport::Virtiofs, false),
        ]
    } else {
        vec![(Job::Echo, Transport::Block, false)]
    };
    // The warm launches next to the cold ones of the same iteration: the
    // echo restored from one template (built once, before the clock).
    let template = if args.no_warm {
        None
    } else {
        eprintln!("capsa-benches: booting the template VM of the warm launches");
        let t = vmms::build_template(&fx, work.path(), mem, timeout)?;
        let warm: Vec<(Job, Transport, bool)> = launch_kinds
            .iter()
            .filter(|(job, _, _)| *job == Job::Echo)
            .map(|&(job, transport, _)| (job, transport, true))
            .collect();
        launch_kinds.extend(warm);
        Some(t)
    };
    let per_iter = launch_kinds.len() + vmms_in_comparison.len();
    // The boot round, and with a template the cold and warm launch rounds.
    let parallel_rounds = match (args.parallel, &template) {
        (0, _) => 0,
        (_, None) => 1,
        (_, Some(_)) => 3,
    };
    let total = (args.iterations * per_iter + parallel_rounds + args.smp_iterations) as u64;
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} launches (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(Duration::from_millis(500));

    let mut launches = Vec::new();
    for i in 0..args.iterations {
        for &(job, transport, warm) in &launch_kinds {
            let name = if warm {
                vmms::warm_workload(transport)
            } else {
                vmms::launch_workload(job, transport)
            };
            pb.set_message(format!("capsa {name} #{i}"));
            let spec = LaunchSpec {
                work: work.path(),
                template: if warm { template.as_deref() } else { None },
                tag: &format!("l{i}"),
                memory_mib: mem,
                timeout,
                job,
                transport,
            };
            let mut rec = vmms::capsa_launch(&fx, spec);
            rec.iteration = i;
            say(&pb, describe(&rec));
            launches.push(rec);
            pb.inc(1);
        }
        // The boot comparison, A B A B: capsa then each peer, every iteration.
        for vmm in &vmms_in_comparison {
            pb.set_message(format!("{} boot #{i}", vmm.name()));
            let mut rec = vmms::boot_once(vmm, &fx, work.path(), &format!("b{i}"), mem, timeout);
            rec.iteration = i;
            say(&pb, describe(&rec));
            launches.push(rec);
            pb.inc(1);
        }
    }
    for i in 0..args.smp_iterations {
        pb.set_message(format!("capsa SMP launch #{i}"));
        let tag = format!("s{i}");
        let spec = LaunchSpec {
            work: work.path(),
            template: None,
            tag: &tag,
            memory_mib: mem,
            timeout,
            job: Job::Smp,
            transport: Transport::Block,
        };
        let mut rec = vmms::capsa_launch(&fx, spec);
        rec.iteration = i;
        say(&pb, describe(&rec));
        launches.push(rec);
        pb.inc(1);
    }
    let mut parallel = Vec::new();
    if args.parallel > 0 {
        let k = args.parallel;
        // capsa only: the peers' launches/s would be skewed by the kill of
        // those that do not exit on the guest's reset.
        pb.set_message(format!("capsa boot x{k} in parallel"));
        let boot = vmms::boot_parallel(&Vmm::Capsa, &fx, work.path(), k, mem, timeout);
        say(&pb, describe_parallel(&boot));
        pb.inc(1);
        parallel.push(boot);
        // The echo container launched K at once, cold then warm (each VM
        // restored from the one template), as `launch` and `launch-warm`.
        if let Some(t) = template.as_deref() {
            for (tag, template) in [("pc", None), ("pw", Some(t))] {
                let spec = LaunchSpec {
                    work: work.path(),
                    template,
                    tag,
                    memory_mib: mem,
                    timeout,
                    job: Job::Echo,
                    transport: Transport::Block,
                };
                pb.set_message(format!("capsa launches x{k} in parallel ({tag})"));
                let p = vmms::launch_parallel(&fx, spec, k);
                say(&pb, describe_parallel(&p));
                pb.inc(1);
                parallel.push(p);
            }
        }
    }
    pb.finish_and_clear();

    let peer_names: Vec<String> = peers.iter().map(|p| p.name().to_string()).collect();
    let (rows, ratios) = render(
        &out,
        &launches,
        &parallel,
        &peer_names,
        &machine,
        args.iterations,
    )?;
    let failed = launches.iter().filter(|l| l.error.is_some()).count();
    let results = json!({
        "schema": "capsa-benches/boot/1",
        "timestamp": timestamp(),
        "machine": machine,
        "config": {
            "iterations": args.iterations,
            "rootfs_transports": args.rootfs_transports,
            "parallel": args.parallel,
            "smp_iterations": args.smp_iterations,
            "smp_script": vmms::smp_script(),
            "memory_mib": mem,
            "timeout_s": args.timeout_s,
            "peers": peer_names,
            "reference_kernel": args.reference_kernel,
            "skipped_peers": skipped,
            "kernel": fx.kernel,
            "comparison_cmdline": vmms::comparison_cmdline(),
            "comparison_init": fixtures::boot_init_script(),
        },
        "phases": vmms::PHASES.iter().map(|(k, l)| json!({"key": k, "label": l})).collect::<Vec<_>>(),
        "summary": rows,
        "ratios": ratios,
        "parallel": parallel,
        "launches": launches,
        "failed_launches": failed,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    println!("results: {}", out.join("results.json").display());
    if failed > 0 {
        eprintln!("capsa-benches: {failed} launch(es) failed; see results.json");
    }
    Ok(())
}

/// Writes table.md and boot.png into `out`, prints the table; returns the
/// summaries.
fn render(
    out: &Path,
    launches: &[LaunchRecord],
    parallel: &[vmms::ParallelRecord],
    peer_names: &[String],
    machine: &serde_json::Value,
    iterations: usize,
) -> anyhow::Result<(Vec<report::RowSummary>, Vec<report::Ratio>)> {
    let rows = report::summarize_rows(launches);
    let mut ratios = report::ratios(launches, peer_names);
    ratios.extend(report::transport_ratios(launches));
    ratios.extend(report::warm_ratios(launches));
    ratios.extend(report::parallel_warm_ratios(parallel));
    ratios.extend(report::reference_ratios(launches));
    ratios.extend(report::smp_speedup(launches));
    let table = report::markdown(&rows, &ratios, parallel, &machine_line(machine));
    let png = out.join("boot.png");
    let title = format!(
        "capsa launch phases (median of {iterations}){}",
        if machine["pvm_host"].as_bool().unwrap_or(false) {
            "; PVM host: guest kernel mode emulated"
        } else {
            ""
        }
    );
    if !report::chart(&rows, &title, &png)? {
        eprintln!("capsa-benches: no TTF font found (fonts-dejavu-core); the chart has no text");
    }
    std::fs::write(out.join("table.md"), &table)?;
    println!("{table}");
    println!("table:   {}", out.join("table.md").display());
    println!("chart:   {}", png.display());
    Ok((rows, ratios))
}

fn rerender(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let launches: Vec<LaunchRecord> = serde_json::from_value(v["launches"].clone())?;
    let parallel: Vec<vmms::ParallelRecord> = serde_json::from_value(v["parallel"].clone())?;
    let peers: Vec<String> = serde_json::from_value(v["config"]["peers"].clone())?;
    let iterations = v["config"]["iterations"].as_u64().unwrap_or(0) as usize;
    render(dir, &launches, &parallel, &peers, &v["machine"], iterations)?;
    Ok(())
}

/// A line above the progress bar, or on stderr when the bar is hidden (not
/// a terminal).
fn say(pb: &ProgressBar, line: impl AsRef<str>) {
    if pb.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        pb.println(line);
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir().join(format!("capsa-benches-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    Ok(TempDir(base))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Boot(args) => boot(args),
        Cmd::Net(args) => net::run(args),
        Cmd::Report { dir } => rerender(&dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capsa-benches: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
