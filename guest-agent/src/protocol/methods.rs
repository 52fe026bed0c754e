//! Params and results of every method, and the `exit` notification.
//!
//! Field names are camelCase like the OCI runtime spec. Params reject unknown
//! fields (`INVALID_PARAMS`) so that a typo is an error, not a silent default;
//! results may gain fields in later versions, so clients should ignore unknown
//! result fields. Process fields follow the OCI runtime spec, `config.md`
//! § "Process" (v1.2).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Agent-assigned id of a process, unique for the agent's lifetime. The
/// container's init process gets the id returned by `create`; every `exec`
/// gets a new one. Not a Linux pid (see `pid` fields for that).
pub type ProcessId = u64;

/// Params of methods that take none (`start`, `stats`, `ps`, `pause`,
/// `resume`, `shutdown`) and the result of methods that return nothing
/// (`signal`, `resize`, `pause`, `resume`, `shutdown`): the empty object `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `hello` params: the client's protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelloParams {
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)).
    pub protocol_version: u32,
    /// Free-form client name and version, for the agent's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `hello` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelloResult {
    /// The agent's version (semver of the `capsa-agent` crate).
    pub agent_version: String,
    /// The protocol version the agent speaks.
    pub protocol_version: u32,
    /// Time since the guest kernel booted (CLOCK_BOOTTIME), in ms.
    pub uptime_ms: u64,
    /// Guest uptime at which the agent's `main` started, in ms.
    pub agent_start_ms: u64,
    /// Whether `create` has already succeeded.
    pub container_created: bool,
}

/// Fewest bytes of [`NewMachineParams::entropy`] (decoded): 256 bits, a
/// full reseed of the kernel's CRNG.
pub const MIN_NEW_MACHINE_ENTROPY_BYTES: usize = 32;

/// Most bytes of [`NewMachineParams::entropy`] (decoded).
pub const MAX_NEW_MACHINE_ENTROPY_BYTES: usize = 256;

/// Most entries of [`NewMachineParams::devices`].
pub const MAX_NEW_MACHINE_DEVICES: usize = 32;

/// `new_machine` params: what makes a guest restored from a template's
/// snapshot a machine of its own, given by the host before `create`.
///
/// Every field is checked before the agent acts (`INVALID_PARAMS` naming
/// the field); then, in this order, it mixes `entropy` into the kernel's
/// RNG and reseeds it, sets `CLOCK_REALTIME` to `realtimeNs`, and binds
/// each of `devices` to the guest's virtio-mmio driver.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMachineParams {
    /// The host's `CLOCK_REALTIME` when it sent the request, in ns since
    /// the Unix epoch (1970-01-01T00:00:00Z). The agent sets the guest's
    /// `CLOCK_REALTIME` to it (`clock_settime`; a time the guest kernel
    /// refuses, past about the year 2232, is `OS_ERROR` with `EINVAL`).
    pub realtime_ns: u64,
    /// Random bytes from the host (e.g. `getrandom(2)`), hex-encoded (upper
    /// or lower case digits, two per byte): 32 to 256 bytes once decoded
    /// ([`MIN_NEW_MACHINE_ENTROPY_BYTES`], [`MAX_NEW_MACHINE_ENTROPY_BYTES`]).
    /// Mixed into the guest kernel's entropy pool, credited as 8 bits per
    /// byte (`RNDADDENTROPY`), then the CRNG is reseeded (`RNDRESEEDCRNG`).
    /// The agent does not log it (the `Debug` of these params shows only
    /// its length) and zeroes the decoded bytes once the kernel has them.
    pub entropy: String,
    /// Platform devices to bind to the guest's virtio-mmio driver, in order
    /// (disks get `/dev/vda`, `/dev/vdb`, … in this order): each exactly
    /// `virtio-mmio.<N>`, N in 0..=255 in decimal without leading zeros
    /// ([`virtio_mmio_slot`]); no duplicates; at most 32
    /// ([`MAX_NEW_MACHINE_DEVICES`]). Empty or absent: none.
    #[serde(default)]
    pub devices: Vec<String>,
}

