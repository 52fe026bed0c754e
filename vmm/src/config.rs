//! The VM configuration: one serde struct, given as flags of `capsa vmm` or
//! as a JSON file (`capsa vmm --config vm.json`). Unknown fields are
//! rejected; every value is validated before anything is created, and an
//! invalid one is an error naming the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::mptable::MAX_CPUS;

/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// Smallest guest memory in MiB that the shipped kernel boots with.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Default kernel command line, before capsa adds its own parameters
/// (devices, console, host quirks). `noreplace-smp` and `rodata=off` are
/// boot-time cuts (docs/kernel.md, "The boot diet"): no LOCK-prefix
/// patching on one vCPU, and no read-only remapping of the kernel image
/// (`mark_rodata_ro`, ~5% of a boot where guest kernel mode is emulated;
/// the hypervisor, not the guest kernel's own page protections, is the
/// isolation boundary). `cgroup.memory=nokmem` turns off kernel-memory
/// accounting in the guest's memory cgroups: the container's cgroup made
/// the per-CPU allocator build and zero a second chunk on every start
/// (~0.6 s of emulated guest time); kernel memory stays bounded by the
/// VM's RAM. `percpu_alloc=page` builds the per-CPU first chunk from
/// 4 KiB pages: the default embedding rounds each CPU's unit up to a 2 MiB
/// huge page, which the boot zeroes (~1 s of emulated guest time).
pub const DEFAULT_CMDLINE: &str =
    "reboot=k panic=-1 nomodule i8042.noaux no_timer_check tsc=reliable \
     init_on_alloc=0 rcupdate.rcu_expedited=1 noreplace-smp rodata=off \
     cgroup.memory=nokmem percpu_alloc=page quiet";

/// How to pick the kernel's entry point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// The PVH entry when the vmlinux announces one, the 64-bit entry
    /// otherwise (always for a bzImage).
    #[default]
    Auto,
    /// The PVH entry (vmlinux with `XEN_ELFNOTE_PHYS32_ENTRY` only).
    Pvh,
    /// The 64-bit Linux boot protocol entry.
    Linux64,
}

/// Whether to apply the workarounds for PVM hosts (see `pvm.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostQuirks {
    /// Detect the host (`/sys/module/kvm_pvm`).
    #[default]
    Auto,
    /// Always apply them.
    On,
    /// Never apply them.
    Off,
}

/// Everything needed to create and boot one micro-VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an uncompressed ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// Initramfs (a cpio archive), loaded at the top of low memory.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line; [`DEFAULT_CMDLINE`] when absent. capsa appends
    /// the device announcements and, on PVM hosts, the quirk parameters.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Number of vCPUs, 1 to 32.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB, at least [`MIN_MEMORY_MIB`] and at most the
    /// host's memory.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Connect the guest's serial port (COM1, `console=ttyS0`) to stdout.
    #[serde(default)]
    pub serial_console: bool,
    /// Write the guest's serial console (COM1, `console=ttyS0`) to this
    /// file (appending) instead of stdout. Ignored with `serial_console`.
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// Print the boot-timer marks (time from VMM start to guest init) on
    /// stderr.
    #[serde(default)]
    pub boot_timer: bool,
    /// Entry point selection.
    #[serde(default)]
    pub boot_protocol: BootProtocol,
    /// PVM host workarounds.
    #[serde(default)]
    pub host_quirks: HostQuirks,
    /// Block devices (virtio-blk), in order: the guest names disk `i`
    /// [`guest_disk_device`]`(i)` (`/dev/vda`, `/dev/vdb`, …).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// The vsock device (virtio-vsock with the hybrid Unix-socket backend).
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Offer a virtio-rng device fed from the host's getrandom.
    #[serde(default = "default_true")]
    pub rng: bool,
    /// virtio-fs shares served by vhost-user backends (virtiofsd).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// A network device (virtio-net backed by a TAP).
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Sample where the vCPUs spend their time and write a report when the
    /// VM ends (docs/kernel.md, "Profiling the boot").
    #[serde(default)]
    pub profile: Option<ProfileConfig>,
    /// Take a snapshot of the running VM (docs/snapshot.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotConfig>,
    /// Start from the snapshot in this directory instead of booting
    /// `kernel` (docs/snapshot.md): vCPUs, memory and the guest's state
    /// come from the snapshot; the device backends (disk files, the vsock
    /// socket, the TAP) from this configuration, whose device list must
    /// match the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// Free virtio-mmio slots announced on the kernel command line after
    /// the devices (DeviceID 0: the guest leaves them unbound), where a VM
    /// restored from a snapshot of this one can be given devices of its
    /// own (docs/snapshot.md, "Devices added at restore"). At most
    /// [`MAX_FREE_SLOTS`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub free_slots: u8,
}

