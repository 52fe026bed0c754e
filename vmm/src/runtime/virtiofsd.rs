//! virtiofsd, the virtio-fs backend of a VM container's shares (its
//! rootfs and its bind mounts; docs/runtime.md § Rootfs, Mounts).
//!
//! One virtiofsd serves every share of one container. It exports one
//! directory, the *share tree* `<state dir>/shares/`, whose entries
//! (`root`, `m0`, `m1`, …) are empty placeholders on the host; `start`
//! launches virtiofsd in a mount namespace of its own (a slave copy of the
//! caller's) in which each placeholder is a bind mount of its source —
//! read-only, `nosuid`, `nodev`, `noexec` as the spec asks — so a file
//! bind mount shares exactly that file, never its siblings, and nothing is
//! ever mounted in the host's namespace (the namespace, and every mount in
//! it, goes away with virtiofsd). virtiofsd then enters its own sandbox
//! (`--sandbox namespace`: new pid, mount and network namespaces, the tree
//! as its root) with its seccomp filter on.
//!
//! The connection: `start` binds a listening socket in the state directory
//! (root-only), hands it to virtiofsd (`--fd`), connects to it at once and
//! unlinks it. The connected end goes to the VMM (an inherited descriptor,
//! `fs[].socket_fd` in `vm.json`); virtiofsd accepts that one connection
//! and exits when it ends. So virtiofsd cannot outlive its VMM, nor a
//! `create` that dies before handing the connection over (the connection
//! then ends with `create`), and no socket file is left. `delete` also
//! stops it by the pid and start time recorded in `virtiofsd.pid`
//! ([`stop`]), for the cases the connection does not cover (a VMM that
//! never started, a hung virtiofsd).

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::host_process::HostProcess;
use super::{Result, RuntimeError};

/// Environment variable: path of the `virtiofsd` binary.
pub const VIRTIOFSD_ENV: &str = "CAPSA_VIRTIOFSD";

/// The share tree's directory in the state directory.
pub const TREE_DIR: &str = "shares";

/// virtiofsd's log (its stderr) in the state directory.
pub const LOG_FILE: &str = "virtiofsd.log";

/// `<pid> <start time>` of the running virtiofsd, in the state directory.
pub const PID_FILE: &str = "virtiofsd.pid";

/// The listening socket's name in the state directory (removed once
/// connected).
const SOCKET_FILE: &str = "virtiofsd.sock";

/// virtiofsd's options besides the shared directory and the socket: its
/// sandbox and seccomp filter, the cache mode, and what the guest sees
/// (docs/runtime.md § virtiofsd). The benchmarks start it with these too.
pub const SERVER_ARGS: &[&str] = &[
    "--sandbox=namespace",
    "--seccomp=kill",
    "--cache=auto",
    "--xattr",
    "--announce-submounts",
    "--log-level=warn",
];

/// The virtiofsd version capsa is tested with and `scripts/setup.sh`
/// installs (`scripts/virtiofsd.version`).
pub fn version() -> &'static str {
    include_str!("../../../scripts/virtiofsd.version").trim()
}

/// `virtiofsd`: `$CAPSA_VIRTIOFSD`; next to this `capsa`;
/// `/usr/local/lib/capsa/`, `/usr/lib/capsa/`;
/// `<cache>/virtiofsd/<version>/bin/` (where `scripts/virtiofsd.sh`
/// installs it); then `PATH`.
pub fn locate() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(VIRTIOFSD_ENV) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(RuntimeError::Failed(format!(
                "{VIRTIOFSD_ENV}={}: no such file (virtiofsd serves the container's files)",
                p.display()
            )));
        }
        return Ok(p);
    }
    let mut candidates: Vec<PathBuf> = crate::install::exe_dir()
        .map(|d| d.join("virtiofsd"))
        .into_iter()
        .collect();
    candidates.extend(crate::install::in_lib_dirs("virtiofsd"));
    candidates.push(
        crate::guest_agent::cache_dir()
            .join("virtiofsd")
            .join(version())
            .join("bin/virtiofsd"),
    );
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("virtiofsd")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        RuntimeError::Failed(format!(
            "cannot find virtiofsd (it serves the container's rootfs and volumes over \
             virtio-fs): install it with scripts/virtiofsd.sh (scripts/setup.sh), put it \
             next to capsa, or set {VIRTIOFSD_ENV}"
        ))
    })
}

