//! Fixtures of the container-engine tests (`tests/engines.rs`): podman,
//! containerd (`ctr`) and docker driving an OCI runtime binary, which is
//! either runc (behind `scripts/engines.sh`'s logging wrapper, to prove the
//! harness) or capsa.
//!
//! The engines run in the private environment of `scripts/engines.sh`
//! (configs under `/var/lib/capsa-engines`, sockets under
//! `/run/capsa-engines`); the first test that needs them starts containerd
//! and dockerd unless they already run, and the daemons it started are
//! stopped when the test process exits (`atexit`), failed tests included.
//! Sample images come from `scripts/images.sh` (cached). Every container a
//! test makes is owned by a guard that force-removes it on drop, so that a
//! failed assertion leaves nothing running.
//!
//! A VM boot costs ~30 s on the CI hosts: [`container_slot`] lets at most
//! [`MAX_CONTAINER_TESTS`] container tests run at once, and each test runs
//! one container at a time.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{capsa_bin, guest_kernel, require_kvm, workspace_root};

/// The busybox sample image (`scripts/images.sh`).
pub const BUSYBOX: &str = "localhost/capsa-busybox:latest";
/// The Debian bookworm minbase sample image (`scripts/images.sh`).
pub const DEBIAN: &str = "localhost/capsa-debian:bookworm";
/// Timeout of one engine command, in seconds: a VM boot takes ~30 s here,
/// several may queue up behind each other.
pub const TIMEOUT_S: u64 = 240;
/// Container tests that may run at the same time.
pub const MAX_CONTAINER_TESTS: usize = 2;
/// The annotation that picks capsa's runtime type.
pub const RUNTIME_ANNOTATION: &str = "io.capsa.runtime";

/// The OCI runtime binary the engines are told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// runc behind `runc-logged` (`scripts/engines.sh`): proves the harness.
    Runc,
    /// capsa's own binary (built by [`capsa_bin`], with the guest agent).
    Capsa,
}

impl Runtime {
    /// Short name, used in container names.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Capsa => "capsa",
        }
    }

    /// Path of the runtime binary handed to the engines.
    pub fn binary(self) -> PathBuf {
        match self {
            Runtime::Runc => engines().dir.join("bin/runc-logged"),
            Runtime::Capsa => capsa_runtime().to_owned(),
        }
    }

    /// The runtime's state root when the engine passes no `--root`
    /// (podman): runc's and capsa's defaults.
    pub fn default_root(self) -> PathBuf {
        match self {
            Runtime::Runc => PathBuf::from("/run/runc"),
            Runtime::Capsa => PathBuf::from("/run/capsa"),
        }
    }

    /// The name of the runtime in docker's daemon.json (`scripts/engines.sh`).
    pub fn docker_name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc-logged",
            Runtime::Capsa => "capsa",
        }
    }
}