/// Upper bound of [`VmConfig::free_slots`].
pub const MAX_FREE_SLOTS: u8 = 16;

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// When and how to snapshot a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The snapshot directory (created if missing; its `state` and
    /// `memory` files are replaced).
    pub dir: PathBuf,
    /// When to take it. A `SIGUSR1` to the VMM also takes one, whatever
    /// this says.
    #[serde(default)]
    pub when: SnapshotWhen,
    /// What the VM does once the snapshot is written.
    #[serde(default)]
    pub then: SnapshotThen,
}

/// The moment a snapshot is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotWhen {
    /// When the guest agent reports it listens on vsock (its boot-timer
    /// mark): the point a VM template needs.
    #[default]
    AgentReady,
    /// Only when the VMM receives `SIGUSR1`.
    Signal,
    /// This many milliseconds after the VM starts running (at most one
    /// day).
    AfterMs(u64),
}

/// What a VM does after its snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotThen {
    /// The VMM exits with status 0 (the snapshot is the VM).
    #[default]
    Exit,
    /// The VM runs on.
    Continue,
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd); the
/// guest mounts it with `mount -t virtiofs TAG DIR`. The backend is
/// reached through exactly one of `socket` and `socket_fd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag: 1 to 36 bytes, no NUL, unique among the VM's shares.
    pub tag: String,
    /// The backend's listening Unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// An inherited descriptor (3 or more) of a Unix socket already
    /// connected to the backend (how `capsa create` hands the jailed VMM
    /// its virtiofsd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_fd: Option<i32>,
}

impl std::str::FromStr for FsConfig {
    type Err = String;

    /// Parses `tag=TAG,socket=PATH` (or `tag=TAG,fd=N`) as `--fs` takes it.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut fs = FsConfig {
            tag: String::new(),
            socket: None,
            socket_fd: None,
        };
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tag", v)) => fs.tag = v.to_owned(),
                Some(("socket", v)) => fs.socket = Some(PathBuf::from(v)),
                Some(("fd", v)) => {
                    fs.socket_fd = Some(v.parse().map_err(|_| format!("--fs: bad fd `{v}`"))?)
                }
                _ => {
                    return Err(format!(
                        "unknown --fs part `{part}` (expected tag=TAG,socket=PATH)"
                    ))
                }
            }
        }
        if fs.tag.is_empty() || fs.socket.is_none() == fs.socket_fd.is_none() {
            return Err("--fs needs tag=TAG and one of socket=PATH, fd=N".into());
        }
        Ok(fs)
    }
}