/// Whether a share is a directory or a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// A directory (a volume, the rootfs).
    Dir,
    /// A regular file (`/etc/hosts`, …).
    File,
}

/// One host directory or file in the share tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Its entry in the tree: `root`, `m0`, `m1`, …
    pub name: String,
    /// The host path (symlinks followed, as mount(2) does).
    pub source: PathBuf,
    /// Directory or file.
    pub kind: ShareKind,
    /// Read-only: virtiofsd's writes fail with `EROFS`.
    pub readonly: bool,
    /// `nosuid`, `nodev`, `noexec` on the host side too.
    pub nosuid: bool,
    /// See `nosuid`.
    pub nodev: bool,
    /// See `nosuid`.
    pub noexec: bool,
}

impl Share {
    /// A share of `source`, whose kind is read from the host (a
    /// directory, or anything else that is a regular file after
    /// following symlinks); `None` for what cannot be shared (sockets,
    /// devices, missing paths).
    pub fn of(name: impl Into<String>, source: &Path) -> Option<Share> {
        let md = std::fs::metadata(source).ok()?;
        let kind = if md.is_dir() {
            ShareKind::Dir
        } else if md.is_file() {
            ShareKind::File
        } else {
            return None;
        };
        Some(Share {
            name: name.into(),
            source: source.to_owned(),
            kind,
            readonly: false,
            nosuid: false,
            nodev: false,
            noexec: false,
        })
    }

    /// The flags of the read-only remount, or 0 when the plain bind is
    /// enough. A remount of a bind replaces its flags, so the source's
    /// own `nosuid`/`nodev`/`noexec`/`ro` are kept.
    fn remount_flags(&self) -> libc::c_ulong {
        let wanted = [
            (self.readonly, libc::MS_RDONLY),
            (self.nosuid, libc::MS_NOSUID),
            (self.nodev, libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, f)| acc | f);
        if wanted == 0 {
            return 0;
        }
        let kept = nix::sys::statvfs::statvfs(&self.source)
            .map(|s| {
                use nix::sys::statvfs::FsFlags;
                let f = s.flags();
                [
                    (FsFlags::ST_RDONLY, libc::MS_RDONLY),
                    (FsFlags::ST_NOSUID, libc::MS_NOSUID),
                    (FsFlags::ST_NODEV, libc::MS_NODEV),
                    (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
                ]
                .iter()
                .filter(|(st, _)| f.contains(*st))
                .fold(0, |acc, (_, ms)| acc | ms)
            })
            .unwrap_or(0);
        wanted | kept
    }
}

/// A started virtiofsd.
#[derive(Debug)]
pub struct Started {
    /// The process (recorded in `virtiofsd.pid`).
    pub process: HostProcess,
    /// The frontend end of its one connection, for the VMM.
    pub conn: UnixStream,
}

/// One bind mount as the child does it: no allocation after fork.
struct Bind {
    source: CString,
    target: CString,
    remount: libc::c_ulong,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Failed(format!("path with NUL: {}", p.display())))
}