/// The capsa binary, ready to be an engine's runtime: the guest kernel and
/// agent are built (capsa finds the agent next to its target directory),
/// and it has the OCI `create` command.
pub fn capsa_runtime() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        require_kvm();
        guest_kernel();
        let out = Command::new(workspace_root().join("guest-agent/build.sh"))
            .output()
            .expect("run guest-agent/build.sh");
        assert!(
            out.status.success(),
            "guest-agent/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = capsa_bin().to_owned();
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .expect("capsa --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.lines().any(|l| l.trim_start().starts_with("create ")),
            "{} has no OCI `create` command yet (issue 5), so engines cannot use it:\n{help}",
            bin.display()
        );
        // The template containers of the default shape start from
        // (docs/runtime.md, "Warm starts"), built as the engines' capsa
        // would find its files; one boot, then every such start is warm.
        let out = Command::new(&bin)
            .arg("build-template")
            .env_remove("CAPSA_CACHE_DIR")
            .env_remove("CAPSA_KERNEL")
            .env_remove("CAPSA_AGENT")
            .env_remove("CAPSA_TEMPLATES")
            .stdin(Stdio::null())
            .output()
            .expect("capsa build-template");
        assert!(
            out.status.success(),
            "capsa build-template failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// The private engine environment of `scripts/engines.sh`, running.
pub struct Engines {
    /// `CAPSA_ENGINES_DIR`: configs, storage, wrapper scripts.
    pub dir: PathBuf,
    /// `CAPSA_ENGINES_RUN`: sockets, logs, the runtime-call log.
    pub run: PathBuf,
    env: HashMap<String, String>,
}

fn engines_script() -> PathBuf {
    workspace_root().join("scripts/engines.sh")
}

extern "C" fn stop_engines_at_exit() {
    let _ = Command::new(engines_script())
        .arg("stop")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
}

/// Starts containerd and dockerd (once per test process) unless they run,
/// and loads the sample images; the daemons started here are stopped when
/// the process exits.
pub fn engines() -> &'static Engines {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let script = engines_script();
        let running = Command::new(&script)
            .arg("status")
            .output()
            .expect("scripts/engines.sh status");
        let both_up = running.status.success()
            && !String::from_utf8_lossy(&running.stdout).contains("stopped");
        if !both_up {
            // SAFETY: registers a plain `extern "C" fn` without arguments.
            unsafe { libc::atexit(stop_engines_at_exit) };
            let out = Command::new(&script)
                .arg("start")
                .stdin(Stdio::null())
                .output()
                .expect("scripts/engines.sh start");
            assert!(
                out.status.success(),
                "scripts/engines.sh start failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = Command::new(&script)
            .arg("env")
            .output()
            .expect("scripts/engines.sh env");
        let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let dir = Path::new(&env["CONTAINERS_CONF"])
            .parent()
            .expect("CONTAINERS_CONF has a directory")
            .to_owned();
        let run = Path::new(&env["CONTAINERD_ADDRESS"])
            .parent()
            .and_then(Path::parent)
            .expect("CONTAINERD_ADDRESS is <run>/containerd/containerd.sock")
            .to_owned();
        let images = Command::new(workspace_root().join("scripts/images.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("scripts/images.sh");
        assert!(
            images.status.success(),
            "scripts/images.sh failed:\n{}",
            String::from_utf8_lossy(&images.stderr)
        );
        Engines { dir, run, env }
    })
}

impl Engines {
    /// `prog args...` in the engines' environment, under `timeout`.
    pub fn command(&self, prog: &str) -> Command {
        self.command_with_timeout(prog, TIMEOUT_S)
    }

    /// [`Engines::command`] with a timeout of `seconds` (a guest with
    /// GiBs of RAM takes twice the boot time on hosts that emulate the
    /// guest kernel, docs/runtime.md "Memory").
    pub fn command_with_timeout(&self, prog: &str, seconds: u64) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=10")
            .arg(seconds.to_string())
            .arg(prog)
            .envs(&self.env)
            .stdin(Stdio::null());
        cmd
    }

    /// Makes dockerd's "capsa" runtime point at `bin` (rewrites daemon.json,
    /// dockerd reloads it on SIGHUP) and waits until dockerd has it.
    pub fn set_docker_capsa_runtime(&self, bin: &Path) {
        let out = Command::new(engines_script())
            .args(["start", "docker"])
            .env("CAPSA_BIN", bin)
            .stdin(Stdio::null())
            .output()
            .expect("scripts/engines.sh start docker");
        assert!(
            out.status.success(),
            "scripts/engines.sh start docker failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self
                .command("docker")
                .args(["info", "--format", "{{json .Runtimes}}"])
                .output()
                .expect("docker info");
            if String::from_utf8_lossy(&info.stdout).contains(&*bin.to_string_lossy()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not pick up the capsa runtime {}: {}",
                bin.display(),
                String::from_utf8_lossy(&info.stdout)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `cmd`, feeding `stdin` if given; returns its output.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    if let Some(input) = stdin {
        cmd.stdin(Stdio::piped());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).expect("write stdin");
        drop(pipe);
        child.wait_with_output().expect("wait")
    } else {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }
}

/// A readable account of a command's result, for assertion messages.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?}\nexited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` and asserts that it succeeds; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd, None);
    assert!(out.status.success(), "{}", describe(cmd, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` under `script(1)`, i.e. with a terminal on its stdio (ctr's
/// `-t` needs one); returns the output (the terminal's, with `\r\n`).
///
/// script(1) runs the line with `$SHELL -c`. The line `exec`s the command
/// so that it is the session leader, in the terminal's foreground process
/// group, whatever that shell is: dash would otherwise fork `timeout`, which
/// moves itself into a new, background, process group, where ctr's switch
/// of the terminal to raw mode stops it with SIGTTOU until the timeout.
///
/// script(1)'s stdin is a pipe that stays open (and empty) until the
/// command has exited. At EOF on its stdin script writes the terminal's EOF
/// character (^D) into the terminal; if the command has not switched the
/// terminal to raw mode yet, the kernel's line discipline queues that EOF
/// as a NUL byte (`__DISABLED_CHAR`), which a raw-mode read later returns
/// as data: `podman run -it` then passes a NUL into the container's
/// terminal, whose echo (`^@`) shows in the output of any container still
/// running a moment later, under runc as under capsa.
pub fn run_in_terminal(cmd: &Command) -> Output {
    let mut line = String::from("exec ");
    for a in std::iter::once(cmd.get_program()).chain(cmd.get_args()) {
        line.push_str(&shell_quote(&a.to_string_lossy()));
        line.push(' ');
    }
    let mut s = Command::new("script");
    s.args(["-qefc", &line, "/dev/null"])
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = s.spawn().expect("run script(1)");
    // Held (not written) until the command is done: `wait_with_output`
    // would close it first.
    let stdin = child.stdin.take();
    let out = child.wait_with_output().expect("wait for script(1)");
    drop(stdin);
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A unique container name for one test and runtime.
pub fn container_name(test: &str, rt: Runtime) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("capsa-test-{test}-{}-{}-{n}", rt.name(), std::process::id())
}

/// A marker number for `sleep`, unique enough to find the process by its
/// command line on the host.
pub fn sleep_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}", 7_000_000 + (nanos ^ std::process::id()) % 1_000_000)
}

/// Holds one of [`MAX_CONTAINER_TESTS`] slots for running containers.
pub struct ContainerSlot(());

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

/// Waits for a free container slot (at most [`MAX_CONTAINER_TESTS`] tests run
/// containers at once: each VM boot is CPU-bound for ~30 s).
pub fn container_slot() -> ContainerSlot {
    let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    while *used >= MAX_CONTAINER_TESTS {
        used = SLOT_FREED.wait(used).unwrap_or_else(|e| e.into_inner());
    }
    *used += 1;
    ContainerSlot(())
}

impl Drop for ContainerSlot {
    fn drop(&mut self) {
        let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        SLOT_FREED.notify_one();
    }
}

/// Which engine owns a container, for its cleanup.
#[derive(Clone, Copy, Debug)]
pub enum Engine {
    Podman,
    Ctr,
    Docker,
}

/// A container of one engine, force-removed when dropped (also when the
/// test failed): through the engine first; then, as a last resort, host
/// processes naming its id are killed and the runtime's state is deleted
/// (`RUNTIME --root ROOT delete --force ID`), so that a runtime that fails
/// to stop leaves nothing running either.
pub struct Container {
    pub engine: Engine,
    pub name: String,
    runtime: Runtime,
    root: PathBuf,
    /// Where the engine writes the container's id (`--cidfile`), if known.
    cidfile: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Container {
    /// A guard for container `name`, run by `runtime` whose state root is
    /// `root`.
    pub fn new(engine: Engine, name: &str, runtime: Runtime, root: &Path) -> Container {
        Container {
            engine,
            name: name.to_owned(),
            runtime,
            root: root.to_owned(),
            cidfile: None,
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A path for the engine's `--cidfile`, read back for the cleanup.
    pub fn cidfile(&mut self) -> PathBuf {
        let p = self._dir.path().join("cid");
        self.cidfile = Some(p.clone());
        p
    }

    /// The container's full id, once the engine has written the cidfile
    /// (ctr's id is its name).
    pub fn id(&self) -> Option<String> {
        match &self.cidfile {
            Some(p) => std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            None if matches!(self.engine, Engine::Ctr) => Some(self.name.clone()),
            None => None,
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let e = engines();
        let quiet = |mut c: Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        match self.engine {
            Engine::Podman => {
                let mut c = e.command("podman");
                c.args(["rm", "--force", "--time", "0", &self.name]);
                quiet(c);
            }
            Engine::Docker => {
                let mut c = e.command("docker");
                c.args(["rm", "--force", &self.name]);
                quiet(c);
            }
            Engine::Ctr => {
                let mut c = e.command("ctr");
                c.args(["task", "kill", "--signal", "SIGKILL", &self.name]);
                quiet(c);
                let mut c = e.command("ctr");
                c.args(["task", "delete", "--force", &self.name]);
                quiet(c);
                let mut c = e.command("ctr");
                c.args(["container", "delete", &self.name]);
                quiet(c);
            }
        }
        let Some(id) = self.id() else { return };
        let left = host_processes_with(&id);
        if left.is_empty() && !self.root.join(&id).exists() {
            return;
        }
        eprintln!("cleanup of {id}: the engine left {left:#?}; killing them");
        for (pid, _) in &left {
            // The test's own container processes (VMM, conmon, shim), by pid.
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        let mut c = Command::new("timeout");
        c.arg("30")
            .arg(self.runtime.binary())
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &id]);
        quiet(c);
    }
}

/// Pids and command lines of the host's processes whose command line
/// contains `needle`.
pub fn host_processes_with(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            found.push((pid, line.trim_end().to_owned()));
        }
    }
    found
}

/// Asserts that, within 30 s, nothing of container `id` is left: no
/// `<root>/<id>` state directory and no host process naming the id.
pub fn assert_nothing_left(root: &Path, id: &str) {
    let state = root.join(id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = host_processes_with(id);
        if !state.exists() && procs.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "container {id} left behind: state dir {} exists: {}; processes: {procs:#?}",
                state.display(),
                state.exists()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The OCI runtime calls logged by `runc-logged` so far (for messages).
pub fn runtime_calls() -> String {
    std::fs::read_to_string(engines().run.join("runtime-calls.log")).unwrap_or_default()
}
