//! `capsa-jailer`: a jailed process runs as the given uid/gid, in its
//! cgroup, with the jail as its root, no capabilities and the seccomp deny
//! list; exit statuses and signals pass through; bad input is refused with
//! a message naming the flag and leaves nothing behind; and the real guest
//! kernel boots with `capsa vmm` inside the jail (one boot).
//!
//! Most cases run a static busybox as the jailed binary (no guest boot);
//! the boot case runs a statically linked `capsa`, built here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use capsa_tests::*;

const UID: &str = "65534";
const GID: &str = "65534";
const PARENT_CGROUP: &str = "capsa-test";

/// The `capsa` binary, statically linked as every binary of the
/// workspace (`.cargo/config.toml`): the jail holds no shared libraries.
fn static_capsa() -> &'static Path {
    capsa_bin()
}

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// `--cgroup` flags that work on this host's cgroup version (the memory
/// controller is left alone: the test process may sit in a limited
/// memory cgroup of its own).
fn cgroup_flags() -> Vec<&'static str> {
    let cpu = if cgroup_v2() {
        "cpu.weight=50"
    } else {
        "cpu.shares=512"
    };
    vec![
        "--parent-cgroup",
        PARENT_CGROUP,
        "--cgroup",
        "pids.max=256",
        "--cgroup",
        cpu,
    ]
}

/// The cgroup directories of `id` (pids; v1: per controller).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    if cgroup_v2() {
        vec![Path::new("/sys/fs/cgroup").join(PARENT_CGROUP).join(id)]
    } else {
        ["pids", "cpu"]
            .iter()
            .map(|c| {
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(PARENT_CGROUP)
                    .join(id)
            })
            .collect()
    }
}

/// A unique id per test process and call.
fn unique_id(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

fn jailer_cmd(base: &Path, id: &str, exec_file: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg("300")
        .arg(jailer_bin())
        .args(["--id", id, "--exec-file"])
        .arg(exec_file)
        .args(["--uid", UID, "--gid", GID, "--chroot-base-dir"])
        .arg(base);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `capsa-jailer cleanup` for `id`; the jail and cgroups are gone.
fn cleanup(base: &Path, id: &str, exec_file: &Path) {
    let out = Command::new(jailer_bin())
        .args(["cleanup", "--id", id, "--exec-file"])
        .arg(exec_file)
        .arg("--chroot-base-dir")
        .arg(base)
        .args(["--parent-cgroup", PARENT_CGROUP])
        .output()
        .unwrap();
    assert!(out.status.success(), "cleanup: {}", text(&out.stderr));
    let name = exec_file.file_name().unwrap();
    assert!(!base.join(name).join(id).exists(), "jail dir left");
    for d in cgroup_dirs(id) {
        assert!(!d.exists(), "{} left", d.display());
    }
}

/// Best-effort `capsa-jailer cleanup` when a test fails half-way, so that
/// no cgroup is left on the host.
struct CleanupOnDrop<'a>(&'a Path, &'a str, &'a Path);

impl Drop for CleanupOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Command::new(jailer_bin())
            .args(["cleanup", "--id", self.1, "--exec-file"])
            .arg(self.2)
            .arg("--chroot-base-dir")
            .arg(self.0)
            .args(["--parent-cgroup", PARENT_CGROUP])
            .output();
    }
}

fn assert_nothing_left(base: &Path, id: &str, what: &str) {
    let left: Vec<_> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{what}: left behind: {left:?}");
    for d in cgroup_dirs(id) {
        assert!(!d.exists(), "{what}: {} left", d.display());
    }
}

