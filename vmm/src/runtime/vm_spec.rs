//! The runtime spec turned into a machine and a container, in two steps:
//! [`VmSpec::from_bundle`] reads what the bundle asks for (vCPUs and memory
//! from `linux.resources`, the process, hostname, the rootfs and mounts),
//! and [`VmSpec::vmm_inputs`] combines it with the [`Machine`] `create`
//! prepared (kernel, initramfs, disks, vsock, the virtio-fs connection, as
//! the VMM sees them) into the [`VmmInputs`]: the finished [`VmConfig`],
//! validated, and the agent's `create` parameters. See docs/runtime.md for
//! what each field of `config.json` does in a VM.

use std::collections::BTreeMap;
use std::path::PathBuf;

use capsa_agent::protocol::{
    ConsoleSize, CreateParams, MountSpec, NetworkSpec, ProcessSpec, Rlimit, RootfsSpec, RootfsType,
    ShareSpec, User, SHARES_DIR,
};
use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::bundle::{Bundle, RootfsTransport};
use super::network::{self, GuestNetwork, NetworkMode};
use super::virtiofsd::Share;
use super::vmm_process::VmmInputs;
use super::{Result, RuntimeError};
use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::config::{
    guest_disk_device, DiskConfig, FsConfig, HostQuirks, NetConfig, VmConfig, VsockConfig,
    DEFAULT_GUEST_CID, DEFAULT_VCPUS,
};

/// Smallest guest RAM capsa gives a container, MiB (more than the
/// kernel's own minimum, [`crate::config::MIN_MEMORY_MIB`]: room for the
/// agent and a process).
pub const MIN_CONTAINER_MEMORY_MIB: u32 = 64;
/// Guest RAM when the spec sets no memory limit, MiB: enough for Debian's
/// `apt-get update` (163 MiB of lists and caches written into the tmpfs
/// upper layer, which a tmpfs may fill to half of RAM), at a measured cost
/// of ~19% more guest-kernel CPU to boot than 128 MiB on a PVM host; guest
/// RAM is taken from the host only as it is touched. docs/runtime.md,
/// "Memory", has the numbers. (`capsa vmm` without `--memory` keeps
/// [`crate::config::DEFAULT_MEMORY_MIB`], the machine's own default.)
pub const DEFAULT_CONTAINER_MEMORY_MIB: u32 = 512;
/// Guest RAM added to `linux.resources.memory.limit` for the guest kernel
/// and the agent, MiB.
pub const MEMORY_OVERHEAD_MIB: u32 = 32;

/// The virtio-fs tag of a container's share: one virtiofsd serves the
/// rootfs and every shared bind mount, as entries of one tree
/// (see [`super::virtiofsd`]).
pub const SHARE_TAG: &str = "capsa";
/// The rootfs's entry in the share tree.
pub const ROOTFS_ENTRY: &str = "root";
/// The agent's mount point of the container root in the guest (the
/// agent's `RUN_DIR/rootfs`, guest-agent/src/guest/storage.rs).
pub const GUEST_ROOTFS: &str = "/run/capsa/rootfs";

/// Kernel parameters the guest gets when it has a network interface, unless
/// the spec's `linux.sysctl` sets them (docs/runtime.md, "Network").
///
/// `net.ipv4.tcp_min_tso_segs`: Linux sizes a TCP socket's TSO frames to
/// about 1 ms of its pacing rate, at least this many segments (default
/// 2). Every frame costs the guest kernel the same work whatever its size,
/// and where guest kernel mode is emulated (PVM hosts) that work is
/// milliseconds, so a guest sending 2-segment frames paces itself down to
/// a few hundred KiB/s. 44 segments of a 1,500-byte MTU fill a 64 KiB TSO
/// frame: measured here, a 1 MiB download out of a container took 2.7x
/// less guest CPU. The frame still shrinks to what the congestion and
/// receive windows allow.
pub const NETWORK_SYSCTL_DEFAULTS: &[(&str, &str)] = &[("net.ipv4.tcp_min_tso_segs", "44")];

