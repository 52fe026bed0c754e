//! Fixtures of the OCI runtime tests: busybox bundles, `capsa` with a
//! private `--root`, and process checks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use super::agent::agent_binary;
use crate::{busybox, capsa_bin, guest_kernel};

/// Seconds one `capsa create`/`run` may take (a guest boot on a busy,
/// emulated host).
pub const BOOT_TIMEOUT_S: u64 = 600;

/// A busybox root filesystem directory at `dir/rootfs` (busybox and a
/// symlink per applet in /bin, /etc/passwd with root and nobody).
pub fn busybox_rootfs_dir(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox()).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .unwrap();
    root
}

/// A minimal vm bundle's config.json running `args`.
pub fn vm_config(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "hostname": "capsa-test",
        "process": {
            "args": args,
            "env": ["PATH=/bin:/usr/bin", "TERM=xterm"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0}
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        // A new network namespace, as `runc spec` writes: loopback only.
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "mount"}]}
    })
}

/// A bundle directory `dir/name` with a busybox rootfs and `config`.
pub fn bundle(dir: &Path, name: &str, config: &Value) -> PathBuf {
    let b = dir.join(name);
    std::fs::create_dir_all(&b).unwrap();
    busybox_rootfs_dir(&b);
    std::fs::write(
        b.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    b
}

/// `capsa --root ROOT` with the guest kernel and agent found through the
/// environment.
pub fn capsa_cmd(root: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(BOOT_TIMEOUT_S.to_string())
        .arg(capsa_bin())
        .arg("--root")
        .arg(root)
        .env("CAPSA_KERNEL", guest_kernel())
        .env("CAPSA_AGENT", agent_binary());
    cmd
}

/// Runs `capsa --root ROOT ARGS` with stdin from /dev/null.
pub fn capsa_in(root: &Path, args: &[&str]) -> Output {
    capsa_cmd(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run capsa")
}

/// The command line of `pid`, NULs as spaces (empty when it is gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Host processes whose command line contains `needle`.
pub fn host_processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| cmdline(*pid).contains(needle))
        .collect()
}

/// Makes this test process a child subreaper, so that the VMM processes
/// that `capsa create` leaves behind are its children (as with conmon).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Waits for the child `pid`; returns its exit code (128+N for signal N).
pub fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid writes the status into the valid int given.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        rc,
        pid,
        "waitpid {pid}: {}",
        std::io::Error::last_os_error()
    );
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Asserts success, showing the output otherwise.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a failure whose stderr contains `needle`.
pub fn assert_fails(out: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(needle),
        "{what}: expected a failure mentioning {needle:?}, got {}:\nstderr: {stderr}",
        out.status
    );
}

/// Runs `capsa --root ROOT ARGS` whose helpers outlive it (`create`): the
/// container keeps the stdio, so stdout and stderr go to files (as they go
/// to conmon's pipes) rather than pipes this process would wait on.
pub fn capsa_detached(root: &Path, args: &[&str], logs: &Path) -> Output {
    let out = logs.with_extension("out");
    let err = logs.with_extension("err");
    let status = capsa_cmd(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .expect("run capsa");
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}
