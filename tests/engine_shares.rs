//! The container's files through a real engine (podman), runc against
//! capsa on the same image (issue 11's acceptance; docs/runtime.md
//! § Rootfs, Mounts, virtiofsd): a `-v` volume is live both ways while the
//! container runs, `:ro` refuses writes with EROFS, a file bind mount
//! works, and a write to the container's own `/` lands in its writable
//! layer (`podman diff`, `podman cp`) — the same under both runtimes.
//! capsa only: `io.capsa.rootfs=block` keeps the cached image (writes
//! lost, volumes still live), and a virtiofsd killed mid-run ends the
//! container with the reason in `podman logs`, leaving nothing behind.
//! docker: `-v`, `:ro` and a rootfs write in `docker diff`, runc and capsa.
//! containerd: a write to `/` of a `ctr run` container is in the snapshot
//! mount on the host while it runs.
//!
//! Fixtures: `tests/support/engines.rs`; engine setup: `scripts/engines.sh`.

use std::path::Path;
use std::time::{Duration, Instant};

use capsa_tests::support::engines::*;

mod podman_volume_and_rootfs_writes_reach_the_host {
    use super::*;
    #[test]
    fn runc() {
        super::podman_volume_and_rootfs_writes_reach_the_host(Runtime::Runc);
    }
    #[test]
    fn capsa() {
        super::podman_volume_and_rootfs_writes_reach_the_host(Runtime::Capsa);
    }
}

mod ctr_rootfs_write_lands_in_the_snapshot_mount {
    use super::*;
    #[test]
    fn runc() {
        super::ctr_rootfs_write_lands_in_the_snapshot_mount(Runtime::Runc);
    }
    #[test]
    fn capsa() {
        super::ctr_rootfs_write_lands_in_the_snapshot_mount(Runtime::Capsa);
    }
}

mod docker_volume_and_rootfs_writes_reach_the_host {
    use super::*;
    #[test]
    fn runc() {
        super::docker_volume_and_rootfs_writes_reach_the_host(Runtime::Runc);
    }
    #[test]
    fn capsa() {
        super::docker_volume_and_rootfs_writes_reach_the_host(Runtime::Capsa);
    }
}

fn podman(rt: Runtime) -> std::process::Command {
    let mut c = engines().command("podman");
    c.arg("--runtime").arg(rt.binary());
    c
}

/// `podman --runtime RUNTIME run --name NAME --cidfile F` for the guarded
/// container.
fn podman_run(rt: Runtime, guard: &mut Container) -> std::process::Command {
    let mut c = podman(rt);
    c.args(["run", "--name", &guard.name.clone(), "--cidfile"])
        .arg(guard.cidfile());
    c
}