/// A virtio-net device backed by a TAP interface (one of `tap_name` and
/// `tap_fd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Attach to (or create) the TAP interface of this name in the VMM's
    /// network namespace (needs `CAP_NET_ADMIN`, or a persistent TAP
    /// owned by the VMM's user, e.g. `ip tuntap add NAME mode tap user U
    /// vnet_hdr`).
    #[serde(default)]
    pub tap_name: Option<String>,
    /// An inherited TAP descriptor (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`),
    /// as `capsa create` hands the one it made to the jailed VMM.
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`; a random locally
    /// administered one when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// The MTU offered to the guest (68 to 65532).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

/// Default MTU of the guest's network device.
pub const DEFAULT_MTU: u16 = 1500;

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    capsa_agent::server::network::parse_mac(s)
}

/// The guest profiler (`vmm/src/profile/`): every `interval_ms`, each
/// vCPU's instruction pointer is sampled; at the end of the VM the samples
/// are named with the kernel's `System.map` and written to `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The report file (created or truncated).
    pub path: PathBuf,
    /// Sampling interval in milliseconds, 1 to 10000.
    #[serde(default = "default_profile_interval_ms")]
    pub interval_ms: u32,
    /// The kernel's `System.map`; by default the one next to the kernel
    /// (as `kernel-config/build.sh` leaves it). Without one, kernel
    /// addresses stay unnamed.
    #[serde(default)]
    pub system_map: Option<PathBuf>,
}

/// Default sampling interval of the guest profiler, ms.
pub const DEFAULT_PROFILE_INTERVAL_MS: u32 = 10;

fn default_profile_interval_ms() -> u32 {
    DEFAULT_PROFILE_INTERVAL_MS
}

/// A virtio-blk disk backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The backing file (a raw image; its size is the disk's capacity).
    pub path: PathBuf,
    /// Offer the disk read-only (`VIRTIO_BLK_F_RO`); guest writes fail.
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// Parses `PATH[,ro]` as `--disk` takes it.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some((_, opt)) => {
                return Err(format!("unknown disk option `{opt}` (expected ro or rw)"))
            }
            None => (s, false),
        };
        if path.is_empty() {
            return Err("empty disk path".into());
        }
        Ok(Self {
            path: path.into(),
            read_only,
        })
    }
}

/// The guest's device node of disk `index` of [`VmConfig::disks`]:
/// `/dev/vda` for 0, … `/dev/vdz`, `/dev/vdaa`, … (Linux names virtio-blk
/// disks in probe order, `virtblk_name_format` in
/// `drivers/block/virtio_blk.c`; capsa announces its virtio-mmio devices
/// disks first, in list order).
pub fn guest_disk_device(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("/dev/vd{}", String::from_utf8_lossy(&suffix))
}

/// The guest CID capsa gives a VM unless told otherwise.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// virtio-vsock with Firecracker's hybrid backend: host programs connect
/// to `uds_path` and write `CONNECT <port>`; guest connections to host
/// port P reach a listener at `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    #[serde(default = "default_guest_cid")]
    pub guest_cid: u32,
    /// The Unix socket the VMM listens on.
    pub uds_path: PathBuf,
}

fn default_guest_cid() -> u32 {
    DEFAULT_GUEST_CID
}

