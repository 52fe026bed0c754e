//! The runtime spec turned into a machine and a container, in two steps:
//! [`VmSpec::from_bundle`] reads what the bundle asks for (vCPUs and memory
//! from `linux.resources`, the process, hostname and mounts), and
//! [`VmSpec::vmm_inputs`] combines it with the [`Machine`] `create`
//! prepared (kernel, initramfs, disks, vsock, as the VMM sees them) into
//! the [`VmmInputs`]: the finished [`VmConfig`], validated, and the agent's
//! `create` parameters. See docs/runtime.md for what each field of
//! `config.json` does in a VM.

use std::path::{Path, PathBuf};

use capsa_agent::protocol::{
    ConsoleSize, CreateParams, MountSpec, ProcessSpec, Rlimit, RootfsSpec, RootfsType, User,
};
use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::bundle::Bundle;
use super::vmm_process::VmmInputs;
use super::{Result, RuntimeError};
use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::config::{
    guest_disk_device, DiskConfig, HostQuirks, VmConfig, VsockConfig, DEFAULT_GUEST_CID,
    DEFAULT_VCPUS,
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

/// Where the guest mounts the disk of bind-mounted host files, inside the
/// container's root (visible to the container; see docs/runtime.md).
pub const BINDS_DESTINATION: &str = "/.capsa-binds";
/// The agent's mount point of the container root in the guest (the
/// agent's `RUN_DIR/rootfs`, guest-agent/src/guest/storage.rs).
pub const GUEST_ROOTFS: &str = "/run/capsa/rootfs";

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

/// Mounts for the agent, and the host files that bind mounts need copied
/// into the binds disk (`(host source, name in the disk)`).
#[derive(Debug, Default, Clone)]
pub struct MountPlan {
    /// In order, for the agent, without the mount of the binds disk
    /// itself (see [`MountPlan::into_mounts`]).
    pub mounts: Vec<MountSpec>,
    /// Host paths to copy into the binds disk, with their names there.
    pub binds: Vec<(PathBuf, String)>,
}

impl MountPlan {
    /// The agent's mounts, given the guest device of the binds disk
    /// (`None` without binds): that disk is mounted first, at
    /// [`BINDS_DESTINATION`], as the bind mounts after it take their
    /// sources from it.
    pub fn into_mounts(self, binds_device: Option<String>) -> Vec<MountSpec> {
        let Some(device) = binds_device else {
            return self.mounts;
        };
        let mut mounts = vec![MountSpec {
            destination: BINDS_DESTINATION.into(),
            kind: Some("ext4".into()),
            source: Some(device),
            options: vec!["nosuid".into(), "nodev".into()],
        }];
        mounts.extend(self.mounts);
        mounts
    }
}

/// Translates the spec's mounts (see docs/runtime.md § Mounts).
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
        let copyable = std::fs::metadata(&source)
            .map(|md| md.is_file() || md.is_dir())
            .unwrap_or(false);
        if !copyable {
            tracing::warn!(
                %destination, source = %source.display(),
                "bind mount of something that is not a file or directory skipped"
            );
            continue;
        }
        let name = format!("b{}", plan.binds.len());
        rest.push(MountSpec {
            destination,
            kind: Some("bind".into()),
            source: Some(format!("{GUEST_ROOTFS}{BINDS_DESTINATION}/{name}")),
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
        plan.binds.push((source, name));
    }
    plan.mounts = rest;
    if readonly_root {
        // The agent always gives a read-only disk a writable overlay; a
        // recursive read-only bind of the root on itself, last, makes the
        // container's root read-only and keeps the mounts below writable.
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
    /// The mounts, and the host files bind mounts need in the binds disk.
    pub mounts: MountPlan,
}

/// What a disk is for in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRole {
    /// The container's root filesystem (an ext4 image, read-only).
    Rootfs,
    /// The copies of bind-mounted host files ([`binds_image`]).
    Binds,
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
            mounts: mounts(spec, readonly_root),
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
        let rootfs = machine
            .device_of(DiskRole::Rootfs)
            .ok_or_else(|| RuntimeError::Failed("the machine has no rootfs disk".into()))?;
        let container = CreateParams {
            container_id: id.to_string(),
            rootfs: RootfsSpec {
                source: Some(rootfs),
                fstype: RootfsType::Ext4,
                readonly: true,
                tag: None,
            },
            process: self.process,
            hostname: self.hostname,
            mounts: self.mounts.into_mounts(machine.device_of(DiskRole::Binds)),
            stdin: true,
        };
        Ok(VmmInputs {
            vm,
            container,
            console_fd: machine.console_fd,
        })
    }
}