impl std::fmt::Debug for NewMachineParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMachineParams")
            .field("realtime_ns", &self.realtime_ns)
            .field(
                "entropy",
                &format_args!("<{} hex digits>", self.entropy.len()),
            )
            .field("devices", &self.devices)
            .finish()
    }
}

/// `new_machine` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewMachineResult {
    /// The devices bound, in order (all of `devices`).
    pub bound: Vec<String>,
}

/// The slot number `N` of the platform device name `virtio-mmio.<N>` (the
/// `N`th `virtio_mmio.device=` of the guest's kernel command line), or
/// `None` unless `name` is exactly that with `N` in 0..=255 in decimal
/// without leading zeros: no other text, so that no name reaches outside
/// the platform bus's devices.
pub fn virtio_mmio_slot(name: &str) -> Option<u8> {
    let digits = name.strip_prefix("virtio-mmio.")?;
    let canonical = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

/// Filesystem type of the container's root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RootfsType {
    /// ext4 on a block device (virtio-blk).
    Ext4,
    /// erofs on a block device (always read-only).
    Erofs,
    /// virtio-fs share, named by `tag`.
    Virtiofs,
}

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootfsSpec {
    /// Block types: the guest device, e.g. `"/dev/vda"` (required).
    /// `virtiofs`: the directory inside the share that is the root,
    /// relative (e.g. `"root"`); absent: the share's top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Filesystem type.
    pub fstype: RootfsType,
    /// Mount the root read-only, under an overlay with a tmpfs upper layer
    /// (writes live in guest RAM and are lost at shutdown; erofs always
    /// gets one). Without it, `virtiofs` is shared write-through: writes
    /// reach the host directory at once.
    #[serde(default)]
    pub readonly: bool,
    /// virtio-fs tag, required for `virtiofs`: one of `shares`, or
    /// another share, which the agent then mounts first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Where the agent mounts virtio-fs shares: `<SHARES_DIR>/<tag>`, outside
/// the container's root. Bind mounts of shared host files and directories
/// have their source there (e.g. `/run/capsa/fs/capsa/m0`).
pub const SHARES_DIR: &str = "/run/capsa/fs";

/// A virtio-fs share the agent mounts at `<SHARES_DIR>/<tag>` before the
/// rootfs and the mounts (which may refer to paths inside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShareSpec {
    /// The virtio-fs tag: 1 to 36 bytes of `[A-Za-z0-9._-]`.
    pub tag: String,
}

impl ShareSpec {
    /// Where the agent mounts this share, if the tag is acceptable (no
    /// path separators, no `.`/`..`, at most 36 bytes).
    pub fn mount_point(tag: &str) -> Option<String> {
        let ok = !tag.is_empty()
            && tag.len() <= 36
            && tag != "."
            && tag != ".."
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| format!("{SHARES_DIR}/{tag}"))
    }
}

/// A mount inside the container (OCI runtime spec, `config.md` § "Mounts").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// Filesystem type: `tmpfs`, `proc`, `sysfs`, `devpts`, `mqueue`, `bind`
    /// (or `none` with a `bind`/`rbind` option). Others are passed to mount(2).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Source: a device, a name, or for binds a path in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// fstab-style options: flags (`ro`, `nosuid`, `nodev`, `noexec`, `bind`,
    /// `rbind`, `rprivate`, …) and data (`mode=755`, `size=65536k`, …).
    #[serde(default)]
    pub options: Vec<String>,
}

/// User and groups of a process (OCI `process.user`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary group ids.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// File mode creation mask (e.g. 18 = 0o022); unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Accepted for OCI compatibility; ignored (numeric ids only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Terminal size in characters (OCI `process.consoleSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleSize {
    /// Rows.
    pub height: u16,
    /// Columns.
    pub width: u16,
}

/// One resource limit (OCI `process.rlimits[]`, setrlimit(2)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rlimit {
    /// `RLIMIT_*` name, e.g. `"RLIMIT_NOFILE"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// The process to run (OCI runtime spec `process`, the subset that applies
