//! The state directory of each container, `<root>/<id>/`, and its OCI state
//! (runtime spec `runtime.md` § "State").
//!
//! Files in the directory:
//! - `state.json`: [`Record`], written once `create` succeeded;
//! - `vmm-inputs.json`: the VMM process's inputs
//!   ([`super::vmm_process::VmmInputs`]);
//! - `started`: present once `start` succeeded;
//! - `paused`: present while the agent has the container frozen (`pause`
//!   made it, `resume` removes it);
//! - `exit`: the container process's exit status, written by the VMM
//!   process when it ended;
//! - `vmm.log`: the VMM process's log;
//! - `vsock`: the hybrid vsock socket (elsewhere when the path would be too
//!   long for `sun_path`, see [`vsock_path`]).
//!
//! A jailed VMM (the default, [`super::jail`]) keeps `vmm-inputs.json`,
//! `exit`, `vmm.log`, `console.log` and `vsock` in its jail's root,
//! `<root>/<id>/capsa/vm/root/` ([`JailRecord::root`]);
//! `state.json`, `started` and `paused` stay in the state directory, out of
//! the VMM's reach.
//!
//! The status is derived from these files and the liveness of the VMM
//! process rather than stored, so that it cannot go stale when a process
//! dies: `exit` present or the VMM gone → stopped; `paused` → paused;
//! `started` → running; else created.

use std::path::{Path, PathBuf};

use capsa_agent::protocol::ProcessId;
use serde::{Deserialize, Serialize};

use super::bundle::Bundle;
use super::host_process::{kill_and_wait, HostProcess};
use super::{Result, RuntimeError};

/// OCI status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, the process waits for `start`.
    Created,
    /// The process runs.
    Running,
    /// The process has exited.
    Stopped,
    /// The processes are frozen (`pause`; for vm containers by the guest
    /// agent's cgroup freezer).
    Paused,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
        })
    }
}

/// The operations whose use depends on a container's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `start`.
    Start,
    /// `kill`.
    Kill,
    /// `delete` without `--force`.
    Delete,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `exec`.
    Exec,
}

impl Status {
    /// Only a created container can be started (runtime spec `runtime.md`
    /// § "Start").
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// A created container's stand-in (the VMM process, as runc's init) or
    /// a running or paused container's processes can be signalled
    /// (§ "Kill"; SIGKILL reaches frozen processes).
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }

    /// A container whose processes do not run can be deleted; a running or
    /// paused one needs `--force` (§ "Delete", runc's rule).
    pub fn can_delete(self) -> bool {
        !matches!(self, Status::Running | Status::Paused)
    }

    /// Only a running container can be paused (runc's rule).
    pub fn can_pause(self) -> bool {
        self == Status::Running
    }

    /// Only a paused container can be resumed (runc's rule).
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }

    /// A process can be exec'd in a created or running container, not in a
    /// stopped or paused one (runc's rule).
    pub fn can_exec(self) -> bool {
        !matches!(self, Status::Stopped | Status::Paused)
    }

    /// Whether `op` is allowed in this status.
    pub fn allows(self, op: Operation) -> bool {
        match op {
            Operation::Start => self.can_start(),
            Operation::Kill => self.can_kill(),
            Operation::Delete => self.can_delete(),
            Operation::Pause => self.can_pause(),
            Operation::Resume => self.can_resume(),
            Operation::Exec => self.can_exec(),
        }
    }

    /// [`RuntimeError::State`] for container `id` unless `op` is allowed.
    pub fn require(self, id: &str, op: Operation) -> Result<()> {
        if self.allows(op) {
            return Ok(());
        }
        let message = match op {
            Operation::Start => "only a created container can be started".to_string(),
            Operation::Kill => "container not running".to_string(),
            Operation::Delete => {
                format!("cannot delete a {self} container (stop it, or use --force)")
            }
            Operation::Pause => "only a running container can be paused".to_string(),
            Operation::Resume => "only a paused container can be resumed".to_string(),
            Operation::Exec => format!("cannot exec in a {self} container"),
        };
        Err(RuntimeError::State {
            id: id.to_string(),
            status: self,
            message,
        })
    }
}

/// Runtime type of a container (annotation `io.capsa.runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeType {
    /// A micro-VM per container.
    #[default]
    Vm,
    /// A namespaced process on the host kernel, run by runc.
    Process,
}

