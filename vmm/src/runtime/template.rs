//! VM templates: warm starts (docs/runtime.md § "Warm starts").
//!
//! A template is a snapshot (docs/snapshot.md) of a VM of one *shape*
//! (vCPUs, memory, host kind) booted from the shipped kernel and agent to
//! "agent ready", with no container in it: a vsock device, a virtio-rng
//! and [`FREE_SLOTS`] free virtio-mmio slots. `create` restores a
//! container's VM from the template of its shape and puts the container's
//! disks, virtio-fs share and network device in the free slots; the agent
//! binds them and makes the guest a new machine (fresh entropy, the
//! host's clock) before it creates the container.
//!
//! Templates live in `<cache>/templates/<shape>-<key>/`, where the key
//! hashes what the snapshot depends on: the kernel and the capsa binary
//! (by file identity: path, device, inode, size, modification time), the agent's
//! initramfs (by content: its name is its hash), the shape and the number
//! of free slots. `create` never waits for one: when the template of its
//! shape is missing or unusable it starts a detached builder
//! (`capsa build-template`) and boots cold, logging why. Builders take a
//! lock per template and one for all (one template boot at a time, at
//! the lowest CPU priority), build into a temporary directory and rename
//! it into place; a template that fails its checks is removed and built
//! again. `create` holds its template's lock shared until the VM is
//! restored, so that `build-template --prune` ([`prune`]), which removes
//! the templates of other builds under their locks, leaves it alone.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::config::{
    HostQuirks, SnapshotConfig, SnapshotThen, SnapshotWhen, VmConfig, VsockConfig,
    DEFAULT_GUEST_CID,
};
use crate::runtime::bundle::BootMode;
use crate::runtime::{Result, RuntimeError};
use crate::snapshot;

/// Free virtio-mmio slots of a template: room for a container's rootfs
/// disk, its bind-mount disk, its virtio-fs share and its network device,
/// and two more.
pub const FREE_SLOTS: u8 = 6;

/// Environment variable that turns templates off for a process
/// (`CAPSA_TEMPLATES=off`): every container it creates boots cold.
pub const TEMPLATES_ENV: &str = "CAPSA_TEMPLATES";

/// A file of this name in the templates directory turns templates off for
/// the whole host (`touch <cache>/templates/off`).
pub const OFF_FILE: &str = "off";

/// How long a builder lets a template VM boot before giving up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What a template depends on besides the shipped files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Whether the guest runs with the PVM host workarounds.
    pub host_quirks: bool,
}

/// The files a template boots from, as host paths.
#[derive(Debug, Clone)]
pub struct Shipped {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The agent's initramfs.
    pub initramfs: PathBuf,
}

impl Shipped {
    /// Finds the guest kernel and the agent, and packs the agent as an
    /// initramfs (cached by content).
    pub fn locate() -> Result<Shipped> {
        let kernel = crate::install::kernel().map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let agent =
            crate::guest_agent::locate().map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let cache = crate::guest_agent::cache_dir().join("initramfs");
        let initramfs = crate::guest_agent::initramfs(&agent, &cache)
            .map_err(|e| RuntimeError::io("cannot build the agent initramfs", e))?;
        Ok(Shipped { kernel, initramfs })
    }
}

/// Whether a container starts warm, and from which template.
#[derive(Debug)]
pub enum Choice {
    /// Restore from this template.
    Warm(Template),
    /// Boot cold, for this reason (logged by the caller).
    Cold(String),
}

/// A template chosen for a restore, held (a shared lock) until dropped,
/// once the VM is restored: `build-template --prune` does not remove a
/// template while it is held.
#[derive(Debug)]
pub struct Template {
    /// Its directory.
    pub dir: PathBuf,
    _hold: Option<Flock<File>>,
}

/// The directory of all templates: `<cache>/templates`.
pub fn root() -> PathBuf {
    crate::guest_agent::cache_dir().join("templates")
}

/// Why templates are off for this host or process, if they are.
fn disabled() -> Option<String> {
    if std::env::var(TEMPLATES_ENV).is_ok_and(|v| v == "off") {
        return Some(format!("{TEMPLATES_ENV}=off"));
    }
    let off = root().join(OFF_FILE);
    off.exists()
        .then(|| format!("templates are off for this host ({} exists)", off.display()))
}

