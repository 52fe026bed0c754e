//! The container's files over virtio-fs with the real `capsa`, the real
//! virtiofsd and real guests (docs/runtime.md § Rootfs, Mounts,
//! virtiofsd): a write-through rootfs, live bind mounts of directories and
//! files (both ways, `ro`, the creator's uid), a virtiofsd killed while the
//! container runs, a missing virtiofsd, and create/start/delete cycles that
//! must leave no virtiofsd, socket, mount or directory behind.
//!
//! Boots cost from ~30 s to minutes on the emulated test hosts: the live
//! checks and the kill share one container, and each soak cycle also checks
//! one combination of rootfs transport and `root.readonly`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsa_tests::require_kvm;
use capsa_tests::support::runtime::*;
use serde_json::{json, Value};

/// A bundle running `script` (a file in its rootfs), with `/data` a
/// read-write bind of `vol`, `/ro` a read-only bind of it, and `/etc/hosts`
/// a read-only bind of the file `hosts`.
fn shares_bundle(dir: &Path, name: &str, script: &str, vol: &Path, hosts: &Path) -> PathBuf {
    let mut config = vm_config(&["sh", "/t.sh"]);
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(
        json!({"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]}),
    );
    mounts.push(
        json!({"destination": "/ro", "type": "bind", "source": vol, "options": ["rbind", "ro"]}),
    );
    mounts.push(json!({"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]}));
    let b = bundle(dir, name, &config);
    std::fs::write(b.join("rootfs/t.sh"), script).unwrap();
    std::fs::write(b.join("rootfs/etc/hosts"), "image's hosts\n").unwrap();
    std::fs::set_permissions(
        b.join("rootfs/tmp"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    b
}

fn set_annotation(bundle: &Path, key: &str, value: &str) {
    let path = bundle.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["annotations"][key] = json!(value);
    std::fs::write(&path, c.to_string()).unwrap();
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

/// virtiofsd processes serving a tree under `root` (their command line
/// names the tree), as `(pid, cmdline)`.
fn virtiofsds_under(root: &Path) -> Vec<(i32, String)> {
    host_processes_with(&root.to_string_lossy())
        .into_iter()
        .map(|p| (p, cmdline(p)))
        .filter(|(_, c)| c.contains("virtiofsd"))
        .collect()
}

/// What a container of `root` may leave behind on the host: virtiofsd
/// processes, socket files, mounts (in this mount namespace) and state
/// directories.
fn leftovers(root: &Path) -> Vec<String> {
    let mut found: Vec<String> = virtiofsds_under(root)
        .into_iter()
        .map(|(p, c)| format!("process {p}: {c}"))
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(
        mountinfo
            .lines()
            .filter(|l| l.contains(&*root.to_string_lossy()))
            .map(|l| format!("mount: {l}")),
    );
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p.clone());
                if d == root {
                    found.push(format!("state directory {}", p.display()));
                }
            } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                found.push(format!("socket {}", p.display()));
            }
        }
    }
    found
}

/// One container: the rootfs and the volumes are live both ways while it
/// runs, `ro` refuses writes with EROFS, a file bind mount shares that
/// file, a file created by uid 65534 is 65534's on the host; one
/// virtiofsd serves it. Then virtiofsd is killed: the container ends at
/// once with the reason on its stderr (the engine's output), and `delete`
/// leaves nothing.
#[test]
fn rootfs_and_volumes_are_live_and_a_lost_virtiofsd_ends_the_container() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let id = "live1";
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "10.0.0.1 from-the-host\n").unwrap();
    let script = "cat /data/in > /data/seen-in\n\
        echo written-in-container > /etc/newfile\n\
        echo tmp > /tmp/by-root\n\
        su -s /bin/sh nobody -c 'echo x > /data/by-nobody'\n\
        echo x 2> /tmp/ro-err > /ro/z; echo \"$? $(cat /tmp/ro-err)\" > /data/ro-result\n\
        cat /etc/hosts > /data/hosts-seen\n\
        echo x 2> /dev/null >> /etc/hosts; echo $? > /data/hosts-rc\n\
        echo ready > /data/ready\n\
        while [ ! -e /data/from-host ]; do sleep 0.2; done\n\
        cat /data/from-host > /data/host-seen.tmp; mv /data/host-seen.tmp /data/host-seen\n\
        exec sleep 1000\n";
    let b = shares_bundle(dir.path(), "b", script, &vol, &hosts);
    let logs = dir.path().join("create");
    let started = Instant::now();
    let out = capsa_detached(
        &root,
        &["create", "--bundle", b.to_str().unwrap(), id],
        &logs,
    );
    assert_ok(&out, "capsa create");
    eprintln!("create took {:?}", started.elapsed());
    // One virtiofsd: the recorded process and its sandboxed child.
    let recorded = std::fs::read_to_string(root.join(id).join("virtiofsd.pid")).unwrap();
    let pid: i32 = recorded.split_whitespace().next().unwrap().parse().unwrap();
    let servers = virtiofsds_under(&root);
    let ppid = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                rest.split_whitespace().nth(1)?.parse::<i32>().ok()
            })
            .unwrap_or(0)
    };
    let pids: Vec<i32> = servers.iter().map(|(p, _)| *p).collect();
    assert!(
        pids.len() == 2 && pids.contains(&pid) && pids.iter().any(|&p| ppid(p) == pid),
        "virtiofsd {pid} and its sandboxed child: {servers:?}"
    );
    assert!(
        !root.join(id).join("virtiofsd.sock").exists(),
        "the socket is removed once connected"
    );
    assert_ok(&capsa_in(&root, &["start", id]), "capsa start");
    wait_for(
        &vol.join("ready"),
        "the container's checks",
        Duration::from_secs(300),
    );

    // Written while it runs, seen on the host at once.
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&vol.join("seen-in")), "from the host\n");
    assert_eq!(
        read(&b.join("rootfs/etc/newfile")),
        "written-in-container\n",
        "the rootfs is write-through"
    );
    let md = std::fs::metadata(vol.join("by-nobody")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534), "the creator's ids");
    let md = std::fs::metadata(b.join("rootfs/tmp/by-root")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
    let ro = read(&vol.join("ro-result"));
    assert!(
        ro.starts_with("1 ") && ro.contains("Read-only file system"),
        "a write to the ro bind: {ro:?}"
    );
    assert!(!vol.join("z").exists());
    assert_eq!(read(&vol.join("hosts-seen")), "10.0.0.1 from-the-host\n");
    assert_ne!(read(&vol.join("hosts-rc")).trim(), "0", "/etc/hosts is ro");
    assert_eq!(read(&hosts), "10.0.0.1 from-the-host\n");
    assert_eq!(read(&b.join("rootfs/etc/hosts")), "image's hosts\n");
    // Written by the host after the container started: seen.
    // (Written whole, then renamed in: the container waits for the name.)
    std::fs::write(vol.join("from-host.tmp"), "late host write\n").unwrap();
    std::fs::rename(vol.join("from-host.tmp"), vol.join("from-host")).unwrap();
    wait_for(
        &vol.join("host-seen"),
        "the host's write",
        Duration::from_secs(120),
    );
    assert_eq!(read(&vol.join("host-seen")), "late host write\n");

    // virtiofsd dies: the container ends, saying why, on its stderr.
    // SAFETY: kill(2) of the virtiofsd this test's container started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = capsa_in(&root, &["state", id]);
        let v: Value = serde_json::from_slice(&s.stdout).unwrap_or(Value::Null);
        if v["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "still {}", v["status"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = read(&logs.with_extension("err"));
    assert!(
        stderr.contains("capsa: the container ended: virtio-fs share \"capsa\"")
            && stderr.contains("disconnected"),
        "the container's stderr: {stderr}"
    );
    assert_ok(&capsa_in(&root, &["delete", id]), "capsa delete");
    assert_eq!(leftovers(&root), Vec::<String>::new());
}

/// No virtiofsd: `create` fails naming it, before anything is started,
/// and leaves nothing. A bad `io.capsa.rootfs` fails naming the
/// annotation. (No guest boots.)
#[test]
fn missing_virtiofsd_and_bad_transport_fail_create_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "").unwrap();
    let b = shares_bundle(dir.path(), "b", "true\n", &vol, &hosts);
    let out = capsa_cmd(&root)
        .env("CAPSA_VIRTIOFSD", "/nonexistent/virtiofsd")
        .args(["create", "--bundle", b.to_str().unwrap(), "novfs"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_fails(&out, "virtiofsd", "create without virtiofsd");
    assert_fails(&out, "/nonexistent/virtiofsd", "create without virtiofsd");
    assert!(host_processes_with("vmm-process novfs").is_empty());
    assert_eq!(leftovers(&root), Vec::<String>::new());

    set_annotation(&b, "io.capsa.rootfs", "nfs");
    let out = capsa_in(&root, &["create", "--bundle", b.to_str().unwrap(), "badfs"]);
    assert_fails(&out, "annotations.\"io.capsa.rootfs\"", "bad transport");
    assert_eq!(leftovers(&root), Vec::<String>::new());
}

/// `n` create/start/delete cycles, each of one combination of rootfs
/// transport and `root.readonly`; the container says what it could write,
/// and after each cycle nothing of it is left.
fn cycles(n: usize) {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "10.0.0.1 h\n").unwrap();
    let script = "if echo x > /newfile 2>/dev/null; then w=rw; else w=ro; fi\n\
        echo \"$w $(cat /etc/hosts)\" > /data/cycle-$CYCLE\n";
    let started = Instant::now();
    for i in 0..n {
        let (transport, readonly) = [
            ("virtiofs", false),
            ("block", false),
            ("virtiofs", true),
            ("block", true),
        ][i % 4];
        let name = format!("b{i}");
        let b = shares_bundle(dir.path(), &name, script, &vol, &hosts);
        let path = b.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["annotations"]["io.capsa.rootfs"] = json!(transport);
        c["root"]["readonly"] = json!(readonly);
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!(format!("CYCLE={i}")));
        std::fs::write(&path, c.to_string()).unwrap();
        let id = format!("cycle{i}");
        let logs = dir.path().join(&id);
        let out = capsa_detached(
            &root,
            &["create", "--bundle", b.to_str().unwrap(), &id],
            &logs,
        );
        assert_ok(&out, &format!("create {id}"));
        assert_ok(&capsa_in(&root, &["start", &id]), "start");
        let marker = vol.join(format!("cycle-{i}"));
        wait_for(&marker, &id, Duration::from_secs(300));
        // The process exits after writing: wait for the container to stop.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v: Value = serde_json::from_slice(&capsa_in(&root, &["state", &id]).stdout)
                .unwrap_or(Value::Null);
            if v["status"] == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "{id} still {}", v["status"]);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_ok(&capsa_in(&root, &["delete", &id]), "delete");
        let wrote = std::fs::read_to_string(&marker).unwrap();
        let expect_rw = !readonly;
        assert_eq!(
            wrote,
            format!("{} 10.0.0.1 h\n", if expect_rw { "rw" } else { "ro" }),
            "{id} ({transport}, readonly {readonly})"
        );
        // Write-through only for a writable virtiofs root.
        assert_eq!(
            b.join("rootfs/newfile").exists(),
            transport == "virtiofs" && !readonly,
            "{id} ({transport}, readonly {readonly}): the host's rootfs"
        );
        assert_eq!(leftovers(&root), Vec::<String>::new(), "after {id}");
        let _ = std::fs::remove_dir_all(&b);
    }
    eprintln!("{n} cycles in {:?}", started.elapsed());
}

/// Four cycles: every combination of transport and `root.readonly` once,
/// each leaving nothing behind.
#[test]
fn create_start_delete_cycles_leave_nothing_behind() {
    cycles(4);
}

/// The soak: 100 cycles (tens of minutes on the emulated hosts). Run with
/// `cargo test -p capsa-tests --test shares -- --ignored soak`.
#[test]
#[ignore]
fn soak_100_cycles_leave_nothing_behind() {
    cycles(100);
}