/// inside a micro-VM).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the process's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// Environment, `KEY=value` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container (absolute); `/` when empty.
    #[serde(default)]
    pub cwd: String,
    /// User and groups.
    #[serde(default)]
    pub user: User,
    /// Give the process a pseudo-terminal (one `tty` stream instead of
    /// stdin/stdout/stderr).
    #[serde(default)]
    pub terminal: bool,
    /// Initial terminal size when `terminal` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Set `PR_SET_NO_NEW_PRIVS` before exec.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Accepted for OCI compatibility; ignored (the VM is the boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<serde_json::Value>,
    /// Accepted for OCI compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
    /// Accepted for OCI compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_label: Option<String>,
    /// Accepted for OCI compatibility; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

/// `create` params: set up the container and prepare (not start) its init
/// process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateParams {
    /// The container id (OCI); echoed back, used in logs.
    pub container_id: String,
    /// Root filesystem.
    pub rootfs: RootfsSpec,
    /// The init process.
    pub process: ProcessSpec,
    /// Hostname to set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// virtio-fs shares, mounted first (see [`ShareSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareSpec>,
    /// Mounts, applied in order after the rootfs.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Whether the process's stdin is a stream (true) or `/dev/null` (false).
    /// Ignored when `process.terminal` is true.
    #[serde(default = "default_true")]
    pub stdin: bool,
    /// Give the container a PID namespace of its own (OCI
    /// `linux.namespaces` type `pid`): the init process is its PID 1, the
    /// `proc` mounts are made from inside it, and every `exec`'d process
    /// joins it. Without it the container's processes share the guest's
    /// namespace with the agent.
    #[serde(default)]
    pub pid_namespace: bool,
    /// The container's network. The agent always brings `lo` up; each
    /// interface here is configured on the guest's virtio-net device of
    /// the same MAC address. Absent: loopback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Kernel parameters to set in the guest before the init process is
    /// spawned (OCI `linux.sysctl`, config-linux.md § "Sysctl"), after the
    /// network, in key order. A key is dotted (`net.ipv4.ip_forward`,
    /// each `.` a directory level, as runc reads it) or, when it holds a
    /// `/`, a path below `/proc/sys` as is (`net/ipv4/conf/eth0.100/rp_filter`);
    /// see [`sysctl_path`]. A key that names no parameter, or a value the
    /// kernel refuses, fails `create` with the key in the message.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
}

/// The path below `/proc/sys` of the sysctl `key` (see
/// [`CreateParams::sysctl`]): `None` for a key that is empty, has an empty,
/// `.` or `..` component, or holds a NUL byte, so that no key reaches
/// outside `/proc/sys`.
pub fn sysctl_path(key: &str) -> Option<String> {
    let path = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let ok = !key.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then_some(path)
}

/// The container's network as its engine made it on the host (read by
/// `capsa create` from the container's network namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// The interfaces (capsa carries one: the engine's `eth0`).
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
}

/// One network interface of the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterfaceSpec {
    /// Name in the guest (the engine's name, e.g. `eth0`); 1 to 15 bytes.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`: also the guest device's, which
    /// is how the agent finds it.
    pub mac: String,
    /// MTU in bytes (68 to 65535).
    pub mtu: u32,
    /// Addresses with their prefix length, IPv4 or IPv6:
    /// `"10.88.0.5/16"`, `"fd00::5/64"`. Each one also gives the guest the
    /// route to its own prefix.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Routes through this interface, beyond the prefix routes of its
    /// addresses.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One route (`ip route add DESTINATION [via GATEWAY] [metric METRIC] dev IF`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination prefix, `"0.0.0.0/0"`, `"10.1.0.0/16"`, `"::/0"`.
    pub destination: String,
    /// Next hop, same family; absent for a directly connected prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Route metric (priority); absent: the kernel's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

fn default_true() -> bool {
    true
}

/// Tokens naming the stream connections of one process. Each token is
/// single-use; see "Streams" in `docs/agent-protocol.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamTokens {
    /// Host → process bytes (absent with a terminal or when `stdin` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Process → host stdout bytes (absent with a terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Process → host stderr bytes (absent with a terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Both directions of the pseudo-terminal (only with a terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
}