/// Picks how a container of `shape` that adds `devices` virtio devices to
/// its VM (its disks, virtio-fs share and network device: each takes a
/// free slot of the template) starts: from its template when the bundle
/// allows (`io.capsa.boot`), the devices fit in the [`FREE_SLOTS`],
/// templates are on and the template is ready and passes its checks.
/// Otherwise cold, with the reason; a missing or unusable template is
/// (re)built in the background.
pub fn choose(boot: BootMode, shipped: &Shipped, shape: Shape, devices: usize) -> Choice {
    if boot == BootMode::Cold {
        return Choice::Cold("the bundle asks for it (io.capsa.boot=cold)".into());
    }
    if devices > usize::from(FREE_SLOTS) {
        return Choice::Cold(format!(
            "the container adds {devices} devices to its VM, a template has {FREE_SLOTS} free slots"
        ));
    }
    if let Some(why) = disabled() {
        return Choice::Cold(why);
    }
    let dir = match template_dir(shipped, shape) {
        Ok(d) => d,
        Err(e) => return Choice::Cold(format!("cannot name the template: {e}")),
    };
    if !dir.exists() {
        let started = start_builder(shape);
        return Choice::Cold(format!(
            "no template of this shape ({} vCPUs, {} MiB) yet{}",
            shape.vcpus,
            shape.memory_mib,
            describe_builder(started)
        ));
    }
    let hold = match lock(&dir.with_extension("lock"), FlockArg::LockSharedNonblock) {
        Ok(Some(hold)) => Some(hold),
        Ok(None) => {
            return Choice::Cold(format!(
                "the template {} is locked by a builder or a prune",
                dir.display()
            ))
        }
        // A templates directory this process cannot write: no lock, as
        // before locks were taken.
        Err(_) => None,
    };
    match check(&dir, shape) {
        Ok(()) => Choice::Warm(Template { dir, _hold: hold }),
        Err(why) => {
            drop(hold);
            // Never used again: moved aside first, so that no other
            // `create` picks it while it is removed.
            let trash = dir.with_extension(format!("bad.{}", std::process::id()));
            if std::fs::rename(&dir, &trash).is_ok() {
                let _ = std::fs::remove_dir_all(&trash);
            }
            let started = start_builder(shape);
            Choice::Cold(format!(
                "the template {} is unusable ({why}); removed{}",
                dir.display(),
                describe_builder(started)
            ))
        }
    }
}

fn describe_builder(started: std::io::Result<()>) -> String {
    match started {
        Ok(()) => "; building it in the background".into(),
        Err(e) => format!("; cannot start a builder: {e}"),
    }
}

/// Checks the template in `dir` as a restore would, without the costly
/// parts: its state file (header, format version, checksum, bounds), that
/// it is of `shape` with [`FREE_SLOTS`] free slots, and that its memory
/// file holds all of guest RAM.
pub fn check(dir: &Path, shape: Shape) -> std::result::Result<(), String> {
    let snap = snapshot::load(dir).map_err(|e| e.to_string())?;
    if snap.vcpus.len() != usize::from(shape.vcpus)
        || snap.memory.total() != u64::from(shape.memory_mib) << 20
        || snap.host_quirks != shape.host_quirks
    {
        return Err(format!(
            "its VM has {} vCPUs and {} MiB, not {} and {}",
            snap.vcpus.len(),
            snap.memory.total() >> 20,
            shape.vcpus,
            shape.memory_mib
        ));
    }
    let free = snap
        .virtio
        .iter()
        .filter(|d| {
            d.transport.device_type == capsa_devices::virtio::free_slot::FREE_SLOT_DEVICE_ID
        })
        .count();
    if free != usize::from(FREE_SLOTS) {
        return Err(format!("{free} free slots, not {FREE_SLOTS}"));
    }
    let memory = dir.join(snapshot::memory::MEMORY_FILE);
    let len = std::fs::metadata(&memory)
        .map_err(|e| format!("{}: {e}", memory.display()))?
        .len();
    if len < snap.memory.total() {
        return Err(format!(
            "{}: {len} bytes, guest memory is {} (truncated?)",
            memory.display(),
            snap.memory.total()
        ));
    }
    Ok(())
}

/// `<root>/<vcpus>c-<memory>m-<key>`, where the key hashes what the
/// template depends on.
pub fn template_dir(shipped: &Shipped, shape: Shape) -> std::io::Result<PathBuf> {
    Ok(root().join(template_name(shipped, shape)?))
}