#[test]
fn jailed_process_runs_unprivileged_in_its_jail_and_cgroups() {
    require_kvm();
    let base = tempfile::tempdir().unwrap();
    let id = unique_id("conf");
    let bb = busybox();
    let _guard = CleanupOnDrop(base.path(), &id, &bb);
    let script = "echo ROOT $(ls / | tr '\\n' ' ')\n\
        cat /proc/self/status\n\
        cat /proc/self/cgroup\n\
        echo NOFILE $(ulimit -n)\n\
        echo ENV $(env | sort | tr '\\n' ' ')\n\
        echo DEV $(stat -c '%u:%g:%t:%T:%a' /dev/kvm)\n\
        unshare -U true 2>&1; echo UNSHARE $?\n\
        mount -t tmpfs t /proc 2>&1; echo MOUNT $?\n\
        exit 7";
    let out = jailer_cmd(base.path(), &id, &bb)
        .args(cgroup_flags())
        .args(["--resource-limit", "no-file=512", "--env", "FOO=bar"])
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(7), "the exit status passes: {ctx}");
    assert!(stdout.contains("ROOT busybox dev proc\n"), "{ctx}");
    assert!(
        stdout.contains(&format!("Uid:\t{UID}\t{UID}\t{UID}\t{UID}\n")),
        "{ctx}"
    );
    assert!(
        stdout.contains(&format!("Gid:\t{GID}\t{GID}\t{GID}\t{GID}\n")),
        "{ctx}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "Groups:"),
        "supplementary groups: {ctx}"
    );
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{ctx}");
    assert!(stdout.contains("CapBnd:\t0000000000000000"), "{ctx}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{ctx}");
    assert!(stdout.contains("Seccomp:\t2"), "{ctx}");
    let cg = format!("/{PARENT_CGROUP}/{id}\n");
    let in_cgroup = |controller: &str| {
        stdout.lines().any(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            c.split(',').any(|c| c == controller) && format!("{path}\n") == cg
        })
    };
    if cgroup_v2() {
        assert!(in_cgroup(""), "{ctx}");
    } else {
        assert!(in_cgroup("pids") && in_cgroup("cpu"), "{ctx}");
    }
    assert!(stdout.contains("NOFILE 512\n"), "{ctx}");
    assert!(stdout.contains("FOO=bar"), "{ctx}");
    assert!(
        !stdout.contains("CARGO"),
        "the jailer's environment leaked: {ctx}"
    );
    // Device nodes owned by the VMM's uid/gid.
    assert!(
        stdout.contains(&format!("DEV {UID}:{GID}:a:e8:600\n")),
        "{ctx}"
    );
    // The seccomp deny list (EPERM) holds even for these.
    assert!(
        stdout.contains("Operation not permitted\nUNSHARE 1"),
        "{ctx}"
    );
    assert!(!stdout.contains("MOUNT 0"), "{ctx}");
    for d in cgroup_dirs(&id) {
        assert!(d.is_dir(), "{} missing", d.display());
    }
    assert!(base
        .path()
        .join("busybox")
        .join(&id)
        .join("busybox.pid")
        .is_file());
    cleanup(base.path(), &id, &bb);
}

/// A jail on another file system than the exec file (a tmpfs, as `/run`
/// usually is): the exec file is bind-mounted read-only instead of copied.
/// `--new-net-ns`: the jailed process sees only a loopback device.
/// `--exit-marker`: a regular file the jailed process left in its root
/// makes the jailer create the host file once the process has exited; a
/// missing one or a symlink does not.
#[test]
fn exit_markers_are_relayed_to_the_host_once_the_vmm_exits() {
    require_kvm();
    let base = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let id = unique_id("marker");
    let bb = busybox();
    let _guard = CleanupOnDrop(base.path(), &id, &bb);
    let marker = |name: &str| format!("{name}:{}", host.path().join(name).display());
    let out = jailer_cmd(base.path(), &id, &bb)
        .args(["--exit-marker", &marker("oom")])
        .args(["--exit-marker", &marker("missing")])
        .args(["--exit-marker", &marker("link")])
        .args(["--", "sh", "-c", "touch /oom && ln -s /oom /link && exit 9"])
        .output()
        .unwrap();
    let ctx = format!(
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(9), "{ctx}");
    let oom = std::fs::metadata(host.path().join("oom")).expect("oom relayed");
    assert!(oom.is_file() && oom.len() == 0, "{ctx}");
    assert!(!host.path().join("missing").exists(), "{ctx}");
    assert!(
        !host.path().join("link").exists(),
        "a symlink is no marker: {ctx}"
    );
    cleanup(base.path(), &id, &bb);
}