/// vCPUs for `linux.resources.cpu`: `quota/period` rounded up, else the
/// number of CPUs in `cpus` (a cpuset list), else [`DEFAULT_VCPUS`];
/// clamped to 1..=min(host CPUs, [`MAX_CPUS`]). `shares` are relative weights and
/// do not size the VM.
pub fn vcpus(resources: Option<&LinuxResources>, host_cpus: usize) -> u8 {
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let quota = cpu.and_then(|c| c.quota()).unwrap_or(0);
    let period = cpu.and_then(|c| c.period()).unwrap_or(0);
    let cpus = cpu
        .and_then(|c| c.cpus().as_deref())
        .filter(|s| !s.is_empty());
    let wanted = if quota > 0 && period > 0 {
        (quota as u64).div_ceil(period)
    } else if let Some(set) = cpus {
        cpuset_count(set)
    } else {
        u64::from(DEFAULT_VCPUS)
    };
    let max = (host_cpus.max(1) as u64).min(u64::from(MAX_CPUS));
    wanted.clamp(1, max) as u8
}

fn cpuset_count(set: &str) -> u64 {
    set.split(',')
        .map(|part| match part.trim().split_once('-') {
            Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

/// RAM the guest kernel keeps for itself on top of a container's
/// `limit_mib`: [`MEMORY_OVERHEAD_MIB`] for its image and the agent, plus
/// its page structures (`struct page`, 64 bytes per 4 KiB page: 1/64 of
/// RAM), so that the container's `MemTotal` is at least its limit (2 GiB
/// with 32 MiB alone left 2034 MiB).
pub fn guest_kernel_overhead_mib(limit_mib: u64) -> u64 {
    u64::from(MEMORY_OVERHEAD_MIB) + limit_mib.div_ceil(64)
}

/// Guest RAM, MiB, for `linux.resources.memory.limit` (bytes): the limit
/// in MiB (rounded up) plus [`guest_kernel_overhead_mib`], at least
/// [`MIN_CONTAINER_MEMORY_MIB`]; [`DEFAULT_CONTAINER_MEMORY_MIB`] without a limit (or with
/// runc's "unlimited", -1).
///
/// The rule (docs/runtime.md, "Memory"): under runc the limit is a cap on
/// a shared pool, and any value is accepted; a VM's RAM is its whole
/// world, sized up front (allocated lazily, but the guest kernel believes
/// in all of it). So guest RAM larger than the host's memory (`host_mib`,
/// MemTotal) is an error that names both sizes — never a silent clamp,
/// which would give the container less memory than its engine reports.
/// Anything up to MemTotal is accepted even when less is free: like
/// runc's cap, it is only taken as the guest touches it.
pub fn memory_mib(
    resources: Option<&LinuxResources>,
    host_mib: u64,
) -> std::result::Result<u32, String> {
    let limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .unwrap_or(0);
    let mib = if limit > 0 {
        let limit_mib = (limit as u64).div_ceil(1 << 20);
        limit_mib + guest_kernel_overhead_mib(limit_mib)
    } else {
        u64::from(DEFAULT_CONTAINER_MEMORY_MIB)
    };
    let mib = mib.max(u64::from(MIN_CONTAINER_MEMORY_MIB));
    if mib > host_mib {
        let asked = if limit > 0 {
            let limit_mib = (limit as u64).div_ceil(1 << 20);
            format!(
                "{limit} bytes ({limit_mib} MiB) plus {} MiB for the guest kernel",
                guest_kernel_overhead_mib(limit_mib)
            )
        } else {
            format!("the default of {mib} MiB")
        };
        return Err(format!(
            "linux.resources.memory.limit: a VM needs {mib} MiB of RAM for {asked}, \
             more than this host's {host_mib} MiB"
        ));
    }
    u32::try_from(mib)
        .map_err(|_| format!("linux.resources.memory.limit: {mib} MiB of guest RAM is too large"))
}

/// The agent's process spec for an OCI process; `user` is the resolved
/// `(uid, gid)`.
pub fn process_spec(p: &Process, user: (u32, u32)) -> ProcessSpec {
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            // oci-spec names the type as the spec does: `RLIMIT_NOFILE`.
            kind: r.typ().to_string(),
            hard: r.hard(),
            soft: r.soft(),
        })
        .collect();
    let u = p.user();
    ProcessSpec {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        user: User {
            uid: user.0,
            gid: user.1,
            additional_gids: u.additional_gids().clone().unwrap_or_default(),
            umask: u.umask(),
            username: None,
        },
        terminal: p.terminal().unwrap_or(false),
        console_size: p.console_size().map(|b| ConsoleSize {
            height: b.height().min(u64::from(u16::MAX)) as u16,
            width: b.width().min(u64::from(u16::MAX)) as u16,
        }),
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        capabilities: None,
        apparmor_profile: None,
        selinux_label: None,
        oom_score_adj: None,
    }
}

/// Mounts for the agent, and the host files and directories that bind
/// mounts share with the guest.
#[derive(Debug, Default, Clone)]
pub struct MountPlan {
    /// In order, for the agent.
    pub mounts: Vec<MountSpec>,
    /// The host files and directories of the bind mounts, as entries
    /// `m0`, `m1`, … of the share tree; the mounts name them at
    /// [`share_path`].
    pub shares: Vec<Share>,
}

/// Where the guest sees entry `entry` of the container's share.
pub fn share_path(entry: &str) -> String {
    format!("{SHARES_DIR}/{SHARE_TAG}/{entry}")
}

/// Translates the spec's mounts (see docs/runtime.md § Mounts): bind
/// mounts of host files and directories become entries of the share tree
/// (live, through virtio-fs), `/dev/shm` a guest tmpfs, the rest the
/// agent mounts itself.
pub fn mounts(spec: &Spec, readonly_root: bool) -> MountPlan {
    let mut plan = MountPlan::default();
    let mut rest = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let destination = m.destination().to_string_lossy().into_owned();
        let kind = m.typ().clone();
        let options = m.options().clone().unwrap_or_default();
        let is_bind =
            kind.as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            rest.push(MountSpec {
                destination,
                kind,
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned()),
                options,
            });
            continue;
        }
        if destination == "/dev/shm" {
            // A host tmpfs cannot be shared with a VM: a guest tmpfs.
            let mut opts = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
            opts.extend(options.iter().filter(|o| o.starts_with("size=")).cloned());
            opts.push("mode=1777".into());
            rest.push(MountSpec {
                destination,
                kind: Some("tmpfs".into()),
                source: Some("shm".into()),
                options: opts,
            });
            continue;
        }
        let Some(source) = m.source().clone() else {
            tracing::warn!(%destination, "bind mount without a source skipped");
            continue;
        };
        let name = format!("m{}", plan.shares.len());
        let Some(mut share) = Share::of(name.as_str(), &source) else {
            tracing::warn!(
                %destination, source = %source.display(),
                "bind mount of something that is not a file or directory skipped"
            );
            continue;
        };
        // The last of `ro`/`rw` wins, as in mount(8).
        for o in &options {
            match o.as_str() {
                "ro" => share.readonly = true,
                "rw" => share.readonly = false,
                "nosuid" => share.nosuid = true,
                "nodev" => share.nodev = true,
                "noexec" => share.noexec = true,
                _ => {}
            }
        }
        rest.push(MountSpec {
            destination,
            kind: Some("bind".into()),
            source: Some(share_path(&name)),
            options: options
                .into_iter()
                .filter(|o| {
                    matches!(
                        o.as_str(),
                        "bind" | "rbind" | "ro" | "rw" | "nosuid" | "nodev" | "noexec"
                    )
                })
                .collect(),
        });
        plan.shares.push(share);
    }
    plan.mounts = rest;
    if readonly_root {
        // The agent gives a read-only root (a read-only disk, or a
        // read-only share) a writable RAM overlay, where mount points can
        // be made; a recursive read-only bind of the root on itself, last,
        // makes the container's root read-only and keeps the mounts below
        // writable.
        plan.mounts.push(MountSpec {
            destination: "/".into(),
            kind: Some("bind".into()),
            source: Some(GUEST_ROOTFS.into()),
            options: vec!["rbind".into(), "ro".into()],
        });
    }
    plan
}