/// `<vcpus>c-<memory>m-<key>`: the name of the template of `shape` made
/// from `shipped` and this capsa binary.
fn template_name(shipped: &Shipped, shape: Shape) -> std::io::Result<String> {
    let mut h = Sha256::new();
    h.update(b"capsa template 1\n");
    h.update(format!(
        "snapshot format {}\ncapsa {}\nfree slots {FREE_SLOTS}\nshape {} {} {}\n",
        snapshot::format::VERSION_MAJOR,
        env!("CARGO_PKG_VERSION"),
        shape.vcpus,
        shape.memory_mib,
        shape.host_quirks,
    ));
    for path in [
        Path::new("/proc/self/exe"),
        shipped.kernel.as_path(),
        shipped.initramfs.as_path(),
    ] {
        h.update(identity(path)?);
    }
    let key: String = h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{}c-{}m-{key}", shape.vcpus, shape.memory_mib))
}

/// The vCPUs and memory of a template's name (`<vcpus>c-<memory>m-<key>`).
fn parse_name(name: &str) -> Option<(u8, u32)> {
    let (vcpus, rest) = name.split_once("c-")?;
    let (memory_mib, key) = rest.split_once("m-")?;
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((vcpus.parse().ok()?, memory_mib.parse().ok()?))
}

/// Removes the templates of other builds (`capsa build-template
/// --prune`); returns what it removed. See [`prune_in`].
pub fn prune(shipped: &Shipped) -> Result<Vec<PathBuf>> {
    prune_in(&root(), |shape| template_name(shipped, shape))
}

/// Removes from the templates directory `root` every template whose name
/// is not `current`'s for its shape (either host kind): those of another
/// capsa binary, kernel or agent. Also what builders and removals left:
/// `<name>.tmp` (a builder's work) and `<name>.bad.<pid>`, and the lock
/// files of the templates removed. Each name is handled under its
/// template's exclusive lock, and skipped while someone holds it: a
/// builder at work, or a `create` restoring from it (held shared until
/// its VM is restored; a running VM keeps its mapping of the memory file,
/// also through the bind mount of its jail). Returns what was removed.
fn prune_in(
    root: &Path,
    current: impl Fn(Shape) -> std::io::Result<String>,
) -> Result<Vec<PathBuf>> {
    let entries: Vec<String> = match std::fs::read_dir(root) {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RuntimeError::io(format!("read {}", root.display()), e)),
    };
    // The templates' names, from their directories, work directories,
    // leftovers and lock files.
    let mut names: Vec<(&str, (u8, u32))> = entries
        .iter()
        .map(|e| e.split_once('.').map_or(e.as_str(), |(name, _)| name))
        .filter_map(|name| Some((name, parse_name(name)?)))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut removed = Vec::new();
    for (name, (vcpus, memory_mib)) in names {
        let mut is_current = false;
        for host_quirks in [false, true] {
            let shape = Shape {
                vcpus,
                memory_mib,
                host_quirks,
            };
            is_current |= current(shape)
                .map_err(|e| RuntimeError::io("cannot name the current templates", e))?
                == name;
        }
        let lock_file = root.join(format!("{name}.lock"));
        let Some(_held) = lock(&lock_file, FlockArg::LockExclusiveNonblock)? else {
            continue;
        };
        let leftovers = entries.iter().filter(|e| {
            e.strip_prefix(name)
                .is_some_and(|rest| rest == ".tmp" || rest.starts_with(".bad."))
        });
        let stale = (!is_current).then(|| name.to_owned());
        for entry in leftovers.chain(stale.as_ref()) {
            let path = root.join(entry);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::io(format!("rm -r {}", path.display()), e)),
            }
        }
        if !is_current {
            std::fs::remove_file(&lock_file)
                .map_err(|e| RuntimeError::io(format!("rm {}", lock_file.display()), e))?;
        }
    }
    Ok(removed)
}

/// A file's identity: where it is and which version of it (a replaced
/// file has another inode, a rewritten one another modification time).
/// Not its change time: the jail hard-links the capsa binary, which
/// changes that.
fn identity(path: &Path) -> std::io::Result<String> {
    let real = std::fs::canonicalize(path)?;
    let m = std::fs::metadata(&real)?;
    Ok(format!(
        "{} {} {} {} {}.{}\n",
        real.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
    ))
}

