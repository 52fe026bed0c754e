//! Fixtures of the device tests (and of the agent tests, which boot the
//! same way): a `capsa vmm` child process whose serial console is watched
//! line by line, ext4 images made by `mkfs.ext4 -d`, busybox initramfs
//! images with extra files, and the guest-side `vsock-tool`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use capsa_vmm::boot::initramfs::CpioWriter;

use crate::{busybox, capsa_bin, workspace_root};

/// Where test helpers are built: `$CARGO_TARGET_DIR/capsa-tests`, or the
/// workspace's `target/capsa-tests`.
pub fn helper_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("capsa-tests")
}

/// The guest-side vsock helper (`tests/support/vsock_tool.rs`), compiled
/// once per test process by `rustc` into a static binary (see that file
/// for its usage).
pub fn vsock_tool() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let dir = helper_dir();
        std::fs::create_dir_all(&dir).expect("create helper dir");
        let src = workspace_root().join("tests/support/vsock_tool.rs");
        let out = dir.join("vsock-tool");
        // Unique temporary output, then rename: test processes may build it
        // at the same time.
        let tmp = dir.join(format!("vsock-tool.tmp{}", std::process::id()));
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let status = Command::new(rustc)
            .args([
                "--edition=2021",
                "-O",
                "-C",
                "strip=symbols",
                "-C",
                "debuginfo=0",
                "-C",
                "panic=abort",
                "-C",
                "target-feature=+crt-static",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&tmp)
            .status()
            .expect("run rustc for vsock-tool");
        assert!(status.success(), "compiling {} failed", src.display());
        std::fs::rename(&tmp, &out).expect("rename vsock-tool");
        out
    })
}

/// Makes an ext4 image of `size_mib` MiB at `image` whose content is the
/// directory `src` (`mkfs.ext4 -d`, from e2fsprogs).
pub fn mkfs_ext4(src: &Path, image: &Path, size_mib: u32) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d"])
        .arg(src)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("run mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4 -d {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads the file `path` inside the ext4 image `image` on the host
/// (`debugfs -R cat`), without mounting it.
pub fn ext4_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .expect("run debugfs");
    assert!(out.status.success(), "debugfs cat {path} failed");
    out.stdout
}

/// An extra file of an initramfs: path (relative), mode, content.
pub type InitramfsFile<'a> = (&'a str, u32, &'a [u8]);

/// Like [`crate::busybox_initramfs`], plus `files` (their parent
/// directories must be in the list of directories made here: `bin`,
/// `dev`, `proc`, `sys`, `tmp`, `mnt`, `data`, `etc`).
pub fn busybox_initramfs_with(dir: &Path, init: &str, files: &[InitramfsFile<'_>]) -> PathBuf {
    let path = dir.join("initramfs.cpio");
    let file = std::fs::File::create(&path).expect("create initramfs");
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    for d in ["bin", "dev", "proc", "sys", "tmp", "mnt", "data", "etc"] {
        w.dir(d, 0o755).unwrap();
    }
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.char_dev("dev/null", 0o666, 1, 3).unwrap();
    w.file("bin/busybox", 0o755, &std::fs::read(busybox()).unwrap())
        .unwrap();
    w.symlink("bin/sh", "busybox").unwrap();
    for (name, mode, data) in files {
        w.file(name, *mode, data).unwrap();
    }
    w.file(
        "init",
        0o755,
        format!("#!/bin/busybox sh\n{init}").as_bytes(),
    )
    .unwrap();
    w.finish().unwrap();
    path
}

/// Deterministic pseudo-random bytes (xorshift64*), so that a corrupted,
/// shifted or truncated transfer cannot look right.
/// `seed | 1` starts the xorshift: seeds 2k and 2k+1 give the same bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The MD5 of `data` as lowercase hex (through the host's `md5sum`), to
/// compare with busybox `md5sum` in the guest.
pub fn md5_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("md5sum output");
    writer.join().unwrap().expect("write to md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    eof: bool,
}

/// A running `capsa vmm`. Its stdout (the serial console, when asked for)
/// is collected line by line; stderr is collected whole. Killed on drop.
pub struct Vm {
    child: Option<Child>,
    console: Arc<(Mutex<Console>, Condvar)>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// When the process was spawned (the VMM start, up to a fork+exec).
    pub started: Instant,
}

/// How a [`Vm`] ended.
#[derive(Debug)]
pub struct VmExit {
    /// The process's status (`None` when it was killed after the timeout).
    pub status: Option<ExitStatus>,
    /// The serial console.
    pub stdout: String,
    /// capsa's log and messages.
    pub stderr: String,
}

impl Vm {
    /// Spawns `capsa` with `args` (e.g. `["vmm", "--kernel", …]`), with
    /// extra environment variables `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &Path)]) -> Vm {
        let mut cmd = Command::new(capsa_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn capsa");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let c = console.clone();
        let t1 = std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf).unwrap_or(0);
                let (lock, cv) = &*c;
                let mut con = lock.lock().unwrap();
                if n == 0 {
                    con.eof = true;
                    cv.notify_all();
                    return;
                }
                let line = String::from_utf8_lossy(&buf);
                con.lines
                    .push(line.trim_end_matches(['\n', '\r']).to_owned());
                cv.notify_all();
            }
        });
        let e = stderr.clone();
        let t2 = std::thread::spawn(move || {
            let mut r = err;
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Vm {
            child: Some(child),
            console,
            stderr,
            threads: vec![t1, t2],
            started,
        }
    }

    /// Waits until a console line satisfies `pred` and returns it; `None`
    /// when the console ends or `timeout` passes first.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut con = lock.lock().unwrap();
        let mut seen = 0;
        loop {
            if let Some(l) = con.lines[seen..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            seen = con.lines.len();
            let now = Instant::now();
            if con.eof || now >= deadline {
                return None;
            }
            con = cv.wait_timeout(con, deadline - now).unwrap().0;
        }
    }

    /// The process id of the VMM.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.0.lock().unwrap().lines.join("\n")
    }

    /// capsa's stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits for the VMM to exit (killing it after `timeout`) and returns
    /// how it ended.
    pub fn wait(mut self, timeout: Duration) -> VmExit {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait().expect("wait for capsa") {
                Some(s) => break Some(s),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        VmExit {
            status,
            stdout: self.console(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl VmExit {
    /// Panics (with the console and stderr) unless capsa exited 0.
    pub fn assert_clean(&self) {
        assert!(
            self.status.map(|s| s.code() == Some(0)).unwrap_or(false),
            "capsa did not exit 0 ({:?})\nconsole:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "stderr:\n{}",
            self.stderr
        );
    }

    /// The rest of the first console line that starts with `prefix`.
    pub fn field(&self, prefix: &str) -> Option<String> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|s| s.trim().to_owned()))
    }
}