/// What a bundle asks of its VM and its container, read from
/// `config.json` ([`VmSpec::from_bundle`]); nothing changes it afterwards.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The bundle directory (for errors).
    pub bundle: PathBuf,
    /// vCPUs ([`vcpus`]).
    pub vcpus: u8,
    /// Guest RAM in MiB ([`memory_mib`]).
    pub memory_mib: u32,
    /// The container's process, its user resolved.
    pub process: ProcessSpec,
    /// `hostname`.
    pub hostname: Option<String>,
    /// How the rootfs reaches the guest (annotation `io.capsa.rootfs`).
    pub rootfs_transport: RootfsTransport,
    /// `root.readonly`.
    pub readonly_root: bool,
    /// The mounts, and the host files and directories they share.
    pub mounts: MountPlan,
    /// Whether the container gets a PID namespace of its own
    /// ([`wants_pid_namespace`]).
    pub pid_namespace: bool,
    /// The network: the engine's namespace to carry into the guest, or
    /// loopback only (a host-network spec is refused).
    pub network: NetworkMode,
    /// `linux.sysctl`, for the agent to set in the guest.
    pub sysctl: BTreeMap<String, String>,
}

/// What a disk is for in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRole {
    /// The container's root filesystem (an ext4 image, read-only), with
    /// the `block` rootfs transport.
    Rootfs,
}