fn default_true() -> bool {
    true
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

/// A configuration value that cannot work, with the field it is in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, as named in the JSON file (`memory_mib`, `kernel`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid configuration; the message names the field.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The field path and the problem, e.g. `vcpus: invalid type …`.
        message: String,
    },
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: None,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial_console: false,
            serial_log: None,
            boot_timer: false,
            boot_protocol: BootProtocol::Auto,
            host_quirks: HostQuirks::Auto,
            disks: Vec::new(),
            vsock: None,
            rng: true,
            fs: Vec::new(),
            net: None,
            profile: None,
            snapshot: None,
            restore_from: None,
            free_slots: 0,
        }
    }

    /// The virtio devices this configuration attaches, free slots not
    /// counted.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.vsock.is_some())
            + usize::from(self.rng)
            + self.disks.len()
            + self.fs.len()
            + usize::from(self.net.is_some())
    }

    /// Parses a JSON configuration. Errors name the field.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }
        })
    }

    /// Reads and parses a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|message| ConfigFileError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Checks the virtio-fs shares: tags that fit the configuration space
    /// and are unique, and exactly one way to reach each backend.
    fn validate_fs(&self) -> Result<(), ConfigError> {
        let mut tags = std::collections::HashSet::new();
        for fs in &self.fs {
            if let Err(e) = capsa_devices::virtio::fs::encode_tag(&fs.tag) {
                return Err(ConfigError::new("fs.tag", e.to_string()));
            }
            if !tags.insert(fs.tag.as_str()) {
                return Err(ConfigError::new(
                    "fs.tag",
                    format!("{:?} is used by two shares", fs.tag),
                ));
            }
            match (&fs.socket, fs.socket_fd) {
                (Some(p), None) if !p.as_os_str().is_empty() => {}
                (None, Some(fd)) if fd >= 3 => {}
                (None, Some(fd)) => {
                    return Err(ConfigError::new(
                        "fs.socket_fd",
                        format!("{fd} is not an inherited descriptor (3 or more)"),
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        "fs.socket",
                        "exactly one of socket and socket_fd is required",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Checks every value that does not need the files opened: counts and
    /// sizes against the limits of capsa and of this host
    /// (`host_memory_mib`, from /proc/meminfo).
    pub fn validate(&self, host_memory_mib: u64) -> Result<(), ConfigError> {
        self.validate_snapshot()?;
        if self.kernel.as_os_str().is_empty() && self.restore_from.is_none() {
            return Err(ConfigError::new("kernel", "is required"));
        }
        if self.vcpus == 0 {
            return Err(ConfigError::new("vcpus", "must be at least 1"));
        }
        if self.vcpus > MAX_CPUS {
            return Err(ConfigError::new(
                "vcpus",
                format!("{} is more than the maximum of {MAX_CPUS}", self.vcpus),
            ));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::new(
                "memory_mib",
                format!(
                    "{} MiB is less than the minimum of {MIN_MEMORY_MIB} MiB",
                    self.memory_mib
                ),
            ));
        }
        if u64::from(self.memory_mib) > host_memory_mib {
            return Err(ConfigError::new(
                "memory_mib",
                format!(
                    "{} MiB is more than this host's memory ({host_memory_mib} MiB)",
                    self.memory_mib
                ),
            ));
        }
        for disk in &self.disks {
            if disk.path.as_os_str().is_empty() {
                return Err(ConfigError::new("disks", "a disk has an empty path"));
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        if let Some(net) = &self.net {
            net.validate()?;
        }
        self.validate_fs()?;
        if let Some(profile) = &self.profile {
            if profile.path.as_os_str().is_empty() {
                return Err(ConfigError::new("profile.path", "is required"));
            }
            if !(1..=10_000).contains(&profile.interval_ms) {
                return Err(ConfigError::new(
                    "profile.interval_ms",
                    format!("{} is outside 1 to 10000", profile.interval_ms),
                ));
            }
        }
        if let Some(cmdline) = &self.cmdline {
            if cmdline.bytes().any(|b| b == 0 || b == b'\n') {
                return Err(ConfigError::new(
                    "cmdline",
                    "must not contain NUL or newline characters",
                ));
            }
        }
        Ok(())
    }
}

impl VmConfig {
    fn validate_snapshot(&self) -> Result<(), ConfigError> {
        if let Some(snap) = &self.snapshot {
            if snap.dir.as_os_str().is_empty() {
                return Err(ConfigError::new("snapshot.dir", "is required"));
            }
            if let SnapshotWhen::AfterMs(ms) = snap.when {
                if ms > 86_400_000 {
                    return Err(ConfigError::new(
                        "snapshot.when",
                        format!("after-ms {ms} is more than a day"),
                    ));
                }
            }
            if !self.fs.is_empty() {
                return Err(ConfigError::new(
                    "snapshot",
                    "a VM with virtio-fs shares cannot be snapshotted (vhost-user backends' state is not saved; not supported yet)",
                ));
            }
        }
        if let Some(dir) = &self.restore_from {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::new("restore_from", "is empty"));
            }
        }
        if self.free_slots > MAX_FREE_SLOTS {
            return Err(ConfigError::new(
                "free_slots",
                format!("{} is more than {MAX_FREE_SLOTS}", self.free_slots),
            ));
        }
        Ok(())
    }
}

impl VsockConfig {
    /// Checks the CID and the socket path (errors name `vsock.<field>`).
    fn validate(&self) -> Result<(), ConfigError> {
        // CIDs 0-2 are the hypervisor, local and host; u32::MAX is "any".
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return Err(ConfigError::new(
                "vsock.guest_cid",
                format!("{} is reserved (use 3 to 4294967294)", self.guest_cid),
            ));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::new("vsock.uds_path", "is required"));
        }
        // sockaddr_un holds 108 bytes including the NUL, and guest
        // connections use `<uds_path>_<port>` (up to 11 more bytes).
        if self.uds_path.as_os_str().len() > 107 - 11 {
            return Err(ConfigError::new(
                "vsock.uds_path",
                "is too long for a Unix socket path (at most 96 bytes)",
            ));
        }
        Ok(())
    }
}

impl NetConfig {
    /// Checks the TAP (exactly one of name and fd), the MAC and the MTU
    /// (errors name `net.<field>`).
    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tap_name, self.tap_fd) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ConfigError::new(
                    "net",
                    "give exactly one of tap_name and tap_fd",
                ))
            }
            (Some(name), None) if !capsa_devices::virtio::net::tap::valid_name(name) => {
                return Err(ConfigError::new(
                    "net.tap_name",
                    format!("{name:?} is not an interface name (1 to 15 bytes)"),
                ))
            }
            (None, Some(fd)) if fd < 3 => {
                return Err(ConfigError::new(
                    "net.tap_fd",
                    format!("{fd} is a standard stream, not a TAP"),
                ))
            }
            _ => {}
        }
        if let Some(mac) = &self.mac {
            if parse_mac(mac).is_none() {
                return Err(ConfigError::new(
                    "net.mac",
                    format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                ));
            }
        }
        let max = (capsa_devices::virtio::net::MAX_FRAME_LEN - 18) as u16;
        if !(capsa_devices::virtio::net::MIN_MTU..=max).contains(&self.mtu) {
            return Err(ConfigError::new(
                "net.mtu",
                format!("{} is outside 68 to {max}", self.mtu),
            ));
        }
        Ok(())
    }
}

