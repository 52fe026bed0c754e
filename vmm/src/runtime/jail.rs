//! The jail of a container's VMM process.
//!
//! `create` does not run the VMM process (`capsa vmm-process`) itself: it
//! starts it through `capsa-jailer` (docs/jailer.md), because a guest
//! that breaks out of its VM lands in the VMM (docs/architecture.md, "Trust
//! boundaries"). The jailed VMM runs as an unprivileged uid/gid of its own (see
//! [`uid_for`]), without capabilities, with `no_new_privs` and a seccomp
//! deny list, in a new mount namespace whose root is
//! `<state dir>/capsa/vm/root` ([`Jail::root`]), a new network
//! namespace with no device (the VMM needs no network of its own: its
//! control channel is the hybrid vsock Unix socket, and the guest's network
//! device is a TAP descriptor it inherits, made by `create` in the
//! container's namespace), and new PID and IPC namespaces: the VMM is
//! pid 1 of its own PID namespace (it sees and can signal no other
//! process; it handles the engines' termination signals itself, see
//! [`crate::pid1`]) and shares no System V IPC or POSIX message queue with
//! the host. The pid recorded (the jailer's pid file, `state.json`) is the
//! VMM's pid in the host's namespace, which the jailer's `fork` returns.
//!
//! What the VMM reads and writes lives in that root: its inputs
//! (`vmm-inputs.json`) are placed there by `create`; the kernel, the initramfs and the rootfs image are
//! bind-mounted read-only by the jailer; the VMM creates `vsock`,
//! `console.log`, `vmm.log` and `exit` there. The host reads those files
//! as written by an untrusted process: no symlink followed, bounded
//! reads (see [`super::state::read_small_untrusted`] and
//! [`capsa_agent::client::connect_unix_nofollow`]).
//!
//! The pid `create` reports (and engines wait on) is the jailer's: it
//! stays as a small supervisor, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/
//! SIGUSR1/SIGUSR2, exits with the VMM's status, and its death kills the
//! VMM (parent-death signal).
//!
//! `CAPSA_JAIL=off` in `create`'s environment starts the VMM unjailed, as
//! root (for debugging; not for hostile guests).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::host_process::HostProcess;
use super::{Result, RuntimeError};

/// Environment variable: `off` starts VMM processes without the jail.
pub const JAIL_ENV: &str = "CAPSA_JAIL";

/// Environment variable: path of the `capsa-jailer` binary.
pub const JAILER_ENV: &str = "CAPSA_JAILER";

/// The jailer's `--id` (its directory under the per-container base).
const JAIL_ID: &str = "vm";

/// First uid (and gid) of the range jailed VMMs run as.
pub const UID_BASE: u32 = 0x6000_0000;

/// Size of that range: 2^20 ids, far above the usual subuid ranges of user
/// namespaces (100000 + 65536·k).
pub const UID_SPAN: u32 = 1 << 20;

/// Where uid leases are kept: `<UID_LEASES>/<uid>` exists while a VMM
/// runs as `uid` and holds its container's state directory.
pub const UID_LEASES: &str = "/run/capsa-uids";

/// Name of the file in the state directory that records the leased uid.
pub const UID_FILE: &str = "vmm-uid";

/// Where the search for a free uid starts for container `id`:
/// [`UID_BASE`] + a hash of the id.
pub fn uid_for(id: &str) -> u32 {
    // FNV-1a: stable across builds and releases, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    UID_BASE + h % UID_SPAN
}

/// Leases a uid no other running VMM has, in `leases` (normally
/// [`UID_LEASES`]): the first free one from [`uid_for`]`(id)` on, taken by
/// creating `<leases>/<uid>` exclusively (so concurrent `create`s under
/// any `--root` never share one). The lease is also recorded as
/// `<state_dir>/vmm-uid`, which [`release_uid`] reads.
pub fn lease_uid(leases: &Path, id: &str, state_dir: &Path) -> Result<u32> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(leases)
        .map_err(|e| RuntimeError::io(format!("mkdir {}", leases.display()), e))?;
    let first = uid_for(id) - UID_BASE;
    for i in 0..UID_SPAN {
        let uid = UID_BASE + (first + i) % UID_SPAN;
        let path = leases.join(uid.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let recorded = f
                    .write_all(state_dir.as_os_str().as_encoded_bytes())
                    .and_then(|_| std::fs::write(state_dir.join(UID_FILE), uid.to_string()));
                if let Err(e) = recorded {
                    let _ = std::fs::remove_file(&path);
                    return Err(RuntimeError::io(format!("uid lease {}", path.display()), e));
                }
                return Ok(uid);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RuntimeError::io(format!("uid lease {}", path.display()), e)),
        }
    }
    Err(RuntimeError::Failed(format!(
        "no free uid for a VMM in {UID_BASE}..{}",
        UID_BASE + UID_SPAN
    )))
}