/// Starts `capsa build-template` for `shape`, detached (its own session,
/// stdio on its log in the templates directory), at the lowest CPU
/// priority, out of the caller's cgroup when it can be moved to the root
/// one (so that an engine removing the container's scope does not end
/// it). Does not wait.
fn start_builder(shape: Shape) -> std::io::Result<()> {
    let root = root();
    std::fs::create_dir_all(&root)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("build.log"))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args([
        "build-template",
        "--no-wait",
        "--vcpus",
        &shape.vcpus.to_string(),
        "--memory-mib",
        &shape.memory_mib.to_string(),
        "--host-quirks",
        if shape.host_quirks { "on" } else { "off" },
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    // SAFETY: setsid and setpriority are async-signal-safe and touch
    // only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Best effort: a builder left in an engine's scope may be killed with
    // it; the next `create` starts another.
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.procs", child.id().to_string());
    Ok(())
}

/// Builds the template of `shape` unless it exists: boots a template VM
/// with `capsa vmm` until its agent is ready, snapshots it, checks the
/// snapshot and renames it into place. Builders hold a lock per template
/// and one for all; with `wait`, this waits for them, else it gives up
/// at once. Returns where the template is, or `None` when it gave up
/// because another builder is at work.
pub fn build(shipped: &Shipped, shape: Shape, wait: bool) -> Result<Option<PathBuf>> {
    let dir = template_dir(shipped, shape)
        .map_err(|e| RuntimeError::io("cannot name the template", e))?;
    let root = root();
    std::fs::create_dir_all(&root)
        .map_err(|e| RuntimeError::io(format!("mkdir {}", root.display()), e))?;
    let how = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    let Some(_one) = lock(&dir.with_extension("lock"), how)? else {
        return Ok(None);
    };
    if dir.exists() && check(&dir, shape).is_ok() {
        return Ok(Some(dir));
    }
    let Some(_all) = lock(&root.join(".build.lock"), how)? else {
        return Ok(None);
    };
    let work = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(|e| RuntimeError::io(format!("mkdir {}", work.display()), e))?;
    let result = boot_and_snapshot(shipped, shape, &work).and_then(|snap| {
        check(&snap, shape).map_err(|why| {
            RuntimeError::Failed(format!("the new template fails its checks: {why}"))
        })?;
        publish(&snap, &dir)
    });
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| Some(dir))
}