/// A virtio-blk disk of the machine.
#[derive(Debug, Clone)]
pub struct MachineDisk {
    /// What it is for.
    pub role: DiskRole,
    /// The backing file, as the VMM sees it.
    pub path: PathBuf,
    /// Offered read-only.
    pub read_only: bool,
}

/// The machine `create` prepared for a [`VmSpec`], with paths as the VMM
/// process sees them (inside its jail).
#[derive(Debug, Clone)]
pub struct Machine {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Agent initramfs.
    pub initramfs: PathBuf,
    /// The disks, in the order the guest sees them
    /// ([`guest_disk_device`]).
    pub disks: Vec<MachineDisk>,
    /// Hybrid vsock socket.
    pub vsock: PathBuf,
    /// Where the guest's serial console (kernel messages, the agent's log)
    /// goes.
    pub console_log: PathBuf,
    /// Whether the VMM applies the PVM host workarounds: decided by
    /// `create`, as a jailed VMM sees neither `/sys` nor the host's
    /// modules.
    pub host_quirks: HostQuirks,
    /// The pty slave the VMM process inherits for the container's terminal.
    pub console_fd: Option<i32>,
    /// The connection to the container's virtiofsd that the VMM process
    /// inherits, when anything is shared (the rootfs, bind mounts).
    pub fs_socket_fd: Option<i32>,
    /// The engine's interface carried into the guest, on the TAP the VMM
    /// process inherits.
    pub network: Option<GuestNetwork>,
    /// The template to restore the VM from (a warm start; see
    /// [`crate::runtime::template`]), or `None` to boot the kernel.
    pub restore_from: Option<PathBuf>,
}

impl Machine {
    /// The guest device of the first disk with `role` (`/dev/vda`, …).
    pub fn device_of(&self, role: DiskRole) -> Option<String> {
        let index = self.disks.iter().position(|d| d.role == role)?;
        Some(guest_disk_device(index))
    }

