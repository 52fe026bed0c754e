//! Fixtures of capsa's end-to-end tests: the `capsa` binary, the guest
//! kernel (built by `kernel-config/build.sh`, cached), initramfs images,
//! and the check that KVM is there at all.
//!
//! These tests boot real guests. Without `/dev/kvm` they fail with a clear
//! message rather than being skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use capsa_vmm::boot::initramfs::CpioWriter;

// Fixtures of one area each (one file per area, so that they do not grow
// into one big module).
pub mod support;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Fails the test unless `/dev/kvm` can be opened.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "/dev/kvm cannot be opened ({e}): capsa's end-to-end tests boot real guests and \
             need KVM; run them on a host with KVM (see README.md)"
        );
    }
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The target `.cargo/config.toml` builds for (statically linked): outputs
/// are in `target/<TARGET>/<profile>/`.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The `capsa` binary: `$CAPSA_BIN`, or built now with cargo (same
/// profile as the tests).
pub fn capsa_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CAPSA_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(cargo);
        // capsa-jailer too: `create` starts each VMM through it (each
        // binary named: `--bin` filters the packages' binaries).
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "capsa-vmm",
            "-p",
            "capsa-jailer",
            "--bin",
            "capsa",
            "--bin",
            "capsa-jailer",
        ]);
        if release {
            cmd.arg("--release");
        }
        run_checked(&mut cmd, "building capsa");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target
            .join(TARGET)
            .join(if release { "release" } else { "debug" })
            .join("capsa")
    })
}

/// The `capsa-jailer` binary: `$CAPSA_JAILER_BIN`, or the one
/// [`capsa_bin`] builds next to `capsa`.
pub fn jailer_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("CAPSA_JAILER_BIN") {
        Some(p) => PathBuf::from(p),
        None => capsa_bin().with_file_name("capsa-jailer"),
    })
}

/// `capsa vmm` arguments: the kernel, the initramfs and the serial console
/// (text logs), plus `extra` flags.
pub fn vmm_args<'a>(kernel: &'a Path, initrd: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--log-format",
        "text",
        "vmm",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initramfs",
        initrd.to_str().unwrap(),
        "--serial-console",
    ];
    args.extend_from_slice(extra);
    args
}

/// The guest kernel, from `kernel-config/build.sh` (built once, then
/// cached outside the checkout).
pub fn guest_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let script = workspace_root().join("kernel-config/build.sh");
        let out = run_checked(&mut Command::new(script), "kernel-config/build.sh");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            Path::new(&path).is_file(),
            "build.sh printed {path:?}, not a file"
        );
        PathBuf::from(path)
    })
}

/// Path of a statically linked busybox (Debian's busybox-static).
pub fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    let out = Command::new("file").arg("-L").arg(&p).output();
    let is_static =
        matches!(&out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("statically linked"));
    assert!(
        p.is_file() && (is_static || out.is_err()),
        "a statically linked /bin/busybox is needed (apt-get install busybox-static; \
         scripts/setup.sh installs it)"
    );
    p
}

/// Writes an uncompressed initramfs holding busybox and `init` (a shell
/// script run by busybox sh) into `dir`; returns its path.
pub fn busybox_initramfs(dir: &Path, init: &str) -> PathBuf {
    let path = dir.join("initramfs.cpio");
    let file = std::fs::File::create(&path).expect("create initramfs");
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    for d in ["bin", "dev", "proc", "sys", "tmp", "mnt"] {
        w.dir(d, 0o755).unwrap();
    }
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.char_dev("dev/null", 0o666, 1, 3).unwrap();
    w.file("bin/busybox", 0o755, &std::fs::read(busybox()).unwrap())
        .unwrap();
    w.symlink("bin/sh", "busybox").unwrap();
    w.file(
        "init",
        0o755,
        format!("#!/bin/busybox sh\n{init}").as_bytes(),
    )
    .unwrap();
    w.finish().unwrap();
    path
}

/// The init-script line that writes the boot timer's "init reached" mark.
pub const MARK_INIT_REACHED: &str = "/bin/busybox devmem 0xc0000000 8 123";

/// Asserts that `out` exited with `code` (the message shows both streams)
/// and returns its stdout and stderr as text.
pub fn exited_with(out: &Output, code: i32) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// Runs `capsa` with `args`, with a timeout; returns its output.
pub fn capsa(args: &[&str], timeout_s: u64) -> Output {
    capsa_with_env(args, &[], timeout_s)
}

/// Runs `capsa` with `args` and extra environment variables, with a
/// timeout; returns its output.
pub fn capsa_with_env(args: &[&str], env: &[(&str, &str)], timeout_s: u64) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(timeout_s.to_string())
        .arg(capsa_bin())
        .args(args)
        .envs(env.iter().copied());
    cmd.output().expect("run capsa")
}

/// The value of `key=N` in the first log line of `stderr` that contains
/// `message` (capsa's text log format).
pub fn log_field_u64(stderr: &str, message: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains(message))?;
    // Strip ANSI colour codes, then look for `key=digits`.
    let plain: String = {
        let mut out = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let rest = &plain[plain.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The microseconds of a `capsa: boot-timer: <what> after N us` line.
pub fn boot_timer_us(stderr: &str, what: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        l.strip_prefix(&format!("capsa: boot-timer: {what} after "))?
            .strip_suffix(" us")?
            .parse()
            .ok()
    })
}