/// `create` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateResult {
    /// The container id from the params.
    pub container_id: String,
    /// Id of the (not yet started) init process.
    pub process_id: ProcessId,
    /// Its stream tokens.
    pub streams: StreamTokens,
}

/// `start` params: start the init process prepared by `create`.
pub type StartParams = Empty;

/// `start` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartResult {
    /// Id of the init process.
    pub process_id: ProcessId,
    /// Its Linux pid in the guest.
    pub pid: i32,
}

/// `exec` params: run another process in the container, started at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecParams {
    /// The process.
    pub process: ProcessSpec,
    /// Whether stdin is a stream (true) or `/dev/null` (false).
    #[serde(default = "default_true")]
    pub stdin: bool,
}

/// `exec` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// Id of the new process.
    pub process_id: ProcessId,
    /// Its Linux pid in the guest.
    pub pid: i32,
    /// Its stream tokens.
    pub streams: StreamTokens,
}

/// `wait` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitParams {
    /// The process to wait for (started or not).
    pub process_id: ProcessId,
}

/// How a process ended: the `wait` result and the `exit` notification's
/// params. Exactly one of `exitCode` and `signal` is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessExit {
    /// The process.
    pub process_id: ProcessId,
    /// Its Linux pid in the guest.
    pub pid: i32,
    /// Exit code (0..=255) of a normal exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Number of the signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Set on the exit of the container's init process: the guest kernel's
    /// OOM killer killed a process of the container (this one or another)
    /// while it ran — what runc's engines report as `OOMKilled`. Always
    /// false on the exits of `exec`'d processes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

impl ProcessExit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn status_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128_i32.saturating_add(sig),
            (None, None) => 255,
        }
    }
}

/// `signal` params: send `signal` to one process or to all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalParams {
    /// The process (its process group, which `setsid` made its own, is
    /// signalled). Required unless `all` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_id: Option<ProcessId>,
    /// Signal number (Linux x86_64: 9 = SIGKILL, 15 = SIGTERM, …); 0 only checks.
    pub signal: i32,
    /// Signal every running process of the container instead.
    #[serde(default)]
    pub all: bool,
}

/// `resize` params: set the terminal size of a process with a terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResizeParams {
    /// The process.
    pub process_id: ProcessId,
    /// Rows (characters).
    pub rows: u16,
    /// Columns (characters).
    pub cols: u16,
}

/// Memory figures of the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// `MemTotal` of /proc/meminfo, bytes.
    pub total_bytes: u64,
    /// `MemFree`, bytes.
    pub free_bytes: u64,
    /// `MemAvailable`, bytes.
    pub available_bytes: u64,
    /// `memory.current` of the root cgroup v2, bytes, when the guest has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_current_bytes: Option<u64>,
}

/// CPU time used by the container's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// User plus system time, ns (live processes and exited ones).
    pub usage_ns: u64,
    /// User time, ns.
    pub user_ns: u64,
    /// System time, ns.
    pub system_ns: u64,
}

/// `stats` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsResult {
    /// Memory.
    pub memory: MemoryStats,
    /// CPU time.
    pub cpu: CpuStats,
    /// Number of live processes in the container.
    pub pids: u32,
}

/// One process of `ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PsEntry {
    /// Linux pid in the guest.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// The agent's id when the process was started by `start`/`exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_id: Option<ProcessId>,
    /// argv from /proc/PID/cmdline (empty for zombies).
    pub cmdline: Vec<String>,
}

/// `ps` result: the live processes of the container (started processes and
/// their descendants), by pid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PsResult {
    /// Processes, sorted by pid.
    pub processes: Vec<PsEntry>,
}

/// First line the host writes on a stream connection (to [`STREAM_PORT`](super::STREAM_PORT)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamHeader {
    /// A token from [`StreamTokens`].
    pub token: String,
}