    /// The VM configuration: vCPUs and memory from `spec`, the rest from
    /// this machine.
    fn vm_config(&self, spec: &VmSpec) -> VmConfig {
        let mut config = VmConfig::new(&self.kernel);
        config.initramfs = Some(self.initramfs.clone());
        config.vcpus = spec.vcpus;
        config.memory_mib = spec.memory_mib;
        config.disks = self
            .disks
            .iter()
            .map(|d| DiskConfig {
                path: d.path.clone(),
                read_only: d.read_only,
            })
            .collect();
        config.vsock = Some(VsockConfig {
            guest_cid: DEFAULT_GUEST_CID,
            uds_path: self.vsock.clone(),
        });
        config.host_quirks = self.host_quirks;
        config.serial_log = Some(self.console_log.clone());
        config.restore_from = self.restore_from.clone();
        config.fs = self
            .fs_socket_fd
            .map(|fd| FsConfig {
                tag: SHARE_TAG.into(),
                socket: None,
                socket_fd: Some(fd),
            })
            .into_iter()
            .collect();
        config.net = self.network.as_ref().map(|n| NetConfig {
            tap_name: None,
            tap_fd: Some(n.tap_fd),
            mac: Some(n.interface.mac.clone()),
            mtu: u16::try_from(n.interface.mtu).unwrap_or(u16::MAX),
        });
        config
    }
}