/// A host directory for volumes, `/tmp`-like so that any uid may write.
fn host_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn wait_for(path: &Path, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `podman wait NAME`: the container's exit code.
fn podman_wait(name: &str) -> String {
    ok(engines().command("podman").args(["wait", name]))
        .trim()
        .to_owned()
}

/// The container's script: what it reads and writes, step by step, with
/// the results in the volume (`/data`) for the host to check.
const LIVE_SCRIPT: &str = "cat /data/in > /data/seen-in\n\
    echo hi > /etc/newfile\n\
    cat /etc/capsa-file > /data/file-seen\n\
    echo x 2> /data/ro-err > /ro/z; echo $? > /data/ro-rc\n\
    echo ready > /data/ready\n\
    while [ ! -e /data/from-host ]; do sleep 0.2; done\n\
    cat /data/from-host > /data/host-seen.tmp; mv /data/host-seen.tmp /data/host-seen\n";

/// `podman run -d -v DIR:/data -v DIR:/ro:ro -v FILE:/etc/capsa-file`:
/// the container reads a host file from the volume, writes one there
/// that the host sees while it runs, sees a file the host writes after it
/// started, cannot write through `:ro` (EROFS), reads the bind-mounted
/// file; its write to `/etc/newfile` is in `podman diff` and comes out of
/// `podman cp`. Then `podman rm` leaves nothing.
fn podman_volume_and_rootfs_writes_reach_the_host(rt: Runtime) {
    let _slot = container_slot();
    let vol = host_dir();
    let v = vol.path();
    std::fs::write(v.join("in"), "from the host\n").unwrap();
    let files = host_dir();
    let file = files.path().join("capsa-file");
    std::fs::write(&file, "a bind-mounted file\n").unwrap();
    let name = container_name("volume", rt);
    let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
    let mut cmd = podman_run(rt, &mut guard);
    cmd.arg("-d")
        .arg("-v")
        .arg(format!("{}:/data", v.display()))
        .arg("-v")
        .arg(format!("{}:/ro:ro", v.display()))
        .arg("-v")
        .arg(format!("{}:/etc/capsa-file", file.display()))
        .args([BUSYBOX, "sh", "-c", LIVE_SCRIPT]);
    let out = run(&mut cmd, None);
    assert!(out.status.success(), "{rt:?}: {}", describe(&cmd, &out));
    wait_for(
        &v.join("ready"),
        "the container's checks",
        Duration::from_secs(300),
    );

    // Written by the container while it runs: on the host at once.
    assert_eq!(read(&v.join("seen-in")), "from the host\n");
    assert_eq!(read(&v.join("file-seen")), "a bind-mounted file\n");
    assert_ne!(
        read(&v.join("ro-rc")).trim(),
        "0",
        "{rt:?}: wrote through :ro"
    );
    let ro_err = read(&v.join("ro-err"));
    assert!(
        ro_err.contains("Read-only file system"),
        "{rt:?}: {ro_err:?}"
    );
    assert!(!v.join("z").exists());
    // Written by the host after it started: seen by the container.
    std::fs::write(v.join("from-host.tmp"), "late host write\n").unwrap();
    std::fs::rename(v.join("from-host.tmp"), v.join("from-host")).unwrap();
    wait_for(
        &v.join("host-seen"),
        "the host's write",
        Duration::from_secs(120),
    );
    assert_eq!(read(&v.join("host-seen")), "late host write\n");
    assert_eq!(podman_wait(&name), "0", "{rt:?}");

    // The rootfs write is in the container's layer, as podman sees it.
    let diff = ok(engines().command("podman").args(["diff", &name]));
    assert!(
        diff.lines().any(|l| l.trim() == "A /etc/newfile"),
        "{rt:?}: podman diff:\n{diff}"
    );
    let copied = files.path().join("copied");
    ok(engines()
        .command("podman")
        .arg("cp")
        .arg(format!("{name}:/etc/newfile"))
        .arg(&copied));
    assert_eq!(read(&copied), "hi\n", "{rt:?}: podman cp");
    ok(engines().command("podman").args(["rm", &name]));
    assert_nothing_left(&rt.default_root(), &guard.id().expect("cidfile"));
}

/// `--annotation io.capsa.rootfs=block`: the rootfs is the cached image
/// under a RAM overlay, so the container can write to `/` but the write
/// is not in its layer (`podman diff`); its volume is live all the same.
#[test]
fn podman_block_rootfs_loses_rootfs_writes_and_keeps_volumes_live() {
    let rt = Runtime::Capsa;
    let _slot = container_slot();
    let vol = host_dir();
    let name = container_name("block", rt);
    let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
    let mut cmd = podman_run(rt, &mut guard);
    cmd.args(["--annotation", "io.capsa.rootfs=block", "-v"])
        .arg(format!("{}:/data", vol.path().display()))
        .args([
            BUSYBOX,
            "sh",
            "-c",
            "echo hi > /etc/newfile && cat /etc/newfile && echo v > /data/v",
        ]);
    let out = run(&mut cmd, None);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(read(&vol.path().join("v")), "v\n", "the volume is live");
    let diff = ok(engines().command("podman").args(["diff", &name]));
    assert!(
        !diff.contains("/etc/newfile"),
        "a block rootfs's writes stay in the guest:\n{diff}"
    );
    ok(engines().command("podman").args(["rm", &name]));
    assert_nothing_left(&rt.default_root(), &guard.id().expect("cidfile"));
}

/// The container's virtiofsd (found by the state directory in its
/// command line).
fn virtiofsd_of(id: &str) -> Vec<u32> {
    host_processes_with(&format!("/{id}/shares"))
        .into_iter()
        .filter(|(_, c)| c.contains("virtiofsd"))
        .map(|(p, _)| p)
        .collect()
}

/// A virtiofsd killed while the container runs: the container ends at
/// once with a failure status and the reason in `podman logs` (its
/// stderr), and `podman rm` leaves nothing (no VMM, no virtiofsd, no
/// state directory).
#[test]
fn podman_killed_virtiofsd_ends_the_container_with_the_reason() {
    let rt = Runtime::Capsa;
    let _slot = container_slot();
    let name = container_name("vfskill", rt);
    let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
    let marker = sleep_marker();
    let mut cmd = podman_run(rt, &mut guard);
    cmd.args(["-d", BUSYBOX, "sleep", &marker]);
    let out = run(&mut cmd, None);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    let id = guard.id().expect("cidfile");
    let servers = virtiofsd_of(&id);
    assert!(!servers.is_empty(), "no virtiofsd serves {id}");
    let killed = Instant::now();
    for p in &servers {
        // SAFETY: kill(2) of the virtiofsd serving this test's container.
        unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
    }
    let status = podman_wait(&name);
    eprintln!("the container ended {:?} after the kill", killed.elapsed());
    assert_ne!(status, "0", "a lost virtiofsd is a failure");
    let logs = engines()
        .command("podman")
        .args(["logs", &name])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(
        stderr.contains("capsa: the container ended: virtio-fs share")
            && stderr.contains("disconnected"),
        "podman logs: {stderr}"
    );
    ok(engines().command("podman").args(["rm", &name]));
    assert_nothing_left(&rt.default_root(), &id);
    assert!(virtiofsd_of(&id).is_empty());
}

/// containerd's runc shim gives the runtime `--root
/// /run/containerd/runc/<namespace>`.
const CTR_ROOT: &str = "/run/containerd/runc/default";

/// `ctr run -d --runc-binary RUNTIME IMAGE ID sh -c 'echo hi > /newfile;
/// sleep'`: the file appears in the container's snapshot, mounted by
/// containerd at its bundle's `rootfs` on the host, while it runs.
fn ctr_rootfs_write_lands_in_the_snapshot_mount(rt: Runtime) {
    let _slot = container_slot();
    let name = container_name("ctr-rootfs", rt);
    let _guard = Container::new(Engine::Ctr, &name, rt, Path::new(CTR_ROOT));
    let mut cmd = engines().command("ctr");
    cmd.args(["run", "-d", "--runc-binary"])
        .arg(rt.binary())
        .args([BUSYBOX, &name, "sh", "-c"])
        .arg("echo hi > /newfile; exec sleep 1000");
    ok(&mut cmd);
    let mounted = engines()
        .run
        .join("containerd/io.containerd.runtime.v2.task/default")
        .join(&name)
        .join("rootfs/newfile");
    wait_for(&mounted, "the container's write", Duration::from_secs(300));
    let deadline = Instant::now() + Duration::from_secs(30);
    while read(&mounted) != "hi\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(read(&mounted), "hi\n", "{rt:?}");
    ok(engines()
        .command("ctr")
        .args(["task", "kill", "--signal", "SIGKILL", &name]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = ok(engines().command("ctr").args(["task", "ls"]));
        if tasks
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "after ctr task kill: {tasks}");
        std::thread::sleep(Duration::from_millis(250));
    }
    ok(engines().command("ctr").args(["task", "delete", &name]));
    ok(engines()
        .command("ctr")
        .args(["container", "delete", &name]));
    assert_nothing_left(Path::new(CTR_ROOT), &name);
}

/// dockerd 20.10 gives every runtime of its `runtimes` entries `--root
/// <exec-root>/runtime-runc/moby` (seen in the logged calls).
const DOCKER_ROOT: &str = "docker/runtime-runc/moby";

/// `docker run -v DIR:/data -v DIR:/ro:ro`: the container reads a host
/// file and writes one the host sees, `:ro` refuses with EROFS, and its
/// write to `/etc/newfile` is in `docker diff`.
fn docker_volume_and_rootfs_writes_reach_the_host(rt: Runtime) {
    let _slot = container_slot();
    let e = engines();
    if rt == Runtime::Capsa {
        e.set_docker_capsa_runtime(&rt.binary());
    }
    let vol = host_dir();
    let v = vol.path();
    std::fs::write(v.join("in"), "from the host\n").unwrap();
    let name = container_name("docker-volume", rt);
    let mut guard = Container::new(Engine::Docker, &name, rt, &e.run.join(DOCKER_ROOT));
    let cidfile = guard.cidfile();
    let mut cmd = e.command("docker");
    cmd.args(["run", "--runtime", rt.docker_name(), "--network", "none"])
        .args(["--name", &name, "--cidfile"])
        .arg(&cidfile)
        .arg("-v")
        .arg(format!("{}:/data", v.display()))
        .arg("-v")
        .arg(format!("{}:/ro:ro", v.display()))
        .args([
            BUSYBOX,
            "sh",
            "-c",
            "cat /data/in; echo out > /data/out; echo x > /ro/z; echo hi > /etc/newfile",
        ]);
    let out = run(&mut cmd, None);
    assert!(out.status.success(), "{rt:?}: {}", describe(&cmd, &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the host\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Read-only file system"), "{rt:?}: {stderr}");
    assert_eq!(read(&v.join("out")), "out\n");
    assert!(!v.join("z").exists());
    let diff = ok(e.command("docker").args(["diff", &name]));
    assert!(
        diff.lines().any(|l| l.trim() == "A /etc/newfile"),
        "{rt:?}: docker diff:\n{diff}"
    );
    let id = guard.id().expect("cidfile");
    ok(e.command("docker").args(["rm", &name]));
    assert_nothing_left(&e.run.join(DOCKER_ROOT), &id);
}