/// Boots the template VM in `work` and waits for its snapshot; returns
/// the snapshot directory.
fn boot_and_snapshot(shipped: &Shipped, shape: Shape, work: &Path) -> Result<PathBuf> {
    let snap = work.join("snapshot");
    let config = template_config(shipped, shape, work, &snap);
    let config_path = work.join("config.json");
    let text = serde_json::to_vec_pretty(&config)
        .map_err(|e| RuntimeError::Failed(format!("cannot encode the template VM: {e}")))?;
    std::fs::write(&config_path, text)
        .map_err(|e| RuntimeError::io(format!("write {}", config_path.display()), e))?;
    let started = Instant::now();
    let mut child = Command::new("/proc/self/exe")
        .arg("--log")
        .arg(work.join("vmm.log"))
        .args(["vmm", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RuntimeError::io("cannot start the template VM", e))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > BUILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RuntimeError::Failed(format!(
                    "the template VM was not ready within {BUILD_TIMEOUT:?}"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(RuntimeError::io("waiting for the template VM", e)),
        }
    };
    if !status.success() || !snap.join(snapshot::STATE_FILE).is_file() {
        let log = std::fs::read_to_string(work.join("vmm.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(RuntimeError::Failed(format!(
            "the template VM ended with {status} without a snapshot; its log ends:\n  {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        )));
    }
    tracing::info!(
        dir = %snap.display(),
        seconds = started.elapsed().as_secs_f64(),
        "template VM snapshotted"
    );
    Ok(snap)
}

/// The template VM: what a container's VM of `shape` has (same kernel,
/// agent, serial console, vsock CID, rng), without the container's
/// devices, plus the free slots; snapshotted into `snap` when the agent
/// is ready.
pub fn template_config(shipped: &Shipped, shape: Shape, work: &Path, snap: &Path) -> VmConfig {
    let mut config = VmConfig::new(&shipped.kernel);
    config.initramfs = Some(shipped.initramfs.clone());
    config.vcpus = shape.vcpus;
    config.memory_mib = shape.memory_mib;
    config.host_quirks = if shape.host_quirks {
        HostQuirks::On
    } else {
        HostQuirks::Off
    };
    config.serial_log = Some(work.join("console.log"));
    config.vsock = Some(VsockConfig {
        guest_cid: DEFAULT_GUEST_CID,
        uds_path: work.join("vsock"),
    });
    config.free_slots = FREE_SLOTS;
    config.snapshot = Some(SnapshotConfig {
        dir: snap.to_owned(),
        when: SnapshotWhen::AgentReady,
        then: SnapshotThen::Exit,
    });
    config
}

/// Makes the snapshot `snap` readable by jailed VMMs (each runs as its own
/// uid and maps it read-only) and renames it to `dir`.
fn publish(snap: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| RuntimeError::io(format!("chmod {}", p.display()), e))
    };
    for entry in std::fs::read_dir(snap)
        .map_err(|e| RuntimeError::io(format!("read {}", snap.display()), e))?
        .flatten()
    {
        chmod(&entry.path(), 0o644)?;
    }
    chmod(snap, 0o755)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(snap, dir)
        .map_err(|e| RuntimeError::io(format!("rename {} to {}", snap.display(), dir.display()), e))
}

/// A `flock` of kind `how` on `path` (created if missing); `None` when a
/// non-blocking one finds it held.
fn lock(path: &Path, how: FlockArg) -> Result<Option<Flock<File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| RuntimeError::io(format!("open {}", path.display()), e))?;
    match Flock::lock(file, how) {
        Ok(locked) => Ok(Some(locked)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(RuntimeError::io(
            format!("flock {}", path.display()),
            e.into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Shipped {
        Shipped {
            kernel: "/nonexistent/vmlinux".into(),
            initramfs: "/nonexistent/initramfs.cpio".into(),
        }
    }

    const SHAPE: Shape = Shape {
        vcpus: 1,
        memory_mib: 512,
        host_quirks: false,
    };

    #[test]
    fn more_devices_than_free_slots_boot_cold() {
        let devices = usize::from(FREE_SLOTS) + 1;
        let Choice::Cold(why) = choose(BootMode::Warm, &shipped(), SHAPE, devices) else {
            panic!("{devices} devices cannot start warm");
        };
        assert_eq!(
            why,
            format!(
                "the container adds {devices} devices to its VM, a template has {FREE_SLOTS} free slots"
            )
        );
        // The bundle's choice comes first.
        let Choice::Cold(why) = choose(BootMode::Cold, &shipped(), SHAPE, devices) else {
            panic!("io.capsa.boot=cold");
        };
        assert!(why.contains("io.capsa.boot=cold"), "{why}");
    }

    #[test]
    fn template_names_are_parsed() {
        assert_eq!(
            parse_name("1c-512m-75f9d3bcc066c41a94c0e839"),
            Some((1, 512))
        );
        assert_eq!(parse_name("2c-162m-ab"), Some((2, 162)));
        for other in [
            "build.log",
            "off",
            "1c-512m-",
            "1c-512m-xyz",
            "c-1m-ab",
            "1c512m-ab",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn prune_removes_other_builds_and_leftovers_but_not_held_templates() {
        let root = std::env::temp_dir().join(format!("capsa-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // This build's names: key "aa" with the PVM workarounds, "bb" without.
        let current = |s: Shape| {
            let key = if s.host_quirks { "aa" } else { "bb" };
            Ok(format!("{}c-{}m-{key}", s.vcpus, s.memory_mib))
        };
        let dirs = [
            "1c-512m-aa",        // current: kept
            "1c-512m-aa.tmp",    // a dead builder's work: removed
            "1c-512m-aa.bad.42", // left by a removal: removed
            "1c-97m-bb",         // current (other host kind): kept
            "1c-512m-cc",        // another build: removed, with its lock
            "2c-162m-dd",        // another build, held: kept
            "2c-162m-ee.tmp",    // another build's work, no one at work: removed
            "not-a-template",    // kept
        ];
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("memory"), b"x").unwrap();
        }
        for f in [
            "1c-512m-aa.lock",
            "1c-512m-cc.lock",
            "2c-162m-dd.lock",
            "build.log",
            "off",
        ] {
            std::fs::write(root.join(f), b"").unwrap();
        }
        // A `create` restoring from 2c-162m-dd holds it shared.
        let held = lock(&root.join("2c-162m-dd.lock"), FlockArg::LockSharedNonblock)
            .unwrap()
            .unwrap();
        let mut removed = prune_in(&root, current).unwrap();
        removed.sort();
        let names: Vec<&str> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "1c-512m-aa.bad.42",
                "1c-512m-aa.tmp",
                "1c-512m-cc",
                "2c-162m-ee.tmp"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "1c-512m-aa",
                "1c-512m-aa.lock",
                "1c-97m-bb",
                "1c-97m-bb.lock",
                "2c-162m-dd",
                "2c-162m-dd.lock",
                "build.log",
                "not-a-template",
                "off"
            ]
        );
        // Released, the other build's template goes too.
        drop(held);
        let removed = prune_in(&root, current).unwrap();
        assert_eq!(removed, [root.join("2c-162m-dd")]);
        assert!(!root.join("2c-162m-dd.lock").exists());
        // A missing templates directory has nothing to prune.
        std::fs::remove_dir_all(&root).unwrap();
        assert!(prune_in(&root, current).unwrap().is_empty());
    }
}