impl std::fmt::Display for RuntimeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeType::Vm => "vm",
            RuntimeType::Process => "process",
        })
    }
}

/// What capsa records about a container in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs directory.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The runtime type, and what it keeps (`"runtime": "vm"` with the
    /// [`VmRecord`]'s fields, or `"runtime": "process"`).
    #[serde(flatten)]
    pub runtime: RuntimeRecord,
}

impl Record {
    /// The record of container `id` of `bundle`, created now.
    pub fn new(id: &str, bundle: &Bundle, runtime: RuntimeRecord) -> Record {
        Record {
            id: id.to_string(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: now_rfc3339(),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            runtime,
        }
    }
}

/// The runtime type of a container and what capsa keeps for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runtime", rename_all = "lowercase")]
pub enum RuntimeRecord {
    /// A micro-VM.
    Vm(VmRecord),
    /// A process run by runc, which keeps its own state.
    Process,
}

impl RuntimeRecord {
    /// The runtime type.
    pub fn kind(&self) -> RuntimeType {
        match self {
            RuntimeRecord::Vm(_) => RuntimeType::Vm,
            RuntimeRecord::Process => RuntimeType::Process,
        }
    }
}

/// What `create` recorded of a `vm` container's VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The process `create` started and engines wait on (`--pid-file`):
    /// `capsa-jailer`, or the VMM process itself when unjailed.
    pub pid: HostProcess,
    /// The VMM process's jail, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailRecord>,
    /// The agent's id of the container's init process.
    pub init_process_id: ProcessId,
    /// The hybrid vsock socket (host path).
    pub vsock: PathBuf,
    /// The template the VM was restored from (a warm start; see
    /// [`crate::runtime::template`]); `None` when it booted cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PathBuf>,
}

/// A jailed VMM process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailRecord {
    /// The VMM process itself (`pid` is its jailer).
    pub vmm: HostProcess,
    /// Host path of the jail's root, where the VMM keeps its files
    /// (`exit`, `console.log`, `vmm.log`, its inputs), all written by an
    /// untrusted process.
    pub root: PathBuf,
}

impl VmRecord {
    /// The host processes of the VM: the one `create` started and, when
    /// jailed, the VMM under it.
    pub fn processes(&self) -> Vec<HostProcess> {
        let mut all = vec![self.pid];
        all.extend(self.jail.as_ref().map(|j| j.vmm));
        all
    }

    /// The process that stands for the container's process before `start`
    /// (signals of `kill` go to it, as to runc's init): the VMM process.
    pub fn vmm(&self) -> HostProcess {
        self.jail.as_ref().map_or(self.pid, |j| j.vmm)
    }
}

/// The file of a vm container's state directory that marks it paused.
pub const PAUSED_FILE: &str = "paused";

/// The state root (`--root`).
#[derive(Debug, Clone)]
pub struct Root {
    /// Its path.
    pub path: PathBuf,
}

/// Checks an id as runc does (`^[\w+-\.]+$`), and refuses a leading `.`
/// (capsa keeps runc's own root at `<root>/.runc`).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