/// Makes the share tree in `state_dir` and starts virtiofsd on it (see
/// the module docs), in the container's cgroup whose `cgroup.procs`
/// descriptors are `cgroup` (none: the caller's). Errors name the share
/// or the step; nothing of a failed start is left running.
pub fn start(
    binary: &Path,
    shares: &[Share],
    state_dir: &Path,
    cgroup: &[RawFd],
) -> Result<Started> {
    let tree = state_dir.join(TREE_DIR);
    make_tree(&tree, shares)?;
    let binds = shares
        .iter()
        .map(|s| {
            Ok(Bind {
                source: cstring(&s.source)?,
                target: cstring(&tree.join(&s.name))?,
                remount: s.remount_flags(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let socket = state_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&socket);
    // Named through a descriptor of the state directory: engines' state
    // directories are often longer than a socket address may be (108
    // bytes; docker's are ~150).
    let dir = std::fs::File::open(state_dir)
        .map_err(|e| RuntimeError::io(format!("open {}", state_dir.display()), e))?;
    let address = format!("/proc/self/fd/{}/{SOCKET_FILE}", dir.as_raw_fd());
    let listener = UnixListener::bind(&address)
        .map_err(|e| RuntimeError::io(format!("listen on {}", socket.display()), e))?;
    let spawned = spawn(binary, &tree, binds, &listener, state_dir, cgroup);
    drop(listener);
    let connected = spawned.and_then(|process| {
        let recorded = super::state::write_atomic(
            &state_dir.join(PID_FILE),
            format!("{} {}\n", process.pid, process.start_time).as_bytes(),
        );
        let conn = recorded.and_then(|_| {
            UnixStream::connect(&address)
                .map_err(|e| RuntimeError::io(format!("connect to {}", socket.display()), e))
        });
        match conn {
            Ok(conn) => Ok(Started { process, conn }),
            Err(e) => {
                stop_process(process, Duration::from_secs(5));
                Err(e)
            }
        }
    });
    drop(dir);
    let _ = std::fs::remove_file(&socket);
    connected
}

/// Starts virtiofsd on `tree`, in its own mount namespace with `binds`,
/// serving `listener`, logging to `virtiofsd.log` in `state_dir`, in the
/// cgroup whose `cgroup.procs` descriptors are `cgroup`.
fn spawn(
    binary: &Path,
    tree: &Path,
    binds: Vec<Bind>,
    listener: &UnixListener,
    state_dir: &Path,
    cgroup: &[RawFd],
) -> Result<HostProcess> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join(LOG_FILE))
        .map_err(|e| RuntimeError::io("open virtiofsd.log", e))?;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .arg("--shared-dir")
        .arg(tree)
        .arg(format!("--fd={fd}"))
        .args(SERVER_ARGS)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| RuntimeError::io("dup", e))?)
        .stderr(log);
    let cgroup = cgroup.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls on memory prepared before the fork (`binds`,
    // `fd`, `cgroup`); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            super::cgroup::join_in_child(&cgroup)?;
            enter_tree_namespace(&binds, fd)
        });
    }
    let child = cmd.spawn().map_err(|e| {
        RuntimeError::Failed(format!(
            "cannot start virtiofsd ({}) with the container's shares: {e}",
            binary.display()
        ))
    })?;
    let pid = child.id() as i32;
    // Not waited for: it runs on after `create`; its new parent (a
    // subreaper or init) reaps it.
    drop(child);
    HostProcess::of(pid).ok_or_else(|| {
        RuntimeError::Failed(format!(
            "virtiofsd ({}) ended at once{}",
            binary.display(),
            log_tail(state_dir)
        ))
    })
}

/// Creates `tree` (empty, root-only) and one placeholder per share.
fn make_tree(tree: &Path, shares: &[Share]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |what: &Path, e| RuntimeError::io(format!("share tree: {}", what.display()), e);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(tree)
        .map_err(|e| io(tree, e))?;
    for s in shares {
        if s.name.is_empty() || s.name.contains('/') || s.name.starts_with('.') {
            return Err(RuntimeError::Failed(format!(
                "share tree: bad entry name {:?}",
                s.name
            )));
        }
        let p = tree.join(&s.name);
        match s.kind {
            ShareKind::Dir => std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&p)
                .map_err(|e| io(&p, e))?,
            ShareKind::File => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(|e| io(&p, e))?;
            }
        }
    }
    Ok(())
}

/// In the child, before exec: a new session (signals to the caller's
/// process group do not reach it), a new mount namespace that receives
/// but never sends mount events, the binds, and the listening socket kept
/// across exec.
fn enter_tree_namespace(binds: &[Bind], listener: RawFd) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain system calls on C strings built before the fork and on
    // this process's own descriptors.
    unsafe {
        if libc::setsid() < 0 {
            return Err(err());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err());
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(err());
        }
        for b in binds {
            if libc::mount(
                b.source.as_ptr(),
                b.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            if b.remount != 0
                && libc::mount(
                    std::ptr::null(),
                    b.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | b.remount,
                    std::ptr::null(),
                ) != 0
            {
                return Err(err());
            }
        }
        if libc::fcntl(listener, libc::F_SETFD, 0) != 0 {
            return Err(err());
        }
    }
    Ok(())
}

