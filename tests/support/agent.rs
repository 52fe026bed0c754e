//! Fixtures of the agent tests: the static guest agent, a busybox rootfs
//! image, a guest booted with `capsa vmm --agent` and reached through the
//! host client over hybrid vsock, and helpers to run a process and collect
//! its streams.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capsa_agent::client::{attach_stream, Client, HybridVsockConnector};
use capsa_agent::protocol::{HelloResult, ProcessSpec, StreamTokens};

use super::devices::{mkfs_ext4, Vm, VmExit};
use crate::{busybox, guest_kernel, workspace_root};

/// The statically linked agent, built by `guest-agent/build.sh` (once per
/// test process; cargo makes it a no-op when it is fresh).
pub fn agent_binary() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let out = Command::new(workspace_root().join("guest-agent/build.sh"))
            .output()
            .expect("run guest-agent/build.sh");
        assert!(
            out.status.success(),
            "guest-agent/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.is_file(), "build.sh printed {}", path.display());
        path
    })
}

/// An ext4 image (`mkfs.ext4 -d`) of a minimal busybox root filesystem:
/// `/bin/busybox`, a symlink per applet in `/bin`, and empty `/proc`,
/// `/sys`, `/dev`, `/tmp`, `/etc`, `/root`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox())
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/hostname"), "capsa\n").unwrap();
    let image = dir.join("rootfs.ext4");
    mkfs_ext4(&root, &image, 16);
    image
}

/// A guest booted with the agent as `/init`, a connected client, and how
/// long the agent took to answer `hello`.
pub struct AgentGuest {
    /// The `capsa vmm` process.
    pub vm: Vm,
    /// Reaches guest ports through the VMM's vsock Unix socket.
    pub connector: HybridVsockConnector,
    /// The control connection (port 1024).
    pub client: Client,
    /// The `hello` result.
    pub hello: HelloResult,
    /// From spawning `capsa vmm` to the `hello` answer.
    pub hello_after: Duration,
    _dir: tempfile::TempDir,
}

impl AgentGuest {
    /// Boots `capsa vmm --agent` with `disks` (`--disk` values) and the
    /// vsock device, and connects (retrying while the guest boots, up to
    /// `timeout`).
    pub fn boot(disks: &[String], timeout: Duration) -> AgentGuest {
        let kernel = guest_kernel();
        let agent = agent_binary();
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut args = vec![
            "--log-format".to_string(),
            "text".into(),
            "vmm".into(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--agent".into(),
            "--boot-timer".into(),
            "--vsock-uds".into(),
            uds.display().to_string(),
        ];
        for d in disks {
            args.push("--disk".into());
            args.push(d.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cache = dir.path().join("cache");
        let vm = Vm::spawn(
            &args,
            &[("CAPSA_AGENT", agent), ("CAPSA_CACHE_DIR", &cache)],
        );
        let connector = HybridVsockConnector::new(&uds);
        let deadline = vm.started + timeout;
        let connected = Client::connect_retry(&connector, deadline, Duration::from_millis(200));
        let hello_after = vm.started.elapsed();
        let (client, hello) = match connected {
            Ok(c) => c,
            Err(e) => {
                let exit = vm.wait(Duration::from_secs(1));
                panic!(
                    "the agent never answered hello: {e}\nconsole:\n{}\nstderr:\n{}",
                    exit.stdout, exit.stderr
                );
            }
        };
        client.set_timeout(Some(Duration::from_secs(60)));
        AgentGuest {
            vm,
            connector,
            client,
            hello,
            hello_after,
            _dir: dir,
        }
    }

    /// Attaches the streams named by `tokens` that carry output; each is
    /// read to EOF in its own thread.
    pub fn collect_output(&self, tokens: &StreamTokens) -> Streams {
        let read = |token: &Option<String>| {
            token.as_ref().map(|t| {
                let mut s = attach_stream(&self.connector, t).expect("attach an output stream");
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).map(|_| out)
                })
            })
        };
        Streams {
            stdout: read(&tokens.stdout),
            stderr: read(&tokens.stderr),
        }
    }

    /// Attaches the stdin stream of `tokens`.
    pub fn stdin(&self, tokens: &StreamTokens) -> UnixStream {
        let token = tokens.stdin.as_ref().expect("a stdin stream");
        attach_stream(&self.connector, token).expect("attach stdin")
    }

    /// `shutdown` through the agent, then waits for the VMM to exit.
    pub fn shutdown(self, timeout: Duration) -> (VmExit, Duration) {
        let t0 = Instant::now();
        self.client.shutdown().expect("shutdown");
        let exit = self.vm.wait(timeout);
        (exit, t0.elapsed())
    }
}

/// Output streams being read.
pub struct Streams {
    stdout: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
    stderr: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
}

impl Streams {
    /// Waits for both streams' EOF; returns (stdout, stderr) as bytes.
    pub fn finish_bytes(self) -> (Vec<u8>, Vec<u8>) {
        let get = |h: Option<JoinHandle<std::io::Result<Vec<u8>>>>| {
            h.map(|h| h.join().unwrap().expect("read stream"))
                .unwrap_or_default()
        };
        (get(self.stdout), get(self.stderr))
    }

    /// Waits for both streams' EOF; returns stdout's bytes.
    pub fn stdout_bytes(self) -> Vec<u8> {
        self.finish_bytes().0
    }

    /// Waits for both streams' EOF; returns (stdout, stderr) as text.
    pub fn finish(self) -> (String, String) {
        let (o, e) = self.finish_bytes();
        (
            String::from_utf8_lossy(&o).into_owned(),
            String::from_utf8_lossy(&e).into_owned(),
        )
    }
}

/// A process running `args` with `PATH=/bin`, cwd `/`, as root.
pub fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "HOME=/root".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

/// Writes `data` to `stdin` in a thread, then half-closes it (the process
/// reads EOF).
pub fn feed(mut stdin: UnixStream, data: Vec<u8>) -> JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        stdin.write_all(&data)?;
        stdin.shutdown(Shutdown::Write)
    })
}
