//! The runtime spec turned into a machine and a container: the
//! [`VmConfig`] of the micro-VM (vCPUs and memory from
//! `linux.resources`, disks, vsock) and the agent's `create` parameters
//! (process, hostname, mounts). See docs/runtime.md for what each field of
//! `config.json` does in a VM.

use std::path::{Path, PathBuf};

use capsa_agent::protocol::{
    ConsoleSize, CreateParams, MountSpec, ProcessSpec, Rlimit, RootfsSpec, RootfsType, User,
};
use oci_spec::runtime::{Process, Spec};
use serde_json::Value;

use super::bundle::Bundle;
use super::{Result, RuntimeError};
use crate::config::{DiskConfig, VmConfig, VsockConfig, DEFAULT_GUEST_CID};

/// Default vCPUs when the spec sets no CPU limit.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest RAM when the spec sets no memory limit, MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// Smallest guest RAM capsa gives a container, MiB.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Guest RAM added to `linux.resources.memory.limit` for the guest kernel
/// and the agent, MiB.
pub const MEMORY_OVERHEAD_MIB: u32 = 32;
/// Most vCPUs of one VM.
pub const MAX_VCPUS: u8 = 32;

/// Where the guest mounts the disk of bind-mounted host files, inside the
/// container's root (visible to the container; see docs/runtime.md).
pub const BINDS_DESTINATION: &str = "/.capsa-binds";
/// The agent's mount point of the container root in the guest (the
/// agent's `RUN_DIR/rootfs`, guest-agent/src/guest/storage.rs).
pub const GUEST_ROOTFS: &str = "/run/capsa/rootfs";

