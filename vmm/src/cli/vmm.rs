//! `capsa vmm`: boot a micro-VM from flags or a JSON configuration file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use capsa_devices::boot_timer::{MAGIC_AGENT_READY, MAGIC_INIT_REACHED};
use capsa_vmm::builder::build_microvm;
use capsa_vmm::config::{
    BootProtocol, DiskConfig, FsConfig, HostQuirks, NetConfig, ProfileConfig, SnapshotConfig,
    SnapshotThen, SnapshotWhen, VmConfig, VsockConfig, DEFAULT_GUEST_CID, DEFAULT_MTU,
    DEFAULT_PROFILE_INTERVAL_MS,
};
use capsa_vmm::vstate::vcpu::VmExit;

use super::EXIT_GUEST_FAILURE;

/// Flags of `capsa vmm`. Flags given together with `--config` override the
/// file's values.
#[derive(Debug, clap::Args)]
pub struct VmmArgs {
    /// JSON configuration file (fields as in docs/cli.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs (uncompressed cpio archive).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line (replaces the default; capsa still appends
    /// device and host parameters).
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = "memory-mib", visible_alias = "mem")]
    memory_mib: Option<u32>,
    /// Connect the guest's serial console to stdout.
    #[arg(long)]
    serial_console: bool,
    /// Print the boot-timer marks (time to guest init) on stderr.
    #[arg(long)]
    boot_timer: bool,
    /// Kernel entry point: auto, pvh or linux64.
    #[arg(long, value_enum)]
    boot_protocol: Option<BootProtocolArg>,
    /// PVM host workarounds: auto, on or off.
    #[arg(long, value_enum)]
    host_quirks: Option<HostQuirksArg>,
    /// Add a virtio-blk disk backed by PATH (",ro" for read-only);
    /// repeatable: the first is /dev/vda.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskConfig>,
    /// Add a virtio-vsock device whose hybrid Unix socket is PATH.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[arg(long, value_name = "CID", requires = "vsock_uds")]
    vsock_cid: Option<u32>,
    /// Add a virtio-fs share whose vhost-user backend (virtiofsd) listens
    /// on PATH; the guest mounts it by TAG. Repeatable.
    #[arg(long = "fs", value_name = "tag=TAG,socket=PATH")]
    fs: Vec<FsConfig>,
    /// Do not offer a virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Add a virtio-net device on the TAP interface NAME (created in the
    /// VMM's network namespace if it does not exist; needs CAP_NET_ADMIN
    /// or a persistent TAP of the caller's).
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// Add a virtio-net device on the inherited TAP descriptor FD.
    #[arg(long, value_name = "FD", conflicts_with = "tap")]
    tap_fd: Option<i32>,
    /// The guest's MAC address (with --tap/--tap-fd; default: random).
    #[arg(long, value_name = "MAC")]
    mac: Option<String>,
    /// The guest's MTU (with --tap/--tap-fd; default 1500).
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u16>,
    /// Boot the guest agent as /init: an initramfs built from the agent
    /// binary (found as docs/cli.md says), instead of --initramfs.
    #[arg(long, conflicts_with = "initramfs")]
    agent: bool,
    /// Sample the vCPUs' instruction pointers while the guest runs and
    /// write a report to FILE when it ends: where guest time went, by
    /// kernel function (docs/kernel.md, "Profiling the boot").
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Sampling interval of --profile, ms.
    #[arg(long, value_name = "MS", requires = "profile")]
    profile_interval_ms: Option<u32>,
    /// System.map that names kernel addresses in the --profile report
    /// (default: System.map next to the kernel).
    #[arg(long, value_name = "PATH", requires = "profile")]
    system_map: Option<PathBuf>,
    /// Take a snapshot of the running VM into DIR (docs/snapshot.md):
    /// when --snapshot-when says, or at once on SIGUSR1.
    #[arg(long, value_name = "DIR")]
    snapshot_to: Option<PathBuf>,
    /// When to take the snapshot: agent-ready (the guest agent listens on
    /// vsock; the default) or signal (only on SIGUSR1).
    #[arg(long, value_enum, requires = "snapshot_to")]
    snapshot_when: Option<SnapshotWhenArg>,
    /// Take the snapshot MS milliseconds after the VM starts running.
    #[arg(
        long,
        value_name = "MS",
        requires = "snapshot_to",
        conflicts_with = "snapshot_when"
    )]
    snapshot_after_ms: Option<u64>,
    /// What the VM does after the snapshot: exit (status 0; the default)
    /// or continue.
    #[arg(long, value_enum, requires = "snapshot_to")]
    snapshot_then: Option<SnapshotThenArg>,
    /// Start from the snapshot in DIR instead of booting a kernel: vCPUs,
    /// memory and guest state from the snapshot, device backends (--disk,
    /// --vsock-uds, --tap…) from this command line, in the snapshot's
    /// device layout.
    #[arg(long, value_name = "DIR")]
    restore_from: Option<PathBuf>,
    /// Announce N free virtio-mmio slots after the devices, where a VM
    /// restored from a snapshot of this one can be given its own disks,
    /// shares and network device (docs/snapshot.md).
    #[arg(long, value_name = "N")]
    free_slots: Option<u8>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SnapshotWhenArg {
    AgentReady,
    Signal,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SnapshotThenArg {
    Exit,
    Continue,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BootProtocolArg {
    Auto,
    Pvh,
    Linux64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HostQuirksArg {
    Auto,
    On,
    Off,
}

impl VmmArgs {
    fn into_config(mut self) -> anyhow::Result<VmConfig> {
        let mut config = match (&self.config, &self.kernel) {
            (Some(path), _) => VmConfig::from_file(path)?,
            (None, Some(kernel)) => VmConfig::new(kernel),
            (None, None) if self.restore_from.is_some() => VmConfig::new(""),
            (None, None) => {
                anyhow::bail!("--kernel is required (or give --config FILE, or --restore-from DIR)")
            }
        };
        apply_snapshot_flags(
            &mut config,
            self.snapshot_to.take(),
            self.snapshot_when,
            self.snapshot_after_ms,
            self.snapshot_then,
        );
        if self.restore_from.is_some() {
            config.restore_from = self.restore_from.take();
        }
        if let Some(k) = self.kernel {
            config.kernel = k;
        }
        if self.initramfs.is_some() {
            config.initramfs = self.initramfs;
        }
        if self.cmdline.is_some() {
            config.cmdline = self.cmdline;
        }
        if let Some(v) = self.vcpus {
            config.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            config.memory_mib = m;
        }
        config.disks.extend(self.disks);
        config.fs.extend(self.fs);
        if let Some(uds_path) = self.vsock_uds {
            config.vsock = Some(VsockConfig {
                guest_cid: self.vsock_cid.unwrap_or(DEFAULT_GUEST_CID),
                uds_path,
            });
        }
        if self.no_rng {
            config.rng = false;
        }
        if let Some(n) = self.free_slots {
            config.free_slots = n;
        }
        apply_net_flags(&mut config, self.tap, self.tap_fd, self.mac, self.mtu)?;
        if self.agent {
            let agent = capsa_vmm::guest_agent::locate()?;
            let cache = capsa_vmm::guest_agent::cache_dir().join("initramfs");
            config.initramfs = Some(
                capsa_vmm::guest_agent::initramfs(&agent, &cache)
                    .context("--agent: cannot build the agent initramfs")?,
            );
        }
        apply_profile_flags(
            &mut config,
            self.profile,
            self.profile_interval_ms,
            self.system_map,
        );
        config.serial_console |= self.serial_console;
        config.boot_timer |= self.boot_timer;
        if let Some(p) = self.boot_protocol {
            config.boot_protocol = match p {
                BootProtocolArg::Auto => BootProtocol::Auto,
                BootProtocolArg::Pvh => BootProtocol::Pvh,
                BootProtocolArg::Linux64 => BootProtocol::Linux64,
            };
        }
        if let Some(q) = self.host_quirks {
            config.host_quirks = match q {
                HostQuirksArg::Auto => HostQuirks::Auto,
                HostQuirksArg::On => HostQuirks::On,
                HostQuirksArg::Off => HostQuirks::Off,
            };
        }
        Ok(config)
    }
}

/// `--tap`/`--tap-fd`/`--mac`/`--mtu` over the configuration's `net`.
fn apply_net_flags(
    config: &mut VmConfig,
    tap: Option<String>,
    tap_fd: Option<i32>,
    mac: Option<String>,
    mtu: Option<u16>,
) -> anyhow::Result<()> {
    if tap.is_some() || tap_fd.is_some() {
        config.net = Some(NetConfig {
            tap_name: tap,
            tap_fd,
            mac: None,
            mtu: DEFAULT_MTU,
        });
    }
    if let Some(net) = config.net.as_mut() {
        if mac.is_some() {
            net.mac = mac;
        }
        if let Some(mtu) = mtu {
            net.mtu = mtu;
        }
    } else if mac.is_some() || mtu.is_some() {
        anyhow::bail!("--mac and --mtu need --tap or --tap-fd");
    }
    Ok(())
}

/// `--snapshot-to`/`--snapshot-when`/`--snapshot-after-ms`/
/// `--snapshot-then` over the configuration's `snapshot`.
fn apply_snapshot_flags(
    config: &mut VmConfig,
    dir: Option<PathBuf>,
    when: Option<SnapshotWhenArg>,
    after_ms: Option<u64>,
    then: Option<SnapshotThenArg>,
) {
    let Some(dir) = dir else { return };
    let mut snap = config.snapshot.take().unwrap_or(SnapshotConfig {
        dir: PathBuf::new(),
        when: SnapshotWhen::default(),
        then: SnapshotThen::default(),
    });
    snap.dir = dir;
    match (when, after_ms) {
        (_, Some(ms)) => snap.when = SnapshotWhen::AfterMs(ms),
        (Some(SnapshotWhenArg::AgentReady), None) => snap.when = SnapshotWhen::AgentReady,
        (Some(SnapshotWhenArg::Signal), None) => snap.when = SnapshotWhen::Signal,
        (None, None) => {}
    }
    match then {
        Some(SnapshotThenArg::Exit) => snap.then = SnapshotThen::Exit,
        Some(SnapshotThenArg::Continue) => snap.then = SnapshotThen::Continue,
        None => {}
    }
    config.snapshot = Some(snap);
}

/// `--profile`/`--profile-interval-ms`/`--system-map` over the
/// configuration's `profile`.
fn apply_profile_flags(
    config: &mut VmConfig,
    profile: Option<PathBuf>,
    interval_ms: Option<u32>,
    system_map: Option<PathBuf>,
) {
    if let Some(path) = profile {
        let mut profile = config.profile.take().unwrap_or(ProfileConfig {
            path: PathBuf::new(),
            interval_ms: DEFAULT_PROFILE_INTERVAL_MS,
            system_map: None,
        });
        profile.path = path;
        if let Some(ms) = interval_ms {
            profile.interval_ms = ms;
        }
        if system_map.is_some() {
            profile.system_map = system_map;
        }
        config.profile = Some(profile);
    }
}

/// Boots the VM and waits for it to end.
pub fn run(args: VmmArgs, start: Instant) -> anyhow::Result<u8> {
    // Jailed with `--new-pid-ns`, this is pid 1 of its namespace.
    capsa_vmm::pid1::handle_termination_signals();
    let config = args.into_config()?;
    let (vmm, marks) = build_microvm(&config, start).context("cannot create the VM")?;
    tracing::info!(setup_us = start.elapsed().as_micros() as u64, "VM created");
    let filters = vmm.filters();
    let printer = config.boot_timer.then(|| {
        std::thread::spawn(move || {
            if let Err(e) = filters.install(capsa_vmm::seccomp::ThreadKind::Printer) {
                eprintln!("capsa: boot-timer: {e}");
                return;
            }
            for mark in marks {
                let what = match mark.value {
                    MAGIC_INIT_REACHED => "guest init reached".to_string(),
                    MAGIC_AGENT_READY => "guest agent ready".to_string(),
                    v => format!("guest mark {v}"),
                };
                eprintln!(
                    "capsa: boot-timer: {what} after {} us",
                    mark.elapsed.as_micros()
                );
            }
        })
    });
    let exit = vmm.run();
    // The VM is gone, and with it the boot timer's sender: let the printer
    // drain what is left (bounded, should a vCPU thread still hold it).
    if let Some(printer) = printer {
        let deadline = Instant::now() + std::time::Duration::from_millis(200);
        while !printer.is_finished() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    if let VmExit::Snapshotted { .. } = exit {
        eprintln!("capsa: {exit}");
        Ok(0)
    } else if exit.is_clean() {
        tracing::info!("{exit}");
        Ok(0)
    } else {
        eprintln!("capsa: {exit}");
        Ok(EXIT_GUEST_FAILURE)
    }
}