/// Stops the virtiofsd recorded in `state_dir` (if it still runs and is
/// the recorded process): SIGTERM (it exits at once; the sandboxed child
/// follows its parent), SIGKILL after `timeout`, then waits up to
/// `timeout` more.
pub fn stop(state_dir: &Path, timeout: Duration) {
    let Some(text) = std::fs::read_to_string(state_dir.join(PID_FILE)).ok() else {
        return;
    };
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    if let (Some(Ok(pid)), Some(Ok(start_time))) = (words.next(), words.next()) {
        if let Ok(pid) = i32::try_from(pid) {
            stop_process(HostProcess { pid, start_time }, timeout);
        }
    }
}

/// Stops `p` and its children (the sandboxed virtiofsd, which gets
/// SIGTERM when its parent dies): SIGTERM, SIGKILL after `timeout`, then
/// waits up to `timeout` more for all of them.
fn stop_process(p: HostProcess, timeout: Duration) {
    if !p.alive() {
        return;
    }
    let mut all = children(p);
    all.insert(0, p);
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while all.iter().any(HostProcess::alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    p.signal(libc::SIGTERM);
    wait(timeout);
    if all.iter().any(HostProcess::alive) {
        for q in &all {
            q.signal(libc::SIGKILL);
        }
        wait(timeout);
    }
}

/// The children of `p` (host pids).
fn children(p: HostProcess) -> Vec<HostProcess> {
    let pid = p.pid;
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| HostProcess::of(c.parse().ok()?))
        .collect()
}