impl Root {
    /// The root at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root { path: path.into() }
    }

    /// The state directory of `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    /// runc's root for `process` containers.
    pub fn runc_root(&self) -> PathBuf {
        self.path.join(".runc")
    }

    /// Creates the state directory of a new container; fails if it exists.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        std::fs::create_dir_all(&self.path)
            .map_err(|e| RuntimeError::io(format!("--root {}", self.path.display()), e))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RuntimeError::Exists(id.to_string()))
            }
            Err(e) => Err(RuntimeError::io(format!("mkdir {}", dir.display()), e)),
        }
    }

    /// Loads the record of `id`.
    pub fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = self.dir(id);
        let path = dir.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.to_string()))
            }
            Err(e) => return Err(RuntimeError::io(format!("read {}", path.display()), e)),
        };
        let record: Record = serde_json::from_str(&text).map_err(|e| {
            RuntimeError::io(
                format!("{}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        Ok(Container { dir, record })
    }

    /// Every container with a `state.json`, sorted by id.
    pub fn list(&self) -> Vec<Container> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        ids.sort();
        ids.iter().filter_map(|id| self.load(id).ok()).collect()
    }
}

/// A container of the root: its directory and record.
#[derive(Debug, Clone)]
pub struct Container {
    /// `<root>/<id>/`.
    pub dir: PathBuf,
    /// `state.json`.
    pub record: Record,
}

impl Container {
    /// Writes `state.json` (atomically).
    pub fn save(&self) -> Result<()> {
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_vec_pretty(&self.record).unwrap_or_default(),
        )
    }

    /// The VM of a `vm` container.
    pub fn vm(&self) -> Option<&VmRecord> {
        match &self.record.runtime {
            RuntimeRecord::Vm(vm) => Some(vm),
            RuntimeRecord::Process => None,
        }
    }

    /// The directory of the VMM's files: its jail's root, or the state
    /// directory for an unjailed VMM.
    pub fn vm_dir(&self) -> PathBuf {
        match self.vm().and_then(|vm| vm.jail.as_ref()) {
            Some(jail) => jail.root.clone(),
            None => self.dir.clone(),
        }
    }

    /// The exit status the VMM process recorded, if the process ended.
    pub fn exit_status(&self) -> Option<i32> {
        let text = read_small_untrusted(&self.vm_dir().join("exit"), 32)?;
        String::from_utf8_lossy(&text).trim().parse().ok()
    }

    /// Whether any host process of the VM is alive.
    pub fn vmm_alive(&self) -> bool {
        self.vm()
            .is_some_and(|vm| vm.processes().iter().any(HostProcess::alive))
    }

    /// SIGKILLs the VM's host processes (each only if it is still the
    /// process recorded) and waits up to `timeout` for them to be gone. A
    /// jailed VMM cannot fork (`capsa-jailer --no-fork`), so nothing of it
    /// is left after that.
    pub fn kill_vmm(&self, timeout: std::time::Duration) {
        if let Some(vm) = self.vm() {
            kill_and_wait(&vm.processes(), timeout);
        }
    }

    /// The status of a vm container (see the module docs). The `exit` file
    /// of a jailed VMM, which the VMM writes itself, counts only once the
    /// VMM is gone: a compromised VMM must not pass for stopped (and then
    /// escape `delete`'s kill).
    pub fn vm_status(&self) -> Status {
        let Some(vm) = self.vm() else {
            return Status::Stopped;
        };
        let exited = vm.jail.is_none() && self.exit_status().is_some();
        if exited || !self.vmm_alive() {
            Status::Stopped
        } else if self.dir.join(PAUSED_FILE).exists() {
            Status::Paused
        } else if self.dir.join("started").exists() {
            Status::Running
        } else {
            Status::Created
        }
    }
}

/// Reads at most `max` bytes of the regular file at `path`, which an
/// untrusted process (a jailed VMM) may have written: a symlink is not
/// followed, and a FIFO or device is not opened for reading (no hang).
pub fn read_small_untrusted(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut out = Vec::new();
    file.take(max).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| RuntimeError::io(format!("write {}", path.display()), e))
}