/// Builds the binds disk for `plan` in `state_dir`; `None` without binds.
pub fn binds_image(plan: &MountPlan, state_dir: &Path) -> Result<Option<PathBuf>> {
    if plan.binds.is_empty() {
        return Ok(None);
    }
    let dir = state_dir.join("binds");
    std::fs::create_dir_all(&dir)
        .map_err(|e| RuntimeError::io(format!("mkdir {}", dir.display()), e))?;
    for (source, name) in &plan.binds {
        super::rootfs::copy_into(source, &dir.join(name))?;
    }
    let image = state_dir.join("binds.ext4");
    super::rootfs::build_ext4(&dir, &image)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(image))
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn disks_are_named_in_their_order() {
        let disk = |role, name: &str| MachineDisk {
            role,
            path: name.into(),
            read_only: role == DiskRole::Rootfs,
        };
        let spec = VmSpec {
            bundle: "/b".into(),
            vcpus: 1,
            memory_mib: 64,
            process: ProcessSpec::default(),
            hostname: None,
            mounts: MountPlan {
                mounts: Vec::new(),
                binds: vec![("/etc/hosts".into(), "b0".into())],
            },
        };
        let machine = Machine {
            kernel: "/vmlinux".into(),
            initramfs: "/initramfs.cpio".into(),
            disks: vec![
                disk(DiskRole::Rootfs, "/rootfs.ext4"),
                disk(DiskRole::Binds, "/binds.ext4"),
            ],
            vsock: "/vsock".into(),
            console_log: "/console.log".into(),
            host_quirks: HostQuirks::Off,
            console_fd: None,
        };
        let inputs = spec.vmm_inputs("c", &machine).unwrap();
        assert_eq!(inputs.container.rootfs.source.as_deref(), Some("/dev/vda"));
        assert_eq!(inputs.container.mounts[0].destination, BINDS_DESTINATION);
        assert_eq!(
            inputs.container.mounts[0].source.as_deref(),
            Some("/dev/vdb")
        );
        assert_eq!(inputs.vm.disks.len(), 2);
        assert!(inputs.vm.disks[0].read_only && !inputs.vm.disks[1].read_only);
        assert_eq!(
            inputs.vm.serial_log.as_deref(),
            Some(Path::new("/console.log"))
        );
        assert_eq!(inputs.vm.host_quirks, HostQuirks::Off);
    }

    #[test]
    fn mount_translation() {
        let d = tempfile::tempdir().unwrap();
        let hosts = d.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind","rprivate","ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/nonexistent", "options": ["bind"]},
                {"destination": "/x", "type": "bind", "source": "/nonexistent"}
            ]
        }))
        .unwrap();
        let plan = mounts(&spec, true);
        assert_eq!(plan.binds, vec![(hosts, "b0".to_string())]);
        let mounts = plan.into_mounts(Some("/dev/vdb".into()));
        let dests: Vec<&str> = mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            [BINDS_DESTINATION, "/proc", "/etc/hosts", "/dev/shm", "/"]
        );
        assert_eq!(mounts[2].options, ["rbind", "ro"]);
        assert_eq!(mounts[3].kind.as_deref(), Some("tmpfs"));
    }
}