/// The last lines of virtiofsd's log in `state_dir`, to explain a failed
/// start (empty when there is nothing).
pub fn log_tail(state_dir: &Path) -> String {
    let text = std::fs::read(state_dir.join(LOG_FILE)).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "; virtiofsd's log:\n  {}",
        lines[lines.len().saturating_sub(5)..].join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    //! These start the real virtiofsd (installed by scripts/virtiofsd.sh)
    //! as root, as `create` does.
    use std::io::{Read, Write};

    use super::*;

    fn binary() -> PathBuf {
        locate().expect("virtiofsd is installed by scripts/setup.sh")
    }

    /// Sends GET_FEATURES (vhost-user request 1) and returns the answer.
    fn get_features(conn: &mut UnixStream) -> u64 {
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut req = Vec::new();
        for w in [1u32, 1, 0] {
            req.extend_from_slice(&w.to_le_bytes());
        }
        conn.write_all(&req).unwrap();
        let mut reply = [0u8; 20];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), 1);
        u64::from_le_bytes(reply[12..].try_into().unwrap())
    }

    fn wait_gone(p: HostProcess) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        !p.alive()
    }

    fn fixture() -> (tempfile::TempDir, Vec<Share>) {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(host.join("vol")).unwrap();
        std::fs::create_dir_all(host.join("ro")).unwrap();
        std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(host.join("sibling"), "not shared\n").unwrap();
        std::fs::create_dir_all(d.path().join("state")).unwrap();
        let mut ro = Share::of("m1", &host.join("ro")).unwrap();
        ro.readonly = true;
        ro.noexec = true;
        let shares = vec![
            Share::of("m0", &host.join("vol")).unwrap(),
            ro,
            Share::of("m2", &host.join("hosts")).unwrap(),
        ];
        (d, shares)
    }

    #[test]
    fn shares_are_classified_and_odd_files_refused() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Share::of("a", d.path()).unwrap().kind, ShareKind::Dir);
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert_eq!(Share::of("a", &f).unwrap().kind, ShareKind::File);
        let link = d.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(Share::of("a", &link).unwrap().kind, ShareKind::File);
        assert!(Share::of("a", &d.path().join("missing")).is_none());
        let sock = d.path().join("s");
        let _l = UnixListener::bind(&sock).unwrap();
        assert!(Share::of("a", &sock).is_none());
        assert!(Share::of("a", Path::new("/dev/null")).is_none());
    }

    #[test]
    fn serves_its_tree_over_the_handed_connection_and_ends_with_it() {
        let (d, shares) = fixture();
        let state = d.path().join("state");
        let host_mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut started = start(&binary(), &shares, &state, &[]).unwrap();
        let p = started.process;
        let (pid, start_time) = (p.pid, p.start_time);
        assert!(p.alive());
        assert!(!state.join(SOCKET_FILE).exists(), "the socket is unlinked");
        let recorded = std::fs::read_to_string(state.join(PID_FILE)).unwrap();
        assert_eq!(recorded, format!("{pid} {start_time}\n"));

        // It answers on the connection `start` handed over.
        let features = get_features(&mut started.conn);
        assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1: {features:#x}");

        // The binds exist in its namespace only, with the flags asked for
        // (its sandbox made the tree its root: `/m0`, …).
        let tree = state.join(TREE_DIR);
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let line = |name: &str| {
            let target = format!("/{name}");
            theirs
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(target.as_str()))
                .unwrap_or_else(|| panic!("no mount at {target} in:\n{theirs}"))
                .to_owned()
        };
        let opts = |l: &str| l.split(' ').nth(5).unwrap().to_owned();
        assert!(opts(&line("m0")).starts_with("rw"), "{}", line("m0"));
        let ro = opts(&line("m1"));
        assert!(ro.starts_with("ro") && ro.contains("noexec"), "{ro}");
        line("m2");
        let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !host_mounts.contains(tree.to_str().unwrap()),
            "a share was mounted in the host's namespace"
        );
        assert_eq!(host_mounts, host_mounts_before);
        // On the host the tree holds empty placeholders only.
        assert_eq!(std::fs::read(tree.join("m2")).unwrap(), b"");
        assert!(!tree.join("sibling").exists());

        // The connection ends: virtiofsd and its sandboxed child end.
        let kids = children(p);
        assert_eq!(kids.len(), 1, "the sandboxed child: {kids:?}");
        drop(started);
        assert!(wait_gone(p), "virtiofsd outlived its connection");
        assert!(wait_gone(kids[0]));
    }

    #[test]
    fn killing_virtiofsd_ends_its_sandboxed_child() {
        let (d, shares) = fixture();
        let state = d.path().join("state");
        let mut started = start(&binary(), &shares, &state, &[]).unwrap();
        get_features(&mut started.conn);
        let kids = children(started.process);
        assert_eq!(kids.len(), 1);
        assert!(started.process.signal(libc::SIGKILL));
        assert!(wait_gone(kids[0]), "the child outlived virtiofsd");
        // The frontend sees the end of the connection.
        let mut b = [0u8; 1];
        started
            .conn
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(started.conn.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn a_state_directory_longer_than_a_socket_address_works() {
        let (d, shares) = fixture();
        // As deep as docker's (`<exec-root>/runtime-runc/moby/<64 hex>`).
        let state = d
            .path()
            .join("state")
            .join("x".repeat(70))
            .join("y".repeat(64));
        std::fs::create_dir_all(&state).unwrap();
        assert!(state.join(SOCKET_FILE).as_os_str().len() > 108);
        let mut started = start(&binary(), &shares, &state, &[]).unwrap();
        get_features(&mut started.conn);
        assert!(!state.join(SOCKET_FILE).exists());
        stop(&state, Duration::from_secs(5));
    }

    #[test]
    fn stop_ends_the_recorded_process() {
        let (d, shares) = fixture();
        let state = d.path().join("state");
        let mut started = start(&binary(), &shares, &state, &[]).unwrap();
        // Answering means it has made its sandboxed child.
        get_features(&mut started.conn);
        let kids = children(started.process);
        assert_eq!(kids.len(), 1);
        stop(&state, Duration::from_secs(5));
        assert!(!started.process.alive());
        assert!(!kids[0].alive(), "its sandboxed child is gone too");
        // A stale record (another process now) is not signalled.
        std::fs::write(state.join(PID_FILE), format!("{} 1\n", std::process::id())).unwrap();
        stop(&state, Duration::from_millis(10));
    }

    #[test]
    fn a_missing_binary_fails_naming_it_and_leaves_nothing() {
        let (d, shares) = fixture();
        let state = d.path().join("state");
        let e = start(Path::new("/nonexistent/virtiofsd"), &shares, &state, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/virtiofsd"), "{e}");
        assert!(!state.join(SOCKET_FILE).exists());
        assert!(!state.join(PID_FILE).exists());
    }

    #[test]
    fn a_source_that_cannot_be_mounted_fails_the_start() {
        let (d, mut shares) = fixture();
        let state = d.path().join("state");
        // A file source over a directory placeholder: mount(2) refuses.
        shares[0].source = d.path().join("host/hosts");
        let e = start(&binary(), &shares, &state, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot start virtiofsd"), "{e}");
        assert!(!state.join(SOCKET_FILE).exists());
    }
}