/// The hybrid vsock socket of the container in `dir`: `dir/vsock` when the
/// path fits (the VMM needs `<path>_<port>` ≤ 107 bytes, so ≤ 96), else
/// `/run/capsa-vsock/<hash of dir>` (podman's 64-character ids under a long
/// `--root` do not fit).
pub fn vsock_path(dir: &Path) -> PathBuf {
    let p = dir.join("vsock");
    if p.as_os_str().len() <= 96 {
        return p;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    PathBuf::from(format!("/run/capsa-vsock/{:016x}", h.finish()))
}

/// Now as RFC 3339 UTC with nanoseconds (as runc's `created`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        for bad in ["", ".runc", "a/b", "..", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_format() {
        let t = now_rfc3339();
        // As 2024-02-29T23:59:59.000000005Z: nanoseconds, UTC.
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::new(1_709_251_199, 5);
        assert_eq!(
            humantime::format_rfc3339_nanos(leap).to_string(),
            "2024-02-29T23:59:59.000000005Z"
        );
    }

    #[test]
    fn untrusted_files_are_read_safely() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("exit"), b"137\n").unwrap();
        assert_eq!(read_small_untrusted(&d.join("exit"), 32).unwrap(), b"137\n");
        std::fs::write(d.join("big"), vec![b'1'; 4096]).unwrap();
        assert_eq!(read_small_untrusted(&d.join("big"), 32).unwrap().len(), 32);
        // A symlink to a host file is not followed.
        std::os::unix::fs::symlink("/etc/hostname", d.join("link")).unwrap();
        assert!(read_small_untrusted(&d.join("link"), 32).is_none());
        // A FIFO neither blocks nor counts as a file.
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_small_untrusted(&d.join("fifo"), 32).is_none());
        assert!(read_small_untrusted(&d.join("missing"), 32).is_none());
    }

    #[test]
    fn vm_status_follows_the_marker_files() {
        let dir = tempfile::tempdir().unwrap();
        let me = HostProcess::of(std::process::id() as i32).unwrap();
        let vm = VmRecord {
            pid: me,
            jail: None,
            init_process_id: 1,
            vsock: PathBuf::new(),
            template: None,
        };
        let c = Container {
            dir: dir.path().to_owned(),
            record: Record {
                id: "s".into(),
                bundle: PathBuf::new(),
                rootfs: PathBuf::new(),
                created: now_rfc3339(),
                annotations: Default::default(),
                runtime: RuntimeRecord::Vm(vm.clone()),
            },
        };
        // state.json is read back by the same type.
        let text = serde_json::to_string(&c.record).unwrap();
        assert!(text.contains(r#""runtime":"vm""#), "{text}");
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.runtime, c.record.runtime);
        assert_eq!(c.vm_status(), Status::Created);
        std::fs::write(dir.path().join("started"), b"").unwrap();
        assert_eq!(c.vm_status(), Status::Running);
        std::fs::write(dir.path().join(PAUSED_FILE), b"").unwrap();
        assert_eq!(c.vm_status(), Status::Paused);
        assert_eq!(Status::Paused.to_string(), "paused");
        assert_eq!(serde_json::to_value(Status::Paused).unwrap(), "paused");
        // A paused container whose process ended is stopped.
        std::fs::write(dir.path().join("exit"), b"137").unwrap();
        assert_eq!(c.vm_status(), Status::Stopped);
        // A jailed VMM's own `exit` does not make it stopped while it runs.
        let vm_dir = dir.path().join("jail");
        std::fs::create_dir(&vm_dir).unwrap();
        std::fs::write(vm_dir.join("exit"), b"0").unwrap();
        let mut jailed = c.clone();
        let jail = JailRecord {
            vmm: me,
            root: vm_dir,
        };
        let mut stale = me;
        stale.start_time += 1; // no longer the recorded process
        jailed.record.runtime = RuntimeRecord::Vm(VmRecord {
            jail: Some(jail.clone()),
            ..vm.clone()
        });
        assert_eq!(jailed.exit_status(), Some(0));
        assert_eq!(jailed.vm_status(), Status::Paused);
        jailed.record.runtime = RuntimeRecord::Vm(VmRecord {
            pid: stale,
            jail: Some(JailRecord { vmm: stale, ..jail }),
            ..vm
        });
        assert_eq!(jailed.vm_status(), Status::Stopped);
    }

    #[test]
    fn status_rules() {
        use Status::*;
        let all = [Creating, Created, Running, Stopped, Paused];
        let allowed = |op| -> Vec<Status> { all.into_iter().filter(|s| s.allows(op)).collect() };
        assert_eq!(allowed(Operation::Start), [Created]);
        assert_eq!(allowed(Operation::Kill), [Created, Running, Paused]);
        assert_eq!(allowed(Operation::Delete), [Creating, Created, Stopped]);
        assert_eq!(allowed(Operation::Pause), [Running]);
        assert_eq!(allowed(Operation::Resume), [Paused]);
        assert_eq!(allowed(Operation::Exec), [Creating, Created, Running]);
        let e = Created.require("c1", Operation::Pause).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"c1\" is created: only a running container can be paused"
        );
    }

    #[test]
    fn long_dirs_get_a_short_socket() {
        let short = vsock_path(Path::new("/run/capsa/abc"));
        assert_eq!(short, Path::new("/run/capsa/abc/vsock"));
        let long = vsock_path(&Path::new("/run/containerd/runc/default").join("a".repeat(64)));
        assert!(long.as_os_str().len() <= 96, "{}", long.display());
    }
}