/// The agent's answer line to a [`StreamHeader`]; raw bytes follow only when
/// `ok` is true, otherwise the agent closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamAck {
    /// Whether the token named a stream waiting to be attached.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_mount_points_stay_in_the_shares_dir() {
        assert_eq!(
            ShareSpec::mount_point("capsa").as_deref(),
            Some("/run/capsa/fs/capsa")
        );
        assert!(ShareSpec::mount_point("a.b_c-9").is_some());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(37)] {
            assert_eq!(ShareSpec::mount_point(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sysctl_keys_stay_below_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("net/ipv4/ip_forward")
        );
        // A path form keeps its dots (an interface named eth0.100).
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").as_deref(),
            Some("net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in [
            "",
            ".",
            "net..ipv4",
            "net.ipv4.",
            ".net",
            "/net/ipv4",
            "net/../../etc",
            "net/./x",
            "a\0b",
        ] {
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn virtio_mmio_slots_are_exact_names() {
        assert_eq!(virtio_mmio_slot("virtio-mmio.0"), Some(0));
        assert_eq!(virtio_mmio_slot("virtio-mmio.7"), Some(7));
        assert_eq!(virtio_mmio_slot("virtio-mmio.255"), Some(255));
        for bad in [
            "",
            "virtio-mmio.",
            "virtio-mmio.256",
            "virtio-mmio.1000",
            "virtio-mmio.01",
            "virtio-mmio.00",
            "virtio-mmio.2x",
            "virtio-mmio.+1",
            "virtio-mmio.-1",
            "virtio-mmio. 1",
            "virtio-mmio.1\n",
            "virtio-mmio.1/bind",
            "../x",
            "virtio-mmio.0/../x",
            "VIRTIO-MMIO.1",
            "virtio_mmio.1",
            " virtio-mmio.1",
            "virtio-mmio.１",
        ] {
            assert_eq!(virtio_mmio_slot(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_machine_params_on_the_wire() {
        let p: NewMachineParams = serde_json::from_str(
            r#"{"realtimeNs":1700000000123456789,"entropy":"00ff","devices":["virtio-mmio.3"]}"#,
        )
        .unwrap();
        assert_eq!(p.realtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(p.devices, ["virtio-mmio.3"]);
        let p: NewMachineParams = serde_json::from_str(r#"{"realtimeNs":1,"entropy":""}"#).unwrap();
        assert!(p.devices.is_empty());
        assert!(serde_json::from_str::<NewMachineParams>(r#"{"entropy":"00"}"#).is_err());
        // The entropy stays out of logs.
        let p = NewMachineParams {
            realtime_ns: 1,
            entropy: "abcdef".into(),
            devices: vec![],
        };
        assert!(!format!("{p:?}").contains("abcdef"), "{p:?}");
    }

    #[test]
    fn params_reject_unknown_fields() {
        let r: Result<WaitParams, _> = serde_json::from_str(r#"{"processId":1,"x":2}"#);
        assert!(r.is_err());
        let r: Result<Empty, _> = serde_json::from_str(r#"{"x":2}"#);
        assert!(r.is_err());
    }

    #[test]
    fn oci_process_parses() {
        let p: ProcessSpec = serde_json::from_str(
            r#"{"args":["sh"],"env":["PATH=/bin"],"cwd":"/","terminal":true,
                "consoleSize":{"height":24,"width":80},
                "user":{"uid":1,"gid":2,"additionalGids":[3],"umask":18},
                "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],
                "noNewPrivileges":true,"capabilities":{"bounding":["CAP_KILL"]}}"#,
        )
        .unwrap();
        assert_eq!(p.user.additional_gids, vec![3]);
        assert_eq!(
            p.console_size,
            Some(ConsoleSize {
                height: 24,
                width: 80
            })
        );
    }

    #[test]
    fn exit_status_code() {
        let mut e = ProcessExit {
            process_id: 1,
            pid: 5,
            exit_code: Some(7),
            signal: None,
            oom_killed: false,
        };
        assert_eq!(e.status_code(), 7);
        e.exit_code = None;
        e.signal = Some(9);
        assert_eq!(e.status_code(), 137);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"processId":1,"pid":5,"signal":9}"#
        );
    }
}