/// The host's memory in MiB, from `MemTotal` in /proc/meminfo.
pub fn host_memory_mib() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or_else(|| std::io::Error::other("no MemTotal in /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_defaults() {
        let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = VmConfig::from_json(r#"{"kernel": "/k", "mem": 5}"#).unwrap_err();
        assert!(e.contains("unknown field `mem`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = VmConfig::from_json(r#"{"kernel": "/k", "vcpus": 300}"#).unwrap_err();
        assert!(e.starts_with("vcpus: "), "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "boot_protocol": "uefi"}"#).unwrap_err();
        assert!(e.starts_with("boot_protocol: "), "{e}");
    }

    #[test]
    fn missing_kernel_is_an_error() {
        let e = VmConfig::from_json(r#"{"vcpus": 1}"#).unwrap_err();
        assert!(e.contains("missing field `kernel`"), "{e}");
    }

    #[test]
    fn validation_names_fields() {
        let ok = VmConfig::new("/k");
        assert_eq!(ok.validate(1024), Ok(()));
        let mut c = ok.clone();
        c.vcpus = 0;
        assert_eq!(c.validate(1024).unwrap_err().field, "vcpus");
        c.vcpus = 33;
        assert_eq!(c.validate(1024).unwrap_err().field, "vcpus");
        let mut c = ok.clone();
        c.memory_mib = 0;
        assert_eq!(c.validate(1024).unwrap_err().field, "memory_mib");
        c.memory_mib = 2048;
        let e = c.validate(1024).unwrap_err();
        assert_eq!(e.field, "memory_mib");
        assert!(e.message.contains("host"), "{e}");
        let mut c = ok.clone();
        c.cmdline = Some("a\nb".into());
        assert_eq!(c.validate(1024).unwrap_err().field, "cmdline");
        let c = VmConfig::new("");
        assert_eq!(c.validate(1024).unwrap_err().field, "kernel");
        let mut c = ok.clone();
        c.profile = Some(ProfileConfig {
            path: "/tmp/p".into(),
            interval_ms: 0,
            system_map: None,
        });
        assert_eq!(c.validate(1024).unwrap_err().field, "profile.interval_ms");
    }

    #[test]
    fn snapshot_and_restore_fields_parse_and_validate() {
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "snapshot": {"dir": "/s", "when": {"after-ms": 500}, "then": "continue"}}"#,
        )
        .unwrap();
        let snap = c.snapshot.clone().unwrap();
        assert_eq!(snap.when, SnapshotWhen::AfterMs(500));
        assert_eq!(snap.then, SnapshotThen::Continue);
        assert_eq!(c.validate(1024), Ok(()));
        let c = VmConfig::from_json(r#"{"kernel": "/k", "snapshot": {"dir": "/s"}}"#).unwrap();
        assert_eq!(
            c.snapshot.as_ref().map(|s| (s.when, s.then)),
            Some((SnapshotWhen::AgentReady, SnapshotThen::Exit))
        );
        let e =
            VmConfig::from_json(r#"{"kernel": "/k", "snapshot": {"dir": "/s", "when": "later"}}"#)
                .unwrap_err();
        assert!(e.starts_with("snapshot.when"), "{e}");

        let mut c = VmConfig::new("");
        c.restore_from = Some("/snap".into());
        assert_eq!(c.validate(1024), Ok(()), "no kernel is needed to restore");
        c.fs.push(FsConfig {
            tag: "t".into(),
            socket: Some("/x".into()),
            socket_fd: None,
        });
        assert_eq!(
            c.validate(1024),
            Ok(()),
            "a share can be added at restore, in a free slot"
        );
        c.free_slots = MAX_FREE_SLOTS + 1;
        assert_eq!(c.validate(1024).unwrap_err().field, "free_slots");
        let mut c = VmConfig::new("/k");
        c.snapshot = Some(SnapshotConfig {
            dir: "/s".into(),
            when: SnapshotWhen::AfterMs(100_000_000),
            then: SnapshotThen::Exit,
        });
        assert_eq!(c.validate(1024).unwrap_err().field, "snapshot.when");
    }

    #[test]
    fn disk_devices_follow_the_kernel_naming() {
        assert_eq!(guest_disk_device(0), "/dev/vda");
        assert_eq!(guest_disk_device(1), "/dev/vdb");
        assert_eq!(guest_disk_device(25), "/dev/vdz");
        assert_eq!(guest_disk_device(26), "/dev/vdaa");
        assert_eq!(guest_disk_device(27), "/dev/vdab");
        assert_eq!(guest_disk_device(701), "/dev/vdzz");
        assert_eq!(guest_disk_device(702), "/dev/vdaaa");
    }

    #[test]
    fn disk_flag_syntax() {
        let d: DiskConfig = "/a/b.img,ro".parse().unwrap();
        assert_eq!((d.path.to_str().unwrap(), d.read_only), ("/a/b.img", true));
        let d: DiskConfig = "/a/b.img".parse().unwrap();
        assert!(!d.read_only);
        assert!("/a,xx".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn vsock_validation() {
        let mut c = VmConfig::new("/k");
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/tmp/v.sock".into(),
        });
        assert_eq!(c.validate(1024).unwrap_err().field, "vsock.guest_cid");
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/x".repeat(60).into(),
        });
        assert_eq!(c.validate(1024).unwrap_err().field, "vsock.uds_path");
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/tmp/v.sock".into(),
        });
        assert_eq!(c.validate(1024), Ok(()));
        let j = VmConfig::from_json(r#"{"kernel":"/k","vsock":{"uds_path":"/v","cid":3}}"#)
            .unwrap_err();
        assert!(j.starts_with("vsock"), "{j}");
    }

    #[test]
    fn fs_shares() {
        let f: FsConfig = "tag=capsa,socket=/run/v.sock".parse().unwrap();
        assert_eq!(f.tag, "capsa");
        assert_eq!(f.socket.as_deref(), Some(Path::new("/run/v.sock")));
        let g: FsConfig = "tag=x,fd=7".parse().unwrap();
        assert_eq!((g.socket.as_ref(), g.socket_fd), (None, Some(7)));
        for bad in [
            "tag=capsa",
            "tag=a,socket=/s,ro",
            "tag=a,socket=/s,fd=4",
            "socket=/s",
        ] {
            assert!(bad.parse::<FsConfig>().is_err(), "{bad}");
        }
        let mut c = VmConfig::new("/k");
        c.fs.push(f.clone());
        assert_eq!(c.validate(1024), Ok(()));
        c.fs.push(f);
        let e = c.validate(1024).unwrap_err();
        assert_eq!(e.field, "fs.tag");
        assert!(e.message.contains("two shares"), "{e}");
        c.fs = vec![FsConfig {
            tag: "x".repeat(37),
            socket: Some("/s".into()),
            socket_fd: None,
        }];
        assert_eq!(c.validate(1024).unwrap_err().field, "fs.tag");
        c.fs[0].tag = "t".into();
        c.fs[0].socket = None;
        assert_eq!(c.validate(1024).unwrap_err().field, "fs.socket");
        c.fs[0].socket_fd = Some(2);
        assert_eq!(c.validate(1024).unwrap_err().field, "fs.socket_fd");
        c.fs[0].socket_fd = Some(3);
        assert_eq!(c.validate(1024), Ok(()));
        let j = VmConfig::from_json(r#"{"kernel":"/k","fs":[{"tag":"t","socket":"/s","x":1}]}"#)
            .unwrap_err();
        assert!(j.starts_with("fs"), "{j}");
    }

    #[test]
    fn net_validation() {
        let mut c = VmConfig::new("/k");
        let net = NetConfig {
            tap_name: Some("tap0".into()),
            tap_fd: None,
            mac: Some("02:00:00:00:00:01".into()),
            mtu: 1500,
        };
        c.net = Some(net.clone());
        assert_eq!(c.validate(1024), Ok(()));
        let with = |f: &dyn Fn(&mut NetConfig)| {
            let mut c = c.clone();
            f(c.net.as_mut().unwrap());
            c.validate(1024).unwrap_err().field
        };
        assert_eq!(with(&|n| n.tap_fd = Some(5)), "net");
        assert_eq!(with(&|n| n.tap_name = None), "net");
        assert_eq!(with(&|n| n.tap_name = Some("x".repeat(16))), "net.tap_name");
        assert_eq!(
            with(&|n| {
                n.tap_name = None;
                n.tap_fd = Some(1)
            }),
            "net.tap_fd"
        );
        assert_eq!(with(&|n| n.mac = Some("02:00".into())), "net.mac");
        assert_eq!(with(&|n| n.mtu = 10), "net.mtu");
        let j = VmConfig::from_json(r#"{"kernel":"/k","net":{"tap_fd":4}}"#).unwrap();
        assert_eq!(j.net.unwrap().mtu, DEFAULT_MTU);
    }

    #[test]
    fn host_memory_is_readable() {
        assert!(host_memory_mib().unwrap() > 0);
    }
}