impl VmSpec {
    /// Reads the VM and container of `bundle` (already validated by
    /// [`Bundle::load`]).
    pub fn from_bundle(bundle: &Bundle) -> Result<VmSpec> {
        let spec = &bundle.spec;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| RuntimeError::Bundle {
                bundle: bundle.dir.clone(),
                message: "config.json: process: missing".into(),
            })?;
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let host_mib = crate::config::host_memory_mib()
            .map_err(|e| RuntimeError::io("cannot read the host's memory size", e))?;
        let readonly_root = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        Ok(VmSpec {
            bundle: bundle.dir.clone(),
            vcpus: vcpus(resources, host_cpus),
            memory_mib: memory_mib(resources, host_mib).map_err(|message| {
                RuntimeError::Bundle {
                    bundle: bundle.dir.clone(),
                    message: format!("config.json: {message}"),
                }
            })?,
            process: process_spec(process, bundle.resolve_user()?),
            hostname: spec.hostname().clone(),
            rootfs_transport: bundle.rootfs_transport,
            readonly_root,
            mounts: mounts(spec, readonly_root),
            pid_namespace: wants_pid_namespace(spec),
            network: network::mode(spec).map_err(|e| RuntimeError::Bundle {
                bundle: bundle.dir.clone(),
                message: e.to_string(),
            })?,
            sysctl: spec
                .linux()
                .as_ref()
                .and_then(|l| l.sysctl().clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    /// The VMM process's inputs for container `id` on `machine`: the VM
    /// configuration, finished and then validated, and the agent's
    /// `create` parameters, which name the guest devices of the disks.
    pub fn vmm_inputs(self, id: &str, machine: &Machine) -> Result<VmmInputs> {
        let bundle_error = |message: String| RuntimeError::Bundle {
            bundle: self.bundle.clone(),
            message,
        };
        let vm = machine.vm_config(&self);
        let host_mib = crate::config::host_memory_mib()
            .map_err(|e| RuntimeError::io("cannot read the host's memory size", e))?;
        vm.validate(host_mib)
            .map_err(|e| bundle_error(format!("VM configuration: {e}")))?;
        let shared = machine.fs_socket_fd.is_some();
        if !shared
            && (self.rootfs_transport == RootfsTransport::Virtiofs
                || !self.mounts.shares.is_empty())
        {
            return Err(RuntimeError::Failed(
                "the machine has no virtio-fs share for the rootfs or bind mounts".into(),
            ));
        }
        let rootfs = match self.rootfs_transport {
            RootfsTransport::Virtiofs => RootfsSpec {
                source: Some(ROOTFS_ENTRY.into()),
                fstype: RootfsType::Virtiofs,
                readonly: self.readonly_root,
                tag: Some(SHARE_TAG.into()),
            },
            RootfsTransport::Block => RootfsSpec {
                source: Some(machine.device_of(DiskRole::Rootfs).ok_or_else(|| {
                    RuntimeError::Failed("the machine has no rootfs disk".into())
                })?),
                fstype: RootfsType::Ext4,
                readonly: true,
                tag: None,
            },
        };
        let mut sysctl = self.sysctl;
        if machine.network.is_some() {
            for (key, value) in NETWORK_SYSCTL_DEFAULTS {
                sysctl
                    .entry(key.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        let container = CreateParams {
            container_id: id.to_string(),
            rootfs,
            process: self.process,
            hostname: self.hostname,
            shares: shared
                .then(|| ShareSpec {
                    tag: SHARE_TAG.into(),
                })
                .into_iter()
                .collect(),
            mounts: self.mounts.mounts,
            stdin: true,
            pid_namespace: self.pid_namespace,
            network: machine.network.as_ref().map(|n| NetworkSpec {
                interfaces: vec![n.interface.clone()],
            }),
            sysctl,
        };
        Ok(VmmInputs {
            vm,
            container,
            console_fd: machine.console_fd,
        })
    }
}

/// Whether the spec asks for a PID namespace (`linux.namespaces` has type
/// `pid`). A `path` (join an existing one) cannot be honoured across VMs:
/// the container gets a new one, which is what it shares with every
/// process of its VM.
fn wants_pid_namespace(spec: &oci_spec::runtime::Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::virtiofsd::ShareKind;
    use serde_json::json;

    fn resources(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cpu_and_memory() {
        assert_eq!(vcpus(None, 8), 1);
        assert_eq!(memory_mib(None, 4096), Ok(DEFAULT_CONTAINER_MEMORY_MIB));
        // The default must fit the host too.
        assert!(memory_mib(None, 256).is_err());
        let r = resources(json!({"cpu":{"quota":150000,"period":100000},
            "memory":{"limit": 200u64 << 20}}));
        assert_eq!(vcpus(Some(&r), 8), 2);
        assert_eq!(vcpus(Some(&r), 1), 1);
        assert_eq!(memory_mib(Some(&r), 4096), Ok(236));
        // More than the host has: an error naming both sizes, no clamp.
        let e = memory_mib(Some(&r), 100).unwrap_err();
        assert!(e.contains("236 MiB") && e.contains("100 MiB"), "{e}");
        assert!(e.starts_with("linux.resources.memory.limit"), "{e}");
        let r = resources(json!({"cpu":{"cpus":"0-2,5"},"memory":{"limit":1000}}));
        assert_eq!(vcpus(Some(&r), 8), 4);
        assert_eq!(memory_mib(Some(&r), 4096), Ok(MIN_CONTAINER_MEMORY_MIB));
        let unlimited = resources(json!({"memory":{"limit": -1}}));
        assert_eq!(
            memory_mib(Some(&unlimited), 4096),
            Ok(DEFAULT_CONTAINER_MEMORY_MIB)
        );
        let huge = resources(json!({"memory":{"limit": i64::MAX}}));
        assert!(memory_mib(Some(&huge), 4096).is_err());
    }

    #[test]
    fn rlimits_keep_the_spec_names() {
        let p: Process = serde_json::from_value(json!({"cwd":"/","user":{"uid":0,"gid":0},
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}]}))
        .unwrap();
        let spec = process_spec(&p, (0, 0));
        assert_eq!(spec.rlimits.len(), 1);
        assert_eq!(spec.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!((spec.rlimits[0].hard, spec.rlimits[0].soft), (1024, 512));
    }

    fn machine(disks: Vec<MachineDisk>, fs_socket_fd: Option<i32>) -> Machine {
        Machine {
            kernel: "/vmlinux".into(),
            initramfs: "/initramfs.cpio".into(),
            disks,
            vsock: "/vsock".into(),
            console_log: "/console.log".into(),
            host_quirks: HostQuirks::Off,
            console_fd: None,
            fs_socket_fd,
            network: None,
            restore_from: None,
        }
    }

    fn vm_spec(transport: RootfsTransport, readonly_root: bool, plan: MountPlan) -> VmSpec {
        VmSpec {
            bundle: "/b".into(),
            vcpus: 1,
            memory_mib: 64,
            process: ProcessSpec::default(),
            hostname: None,
            rootfs_transport: transport,
            readonly_root,
            mounts: plan,
            pid_namespace: true,
            network: NetworkMode::LoopbackOnly,
            sysctl: BTreeMap::new(),
        }
    }

    #[test]
    fn the_network_goes_to_the_vmm_and_the_agent() {
        let mut spec = vm_spec(RootfsTransport::Block, false, MountPlan::default());
        spec.network = NetworkMode::Join("/run/netns/x".into());
        let interface = capsa_agent::protocol::InterfaceSpec {
            name: "eth0".into(),
            mac: "02:42:0a:58:00:05".into(),
            mtu: 1500,
            addresses: vec!["10.88.0.5/16".into()],
            routes: Vec::new(),
        };
        let disk = MachineDisk {
            role: DiskRole::Rootfs,
            path: "/rootfs.ext4".into(),
            read_only: true,
        };
        let mut with_net = machine(vec![disk.clone()], None);
        with_net.network = Some(GuestNetwork {
            tap_fd: 7,
            interface: interface.clone(),
        });
        let inputs = spec.vmm_inputs("c", &with_net).unwrap();
        // The TAP for the VMM, the interface for the agent.
        let net = inputs.vm.net.as_ref().unwrap();
        assert_eq!(
            (net.tap_fd, net.mac.as_deref(), net.mtu),
            (Some(7), Some("02:42:0a:58:00:05"), 1500)
        );
        assert_eq!(
            inputs.container.network.as_ref().unwrap().interfaces,
            [interface]
        );
        // The guest's TSO default, and the spec's sysctls over it.
        assert_eq!(
            inputs.container.sysctl.get("net.ipv4.tcp_min_tso_segs"),
            Some(&"44".to_string())
        );
        let mut tuned = vm_spec(RootfsTransport::Block, false, MountPlan::default());
        tuned.network = NetworkMode::Join("/run/netns/x".into());
        tuned.sysctl = BTreeMap::from([
            ("net.ipv4.tcp_min_tso_segs".to_string(), "2".to_string()),
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        ]);
        let expected = tuned.sysctl.clone();
        let inputs = tuned.vmm_inputs("c", &with_net).unwrap();
        assert_eq!(inputs.container.sysctl, expected);
        // Without a network namespace to join: loopback only.
        let plain = vm_spec(RootfsTransport::Block, false, MountPlan::default());
        let inputs = plain.vmm_inputs("c", &machine(vec![disk], None)).unwrap();
        assert!(inputs.vm.net.is_none() && inputs.container.network.is_none());
        assert!(inputs.container.sysctl.is_empty());
    }

    #[test]
    fn block_rootfs_is_the_first_disk() {
        let spec = vm_spec(RootfsTransport::Block, false, MountPlan::default());
        let disk = MachineDisk {
            role: DiskRole::Rootfs,
            path: "/rootfs.ext4".into(),
            read_only: true,
        };
        let inputs = spec.vmm_inputs("c", &machine(vec![disk], None)).unwrap();
        let rootfs = &inputs.container.rootfs;
        assert_eq!(rootfs.source.as_deref(), Some("/dev/vda"));
        assert_eq!(rootfs.fstype, RootfsType::Ext4);
        assert!(inputs.container.shares.is_empty());
        assert!(inputs.vm.fs.is_empty());
        assert_eq!(inputs.vm.disks.len(), 1);
        assert!(inputs.vm.disks[0].read_only);
        assert_eq!(
            inputs.vm.serial_log.as_deref(),
            Some(std::path::Path::new("/console.log"))
        );
        assert_eq!(inputs.vm.host_quirks, HostQuirks::Off);
    }

    #[test]
    fn pid_namespace_when_the_spec_asks() {
        let spec = |ns: serde_json::Value| -> Spec {
            serde_json::from_value(json!({"ociVersion": "1.0.2", "linux": {"namespaces": ns}}))
                .unwrap()
        };
        assert!(wants_pid_namespace(&spec(
            json!([{"type": "mount"}, {"type": "pid"}])
        )));
        assert!(wants_pid_namespace(&spec(
            json!([{"type": "pid", "path": "/proc/1/ns/pid"}])
        )));
        assert!(!wants_pid_namespace(&spec(json!([{"type": "network"}]))));
        let bare: Spec = serde_json::from_value(json!({"ociVersion": "1.0.2"})).unwrap();
        assert!(!wants_pid_namespace(&bare));
    }

    #[test]
    fn virtiofs_rootfs_is_the_share_root_entry() {
        let spec = vm_spec(RootfsTransport::Virtiofs, true, MountPlan::default());
        let inputs = spec.vmm_inputs("c", &machine(Vec::new(), Some(7))).unwrap();
        let rootfs = &inputs.container.rootfs;
        assert_eq!(rootfs.fstype, RootfsType::Virtiofs);
        assert_eq!(rootfs.tag.as_deref(), Some(SHARE_TAG));
        assert_eq!(rootfs.source.as_deref(), Some(ROOTFS_ENTRY));
        assert!(rootfs.readonly);
        assert_eq!(
            inputs.container.shares,
            [ShareSpec {
                tag: SHARE_TAG.into()
            }]
        );
        assert!(inputs.vm.disks.is_empty());
        assert_eq!(
            inputs.vm.fs,
            [FsConfig {
                tag: SHARE_TAG.into(),
                socket: None,
                socket_fd: Some(7),
            }]
        );
        // Without the share, nothing works: an error, not a guest that
        // cannot mount its root.
        let spec = vm_spec(RootfsTransport::Virtiofs, false, MountPlan::default());
        assert!(spec.vmm_inputs("c", &machine(Vec::new(), None)).is_err());
    }

    #[test]
    fn mount_translation() {
        let d = tempfile::tempdir().unwrap();
        let hosts = d.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind","rprivate","ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/nonexistent", "options": ["bind"]},
                {"destination": "/x", "type": "bind", "source": "/nonexistent"},
                {"destination": "/data", "type": "none", "source": data, "options": ["rbind","ro","rw","nosuid","nodev","noexec"]}
            ]
        }))
        .unwrap();
        let plan = mounts(&spec, true);
        assert_eq!(plan.shares.len(), 2);
        let (h, v) = (&plan.shares[0], &plan.shares[1]);
        assert_eq!(
            (h.name.as_str(), &h.source, h.kind),
            ("m0", &hosts, ShareKind::File)
        );
        assert!(h.readonly && !h.nosuid);
        assert_eq!(
            (v.name.as_str(), &v.source, v.kind),
            ("m1", &data, ShareKind::Dir)
        );
        assert!(
            !v.readonly && v.nosuid && v.nodev && v.noexec,
            "the last of ro/rw wins"
        );
        let dests: Vec<&str> = plan.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(dests, ["/proc", "/etc/hosts", "/dev/shm", "/data", "/"]);
        assert_eq!(
            plan.mounts[1].source.as_deref(),
            Some("/run/capsa/fs/capsa/m0")
        );
        assert_eq!(plan.mounts[1].options, ["rbind", "ro"]);
        assert_eq!(plan.mounts[2].kind.as_deref(), Some("tmpfs"));
        assert_eq!(
            plan.mounts[3].source.as_deref(),
            Some("/run/capsa/fs/capsa/m1")
        );
        assert_eq!(plan.mounts[4].options, ["rbind", "ro"]);
        assert_eq!(mounts(&spec, false).mounts.len(), 4);
    }
}