/// vCPUs for `linux.resources.cpu`: `quota/period` rounded up, else the
/// number of CPUs in `cpus` (a cpuset list), else [`DEFAULT_VCPUS`];
/// clamped to 1..=min(host CPUs, 32). `shares` are relative weights and
/// do not size the VM.
pub fn vcpus(spec: &Value, host_cpus: usize) -> u8 {
    let cpu = &spec["linux"]["resources"]["cpu"];
    let quota = cpu["quota"].as_i64().unwrap_or(0);
    let period = cpu["period"].as_u64().unwrap_or(0);
    let wanted = if quota > 0 && period > 0 {
        (quota as u64).div_ceil(period)
    } else if let Some(set) = cpu["cpus"].as_str().filter(|s| !s.is_empty()) {
        cpuset_count(set)
    } else {
        u64::from(DEFAULT_VCPUS)
    };
    let max = (host_cpus.max(1) as u64).min(u64::from(MAX_VCPUS));
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

/// Guest RAM for `linux.resources.memory.limit` (bytes): the limit in MiB
/// (rounded up) plus [`MEMORY_OVERHEAD_MIB`], at least [`MIN_MEMORY_MIB`],
/// at most the host's memory; [`DEFAULT_MEMORY_MIB`] without a limit.
pub fn memory_mib(spec: &Value, host_mib: u64) -> u32 {
    let limit = spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .unwrap_or(0);
    let mib = if limit > 0 {
        (limit as u64).div_ceil(1 << 20) + u64::from(MEMORY_OVERHEAD_MIB)
    } else {
        u64::from(DEFAULT_MEMORY_MIB)
    };
    mib.max(u64::from(MIN_MEMORY_MIB))
        .min(host_mib.max(u64::from(MIN_MEMORY_MIB)))
        .min(u64::from(u32::MAX)) as u32
}

/// The agent's process spec for an OCI process; `user` is the resolved
/// `(uid, gid)`.
pub fn process_spec(p: &Process, user: (u32, u32)) -> ProcessSpec {
    let v = serde_json::to_value(p).unwrap_or(Value::Null);
    let rlimits = v["rlimits"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some(Rlimit {
                        kind: r["type"].as_str()?.to_string(),
                        hard: r["hard"].as_u64().unwrap_or(0),
                        soft: r["soft"].as_u64().unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
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
#[derive(Debug, Default)]
pub struct MountPlan {
    /// In order, for the agent.
    pub mounts: Vec<MountSpec>,
    /// Host paths to copy into the binds disk, with their names there.
    pub binds: Vec<(PathBuf, String)>,
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
    if !plan.binds.is_empty() {
        plan.mounts.push(MountSpec {
            destination: BINDS_DESTINATION.into(),
            kind: Some("ext4".into()),
            source: Some("/dev/vdb".into()),
            options: vec!["nosuid".into(), "nodev".into()],
        });
    }
    plan.mounts.extend(rest);
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

/// Files the VM needs from the host.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Agent initramfs.
    pub initramfs: PathBuf,
    /// Rootfs image (ext4).
    pub rootfs_image: PathBuf,
    /// Binds image, when the spec has bind mounts.
    pub binds_image: Option<PathBuf>,
    /// Hybrid vsock socket.
    pub vsock: PathBuf,
}

/// The VM configuration for `bundle`.
pub fn vm_config(bundle: &Bundle, machine: &Machine) -> Result<VmConfig> {
    let v = serde_json::to_value(&bundle.spec).unwrap_or(Value::Null);
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let host_mib = crate::config::host_memory_mib().unwrap_or(u64::from(DEFAULT_MEMORY_MIB));
    let mut config = VmConfig::new(&machine.kernel);
    config.initramfs = Some(machine.initramfs.clone());
    config.vcpus = vcpus(&v, host_cpus);
    config.memory_mib = memory_mib(&v, host_mib);
    config.disks.push(DiskConfig {
        path: machine.rootfs_image.clone(),
        read_only: true,
    });
    if let Some(b) = &machine.binds_image {
        config.disks.push(DiskConfig {
            path: b.clone(),
            read_only: false,
        });
    }
    config.vsock = Some(VsockConfig {
        guest_cid: DEFAULT_GUEST_CID,
        uds_path: machine.vsock.clone(),
    });
    config
        .validate(host_mib)
        .map_err(|e| RuntimeError::Bundle {
            bundle: bundle.dir.clone(),
            message: format!("VM configuration: {e}"),
        })?;
    Ok(config)
}

/// The agent's `create` parameters for `bundle`.
pub fn create_params(id: &str, bundle: &Bundle, mounts: Vec<MountSpec>) -> Result<CreateParams> {
    let process = bundle
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::Bundle {
            bundle: bundle.dir.clone(),
            message: "config.json: process: missing".into(),
        })?;
    Ok(CreateParams {
        container_id: id.to_string(),
        rootfs: RootfsSpec {
            source: Some("/dev/vda".into()),
            fstype: RootfsType::Ext4,
            readonly: true,
            tag: None,
        },
        process: process_spec(process, bundle.resolve_user()?),
        hostname: bundle.spec.hostname().clone(),
        mounts,
        stdin: true,
        network: None,
    })
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

    #[test]
    fn cpu_and_memory() {
        let none = json!({});
        assert_eq!(vcpus(&none, 8), 1);
        assert_eq!(memory_mib(&none, 4096), 128);
        let s = json!({"linux":{"resources":{"cpu":{"quota":150000,"period":100000},
            "memory":{"limit": 200u64 << 20}}}});
        assert_eq!(vcpus(&s, 8), 2);
        assert_eq!(vcpus(&s, 1), 1);
        assert_eq!(memory_mib(&s, 4096), 232);
        assert_eq!(memory_mib(&s, 100), 100);
        let s = json!({"linux":{"resources":{"cpu":{"cpus":"0-2,5"},"memory":{"limit":1000}}}});
        assert_eq!(vcpus(&s, 8), 4);
        assert_eq!(memory_mib(&s, 4096), MIN_MEMORY_MIB);
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
        let dests: Vec<&str> = plan.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            [BINDS_DESTINATION, "/proc", "/etc/hosts", "/dev/shm", "/"]
        );
        assert_eq!(plan.mounts[2].options, ["rbind", "ro"]);
        assert_eq!(plan.mounts[3].kind.as_deref(), Some("tmpfs"));
    }
}