#[test]
fn exec_file_on_another_file_system_is_bind_mounted_and_new_net_ns_is_empty() {
    require_kvm();
    let shm = Path::new("/dev/shm");
    let base = tempfile::tempdir_in(shm).unwrap();
    let id = unique_id("shm");
    let bb = busybox();
    let _guard = CleanupOnDrop(base.path(), &id, &bb);
    let script = "echo IFACES $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')\n\
        grep ' /busybox ' /proc/self/mountinfo | grep -q ' ro,' && echo EXEC_RO\n\
        echo x 2>/dev/null > /busybox || echo EXEC_NOT_WRITABLE";
    let out = jailer_cmd(base.path(), &id, &bb)
        .args(["--new-net-ns", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "{ctx}");
    assert!(stdout.contains("IFACES lo\n"), "{ctx}");
    assert!(stdout.contains("EXEC_RO\n"), "{ctx}");
    assert!(stdout.contains("EXEC_NOT_WRITABLE\n"), "{ctx}");
    // On the host the jail holds an empty mount point, not a copy.
    let placed = base.path().join("busybox").join(&id).join("root/busybox");
    assert_eq!(std::fs::metadata(&placed).unwrap().len(), 0);
    cleanup(base.path(), &id, &bb);
    assert!(
        std::fs::metadata(&bb).unwrap().len() > 0,
        "the exec file is intact"
    );
}

#[test]
fn daemonize_returns_at_once_and_sigterm_is_forwarded() {
    require_kvm();
    let base = tempfile::tempdir().unwrap();
    let bb = busybox();

    // --daemonize: the jailer exits 0 right away, the VMM keeps running
    // with stdio on /dev/null, its pid in the pid file.
    let id = unique_id("daemon");
    let started = Instant::now();
    let out = jailer_cmd(base.path(), &id, &bb)
        .args(["--daemonize", "--", "sleep", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(3));
    let pid_file = base.path().join("busybox").join(&id).join("busybox.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let fd1 = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(fd1, Path::new("/dev/null"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    cleanup(base.path(), &id, &bb);

    // Without it: SIGTERM to the jailer reaches the jailed process, and
    // the jailer exits as it did (128 + 15).
    let id = unique_id("sig");
    let mut child = jailer_cmd(base.path(), &id, &bb)
        .args(["--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = base.path().join("busybox").join(&id).join("busybox.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pid_file.exists(), "no pid file");
    // `timeout` forwards SIGTERM to the jailer, which forwards it on.
    // SAFETY: kill with a pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    cleanup(base.path(), &id, &bb);
}

/// Runs the jailer with `args` (after the common flags); it must fail with
/// `code`, say `expect`, and leave nothing behind.
fn refused(base: &Path, exec_file: &Path, args: &[&str], code: i32, expect: &str) {
    let id = unique_id("bad");
    let _guard = CleanupOnDrop(base, &id, exec_file);
    let exec_file = exec_file.to_str().unwrap();
    let mut cmd = Command::new(jailer_bin());
    // The common flags, unless `args` gives its own value.
    for (flag, value) in [
        ("--id", id.as_str()),
        ("--exec-file", exec_file),
        ("--uid", UID),
        ("--gid", GID),
    ] {
        if !args.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    let out: Output = cmd
        .arg("--chroot-base-dir")
        .arg(base)
        .args(args)
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!stderr.contains("multiple times"), "{args:?}: {stderr}");
    assert_nothing_left(base, &id, &format!("{args:?}"));
}

#[test]
fn bad_input_is_refused_naming_the_flag_and_leaves_nothing() {
    require_kvm();
    let base = tempfile::tempdir().unwrap();
    let b = base.path();
    let bb = busybox();
    let run = |args: &[&str], code, expect: &str| refused(b, &bb, args, code, expect);

    // Command-line errors (exit 2).
    run(&["--id", "bad/id"], 2, "invalid value 'bad/id' for '--id");
    run(&["--id", &"a".repeat(65)], 2, "more than 64");
    run(&["--exec-file", "bin/busybox"], 2, "for '--exec-file");
    run(
        &["--exec-file", "/nonexistent/capsa"],
        2,
        "for '--exec-file",
    );
    run(&["--uid", "0"], 2, "for '--uid");
    run(&["--no-such-flag"], 2, "--no-such-flag");
    run(&["--cgroup", "tasks=1"], 2, "--cgroup");
    run(&["--resource-limit", "nproc=1"], 2, "--resource-limit");
    run(&["--bind", "/nonexistent:/x"], 2, "--bind");

    // Failing steps (exit 1), some after the jail was built.
    run(
        &["--netns", "/nonexistent/netns"],
        1,
        "--netns /nonexistent/netns",
    );
    run(
        &[
            "--parent-cgroup",
            PARENT_CGROUP,
            "--cgroup",
            "pids.max=bogus",
        ],
        1,
        "--cgroup pids.max=bogus",
    );
    // A dynamically linked exec file (Debian's coreutils; every binary of
    // this workspace is static): refused before anything is made.
    refused(b, Path::new("/usr/bin/true"), &[], 1, "--exec-file");
    // A script whose interpreter is not in the jail: the exec (`execveat`
    // of the file opened before `pivot_root`) fails inside the jail, after
    // every other step; all is undone.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    refused(
        b,
        &script,
        &["--parent-cgroup", PARENT_CGROUP, "--cgroup", "pids.max=10"],
        1,
        "(as /script in the jail): ENOENT",
    );
}

/// The guest's init: mark the boot timer, say so, reset.
const INIT: &str = "/bin/busybox mount -t devtmpfs dev /dev\n\
    MARK\n\
    /bin/busybox echo INIT REACHED\n\
    /bin/busybox reboot -f\n";

/// The `/proc/<pid>/status` field `name`.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn boots_the_guest_kernel_through_the_jailer() {
    require_kvm();
    let kernel = guest_kernel();
    let capsa = static_capsa();
    let base = tempfile::tempdir().unwrap();
    let id = unique_id("boot");
    let _guard = CleanupOnDrop(base.path(), &id, capsa);

    // As a caller does: place the kernel and initramfs in the jail first.
    let root = base.path().join("capsa").join(&id).join("root");
    std::fs::create_dir_all(&root).unwrap();
    if std::fs::hard_link(kernel, root.join("vmlinux")).is_err() {
        std::fs::copy(kernel, root.join("vmlinux")).unwrap();
    }
    busybox_initramfs(&root, &INIT.replace("MARK", MARK_INIT_REACHED));

    let stdout_path = base.path().join("stdout");
    let stderr_path = base.path().join("stderr");
    // The PVM check reads /sys, which the jail does not have.
    let quirks = if Path::new("/sys/module/kvm_pvm").exists() {
        "on"
    } else {
        "auto"
    };
    let started = Instant::now();
    let mut child = jailer_cmd(base.path(), &id, capsa)
        .args(cgroup_flags())
        .arg("--new-pid-ns")
        .args([
            "--",
            "vmm",
            "--kernel",
            "/vmlinux",
            "--initramfs",
            "/initramfs.cpio",
        ])
        .args(["--serial-console", "--boot-timer", "--host-quirks", quirks])
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&stdout_path).unwrap_or_default(),
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        )
    };

    // While the guest boots, look at the VMM process from the host.
    let pid_file = base.path().join("capsa").join(&id).join("capsa.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.exists() && Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "jailer exited: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|_| panic!("no pid file: {}", logs()))
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, child.id(), "--new-pid-ns: the VMM is a child");
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{UID}\t{UID}\t{UID}\t{UID}")
    );
    assert_eq!(
        status_field(pid, "Gid"),
        format!("{GID}\t{GID}\t{GID}\t{GID}")
    );
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(pid, "NSpid").split_whitespace().last(),
        Some("1")
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("/{PARENT_CGROUP}/{id}\n")),
        "{cgroups}"
    );
    // Its `/` is the jail's root: the root mount's source is the jail.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in {mountinfo}"));
    assert_eq!(
        root_mount.split(' ').nth(3),
        Some(root.to_str().unwrap()),
        "{mountinfo}"
    );

    let status = child.wait().unwrap();
    let wall = started.elapsed();
    let (stdout, stderr) = (
        std::fs::read_to_string(&stdout_path).unwrap(),
        std::fs::read_to_string(&stderr_path).unwrap(),
    );
    let ctx = logs();
    assert_eq!(status.code(), Some(0), "{ctx}");
    assert!(stdout.contains("INIT REACHED"), "{ctx}");
    let init_us = boot_timer_us(&stderr, "guest init reached")
        .unwrap_or_else(|| panic!("no boot-timer mark: {ctx}"));
    println!(
        "jailed boot: guest init after {:.3} s; wall time {:.3} s",
        init_us as f64 / 1e6,
        wall.as_secs_f64()
    );
    cleanup(base.path(), &id, capsa);
}