/// Gives back the uid that [`lease_uid`] recorded in `state_dir` (if the
/// lease is still that directory's).
pub fn release_uid(leases: &Path, state_dir: &Path) {
    let Some(uid) = std::fs::read_to_string(state_dir.join(UID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let path = leases.join(uid.to_string());
    if std::fs::read(&path).ok().as_deref() == Some(state_dir.as_os_str().as_encoded_bytes()) {
        let _ = std::fs::remove_file(&path);
    }
}

/// Whether `create` jails VMM processes (`CAPSA_JAIL` is not `off`).
pub fn enabled() -> bool {
    !matches!(
        std::env::var(JAIL_ENV).as_deref(),
        Ok("off" | "0" | "false")
    )
}

/// `capsa-jailer`: `$CAPSA_JAILER`; next to this `capsa`;
/// `/usr/local/lib/capsa/`, `/usr/lib/capsa/`; then `PATH`.
pub fn locate_jailer() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(JAILER_ENV) {
        return Ok(p.into());
    }
    let mut candidates: Vec<PathBuf> = crate::install::exe_dir()
        .map(|d| d.join("capsa-jailer"))
        .into_iter()
        .collect();
    candidates.extend(crate::install::in_lib_dirs("capsa-jailer"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("capsa-jailer")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        RuntimeError::Failed(format!(
            "cannot find capsa-jailer (it starts each VMM in its jail): build it with \
             `cargo build -p capsa-jailer`, put it next to capsa, or set {JAILER_ENV}; \
             {JAIL_ENV}=off runs VMMs unjailed"
        ))
    })
}

/// One VMM's jail, planned by `create` before the jailer runs.
#[derive(Debug, Clone)]
pub struct Jail {
    jailer: PathBuf,
    exec_file: PathBuf,
    base: PathBuf,
    root: PathBuf,
    pid_file: PathBuf,
    uid: u32,
    binds: Vec<(PathBuf, PathBuf)>,
    exit_markers: Vec<(String, PathBuf)>,
    file_size_limit: u64,
}

impl Jail {
    /// Plans the jail of container `id` whose state directory is
    /// `state_dir`, leases its uid ([`lease_uid`]) and creates its (empty)
    /// root there.
    pub fn plan(state_dir: &Path, id: &str) -> Result<Jail> {
        let jailer = locate_jailer()?;
        let uid = lease_uid(Path::new(UID_LEASES), id, state_dir)?;
        Self::plan_with(jailer, state_dir, uid)
    }

    /// [`Jail::plan`] with the given `capsa-jailer` and uid.
    pub fn plan_with(jailer: PathBuf, state_dir: &Path, uid: u32) -> Result<Jail> {
        let exec_file = std::env::current_exe()
            .map_err(|e| RuntimeError::io("cannot find the capsa binary (/proc/self/exe)", e))?;
        let name = exec_file
            .file_name()
            .ok_or_else(|| RuntimeError::Failed("the capsa binary has no file name".into()))?
            .to_owned();
        let jail_dir = state_dir.join(&name).join(JAIL_ID);
        let root = jail_dir.join("root");
        std::fs::create_dir_all(&root)
            .map_err(|e| RuntimeError::io(format!("mkdir {}", root.display()), e))?;
        let mut pid_name = name;
        pid_name.push(".pid");
        Ok(Jail {
            jailer,
            exec_file,
            base: state_dir.to_owned(),
            pid_file: jail_dir.join(pid_name),
            root,
            uid,
            binds: Vec::new(),
            exit_markers: Vec::new(),
            file_size_limit: 0,
        })
    }

    /// The host path of the VMM's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `capsa-jailer` binary.
    pub fn jailer(&self) -> &Path {
        &self.jailer
    }

    /// The VMM's uid (= gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Largest file the VMM may write, in bytes (`RLIMIT_FSIZE`; the
    /// guest-RAM memfd counts, so at least its size); 0 for no limit.
    /// A backstop only: the logs a guest fills are capped in the VMM
    /// itself (`crate::logger`), which ignores SIGXFSZ.
    pub fn limit_file_size(&mut self, bytes: u64) {
        self.file_size_limit = bytes;
    }

    /// Makes the host file `host` readable in the jail at `/<name>`
    /// (a read-only bind mount); returns the path inside.
    pub fn bind_ro(&mut self, host: &Path, name: &str) -> PathBuf {
        let inside = Path::new("/").join(name);
        self.binds.push((host.to_owned(), inside.clone()));
        inside
    }

    /// Once the VMM has exited, the jailer creates the empty host file
    /// `host` if the VMM left a regular file `name` in its root
    /// (`capsa-jailer --exit-marker`): how a mark reaches a file outside
    /// the jail, such as podman's `<bundle>/oom`.
    pub fn relay_on_exit(&mut self, name: &str, host: &Path) {
        self.exit_markers.push((name.to_owned(), host.to_owned()));
    }

    /// Gives `path` (in the root) to the VMM's uid/gid, for a file the
    /// VMM must write.
    pub fn give(&self, path: &Path) -> Result<()> {
        let id = Some(self.uid);
        std::os::unix::fs::chown(path, id, id)
            .map_err(|e| RuntimeError::io(format!("chown {}", path.display()), e))
    }

    /// The jailer's command line: the jail, then `-- vmm_args` (the
    /// arguments of the jailed `capsa`); `keep_fds` stay open in the VMM,
    /// `envs` is its whole environment.
    pub fn command(
        &self,
        keep_fds: &[RawFd],
        envs: &[(String, String)],
        vmm_args: &[OsString],
    ) -> Vec<OsString> {
        let uid = self.uid.to_string();
        let mut a: Vec<OsString> = vec![
            "--id".into(),
            JAIL_ID.into(),
            "--exec-file".into(),
            self.exec_file.clone().into(),
            "--uid".into(),
            uid.clone().into(),
            "--gid".into(),
            uid.into(),
            "--chroot-base-dir".into(),
            self.base.clone().into(),
            "--new-net-ns".into(),
            "--new-pid-ns".into(),
            "--new-ipc-ns".into(),
            "--no-fork".into(),
        ];
        if self.file_size_limit > 0 {
            a.push("--resource-limit".into());
            a.push(format!("fsize={}", self.file_size_limit).into());
        }
        for (host, inside) in &self.binds {
            let mut spec = host.clone().into_os_string();
            spec.push(":");
            spec.push(inside);
            spec.push(":ro");
            a.push("--bind".into());
            a.push(spec);
        }
        for (name, host) in &self.exit_markers {
            let mut spec = OsString::from(name);
            spec.push(":");
            spec.push(host);
            a.push("--exit-marker".into());
            a.push(spec);
        }
        for fd in keep_fds {
            a.push("--keep-fd".into());
            a.push(fd.to_string().into());
        }
        for (k, v) in envs {
            a.push("--env".into());
            a.push(format!("{k}={v}").into());
        }
        a.push("--".into());
        a.extend(vmm_args.iter().cloned());
        a
    }

    /// The jailer's pid file of the VMM process (host path).
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The VMM process (host pid namespace), from the jailer's pid file
    /// (outside the VMM's reach); waits up to `timeout` for the file,
    /// which the jailer writes just after the VMM's exec.
    pub fn vmm_process(&self, timeout: std::time::Duration) -> Option<HostProcess> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let vmm = std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .and_then(HostProcess::of);
            if vmm.is_some() || std::time::Instant::now() >= deadline {
                return vmm;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_in_the_range_and_stable() {
        let a = uid_for("abc");
        assert_eq!(a, uid_for("abc"));
        assert_ne!(a, uid_for("abd"));
        for id in ["", "x", &"f".repeat(64)] {
            let u = uid_for(id);
            assert!((UID_BASE..UID_BASE + UID_SPAN).contains(&u), "{u}");
        }
    }

    #[test]
    fn uid_leases_are_exclusive_and_released() {
        let leases = tempfile::tempdir().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ua = lease_uid(leases.path(), "same", a.path()).unwrap();
        assert_eq!(ua, uid_for("same"));
        // The same id under another root: the next uid.
        let ub = lease_uid(leases.path(), "same", b.path()).unwrap();
        assert_eq!(ub, UID_BASE + (ua - UID_BASE + 1) % UID_SPAN);
        release_uid(leases.path(), a.path());
        assert!(!leases.path().join(ua.to_string()).exists());
        assert!(leases.path().join(ub.to_string()).exists());
        // Another directory's lease is not released.
        std::fs::write(a.path().join(UID_FILE), ub.to_string()).unwrap();
        release_uid(leases.path(), a.path());
        assert!(leases.path().join(ub.to_string()).exists());
        release_uid(leases.path(), b.path());
        assert!(!leases.path().join(ub.to_string()).exists());
    }

    #[test]
    fn command_names_the_jail_and_passes_the_vmm_arguments() {
        let state = tempfile::tempdir().unwrap();
        let mut jail =
            Jail::plan_with("/usr/bin/true".into(), state.path(), uid_for("c1")).unwrap();
        jail.limit_file_size(1 << 28);
        jail.relay_on_exit("oom", Path::new("/b/oom"));
        assert!(jail.root().is_dir());
        assert!(jail.root().starts_with(state.path()));
        assert_eq!(
            jail.bind_ro(Path::new("/k"), "vmlinux"),
            Path::new("/vmlinux")
        );
        let args = jail.command(
            &[5],
            &[("A".into(), "b".into())],
            &["vmm-process".into(), "c1".into()],
        );
        assert_eq!(jail.jailer(), Path::new("/usr/bin/true"));
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        let line = args.join(" ");
        assert!(line.contains("--bind /k:/vmlinux:ro"), "{line}");
        assert!(line.contains("--exit-marker oom:/b/oom"), "{line}");
        assert!(
            line.contains(
                "--new-net-ns --new-pid-ns --new-ipc-ns --no-fork --resource-limit fsize=268435456"
            ),
            "{line}"
        );
        assert!(
            line.contains("--keep-fd 5 --env A=b -- vmm-process c1"),
            "{line}"
        );
        assert!(line.contains(&format!("--uid {}", uid_for("c1"))), "{line}");
        assert!(!line.contains("--uid 0 "), "{line}");
    }
}
