//! The OCI runtime commands with the real `capsa` binary and real guests:
//! `run` (output and exit status), the create/start/state/exec/kill/delete
//! lifecycle with a pid file, stdin, pause/resume, the `process` runtime
//! type through runc, and clean failures of bad bundles and bad CLI use.
//!
//! Each guest boot costs from ~30 s to minutes on the emulated test hosts,
//! so one booted container serves all the lifecycle checks, one all the
//! pause checks, and no test boots more than one VM.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use capsa_tests::require_kvm;
use capsa_tests::support::runtime::*;
use serde_json::{json, Value};

fn state(root: &Path, id: &str) -> Value {
    let out = capsa_in(root, &["state", id]);
    assert_ok(&out, "capsa state");
    serde_json::from_slice(&out.stdout).expect("state is JSON")
}

/// Also the one test of an unjailed VMM (`CAPSA_JAIL=off`, for
/// debugging); every other runtime and engine test jails it.
#[test]
fn run_prints_and_exits_with_the_status() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        "b",
        &vm_config(&["sh", "-c", "echo hi; exit 3"]),
    );
    let out = capsa_cmd(&root)
        .env("CAPSA_JAIL", "off")
        .args(["run", "--bundle", b.to_str().unwrap(), "run1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(!root.join("run1").exists(), "run leaves no state behind");
    assert!(host_processes_with("vmm-process run1").is_empty());
}

/// Issue 14 item 8 with the real binary and a real VMM: while `create`
/// waits for its guest, `delete` refuses and `delete --force` kills what
/// the `create` started (recorded in `launch.json` before readiness), the
/// `create` fails, and nothing is left: no state directory, no VMM. Before,
/// `delete --force` removed the directory from under the `create`. The
/// guest never finishes booting, so this costs seconds, not a boot.
#[test]
fn delete_during_create_stops_it_and_leaves_nothing() {
    require_kvm();
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let id = "race1";
    let b = bundle(dir.path(), "b", &vm_config(&["sleep", "1000"]));
    let err_file = dir.path().join("create.err");
    let mut create = capsa_cmd(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let launch = root.join(id).join("launch.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !launch.exists() {
        if let Some(status) = create.try_wait().unwrap() {
            panic!(
                "create ended ({status}) before starting its VMM: {}",
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no launch.json within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = capsa_in(&root, &["delete", id]);
    assert_fails(&out, "is being created", "delete while create runs");
    let out = capsa_in(&root, &["delete", "--force", id]);
    assert_ok(&out, "delete --force while create runs");
    let status = create.wait().unwrap();
    assert!(!status.success(), "the stopped create fails");
    assert!(!root.join(id).exists(), "no state directory left");
    assert!(
        host_processes_with(&format!("vmm-process {id}")).is_empty(),
        "no VMM left"
    );
}

#[test]
fn lifecycle_exec_stdin_kill_delete() {
    require_kvm();
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let id = "life1";
    let b = bundle(
        dir.path(),
        "b",
        &vm_config(&["sh", "-c", "read line; echo got:$line; exec sleep 1000"]),
    );
    let pid_file = dir.path().join("pid");
    let out_file = dir.path().join("stdout");
    let err_file = dir.path().join("stderr");

    // create: stdin is a pipe we keep, stdout a file (as conmon's pipes).
    let started = Instant::now();
    let mut create = capsa_cmd(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = create.stdin.take().unwrap();
    // The VMM process keeps the stdio: wait for `create` only, not for EOF.
    let status = create.wait().unwrap();
    let pid = created_vmm_pid(status, &err_file, &pid_file, started);
    assert!(
        cmdline(pid).contains("vmm-process"),
        "the pid file names the VMM process: {}",
        cmdline(pid)
    );
    let uid = assert_vmm_is_jailed(&root, id, pid);
    let s = state(&root, id);
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"], json!(pid));
    assert_eq!(s["id"], id);

    let list = capsa_in(&root, &["list"]);
    assert_ok(&list, "capsa list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    let row = text.lines().find(|l| l.starts_with(id)).expect("listed");
    assert!(row.contains("created") && row.contains(" vm "), "{row}");

    // start, and start again.
    assert_ok(&capsa_in(&root, &["start", id]), "capsa start");
    assert_fails(&capsa_in(&root, &["start", id]), "running", "second start");
    assert_eq!(state(&root, id)["status"], "running");

    // stdin reaches the process.
    stdin.write_all(b"hello\n").unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&out_file)
        .unwrap()
        .contains("got:hello")
    {
        assert!(Instant::now() < deadline, "no got:hello in stdout");
        std::thread::sleep(Duration::from_millis(200));
    }

    // exec while running: output and status.
    let out = capsa_in(
        &root,
        &["exec", id, "sh", "-c", "echo exec-ok; hostname; exit 5"],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "exec-ok\ncapsa-test\n"
    );
    let ps = capsa_in(&root, &["ps", "--format", "json", id]);
    assert_ok(&ps, "capsa ps");
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(!pids.is_empty());

    // Isolation: the container's process is not a host process.
    assert!(
        host_processes_with("sleep 1000").is_empty(),
        "the container's sleep must not be visible on the host"
    );

    // delete while running needs --force.
    assert_fails(
        &capsa_in(&root, &["delete", id]),
        "running",
        "delete running",
    );
    assert!(root.join(id).join("state.json").exists());

    // kill: the VMM process exits with 128+9.
    assert_ok(&capsa_in(&root, &["kill", id, "KILL"]), "capsa kill");
    assert_eq!(wait_child(pid), 137);
    assert_eq!(state(&root, id)["status"], "stopped");
    assert_fails(
        &capsa_in(&root, &["kill", id]),
        "not running",
        "kill stopped",
    );

    assert_ok(&capsa_in(&root, &["delete", id]), "capsa delete");
    assert!(!root.join(id).exists(), "delete removes the state dir");
    assert!(cmdline(pid).is_empty(), "no VMM process left");
    assert!(
        !Path::new(&format!("/run/capsa-uids/{uid}")).exists(),
        "delete gives the VMM's uid back"
    );
    assert_fails(
        &capsa_in(&root, &["state", id]),
        "does not exist",
        "state after delete",
    );
}

#[test]
fn process_runtime_goes_to_runc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = dir.path().join("pb");
    std::fs::create_dir_all(&b).unwrap();
    busybox_rootfs_dir(&b);
    let out = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&b)
        .output()
        .expect("runc is installed by scripts/setup.sh");
    assert_ok(&out, "runc spec");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["sleep", "1001"]);
    config["annotations"] = json!({"io.capsa.runtime": "process"});
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    let id = "proc1";
    let pid_file = dir.path().join("pid");
    let out = capsa_detached(
        &root,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ],
        &dir.path().join("create"),
    );
    assert_ok(&out, "capsa create (process)");
    let list = capsa_in(&root, &["list"]);
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    let row = text.lines().find(|l| l.starts_with(id)).expect("listed");
    assert!(row.contains("process") && row.contains("created"), "{row}");
    assert_ok(&capsa_in(&root, &["start", id]), "capsa start (process)");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // `runc start` returns once the container's init has been released
    // from its exec FIFO, which may be just before it execs the process.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cmdline(pid).contains("sleep 1001") {
        assert!(
            Instant::now() < deadline,
            "the container's process is a host process: {}",
            cmdline(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state(&root, id)["status"], "running");
    let out = capsa_in(&root, &["exec", id, "sh", "-c", "echo in-runc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-runc\n");
    assert_fails(
        &capsa_in(&root, &["pause", "nosuch"]),
        "does not exist",
        "pause unknown",
    );
    assert_ok(&capsa_in(&root, &["kill", id, "9"]), "capsa kill (process)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&root, id)["status"] != "stopped" {
        assert!(Instant::now() < deadline, "runc container did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ok(&capsa_in(&root, &["delete", id]), "capsa delete (process)");
    assert!(!root.join(id).exists());
    assert!(!root.join(".runc").join(id).exists());
}

/// Breaks a good bundle in one way.
type Breaker = Box<dyn Fn(&Path)>;

#[test]
fn bad_bundles_and_bad_use_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let good = vm_config(&["true"]);
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "noconfig",
            Box::new(|b: &Path| std::fs::remove_file(b.join("config.json")).unwrap()),
            "config.json: no such file",
        ),
        (
            "badjson",
            Box::new(|b: &Path| {
                std::fs::write(b.join("config.json"), "{\"ociVersion\": ").unwrap()
            }),
            "config.json",
        ),
        (
            "norootfs",
            Box::new(|b: &Path| std::fs::remove_dir_all(b.join("rootfs")).unwrap()),
            "root.path",
        ),
        (
            "noargs",
            Box::new(|b: &Path| {
                let mut c = vm_config(&[]);
                c["process"]["args"] = json!([]);
                std::fs::write(b.join("config.json"), c.to_string()).unwrap();
            }),
            "process.args",
        ),
        (
            "baduser",
            Box::new(|b: &Path| {
                let mut c = vm_config(&["true"]);
                c["process"]["user"]["username"] = json!("nosuchuser");
                std::fs::write(b.join("config.json"), c.to_string()).unwrap();
            }),
            "unknown user",
        ),
    ];
    for (name, breakit, needle) in cases {
        let b = bundle(dir.path(), name, &good);
        breakit(&b);
        let out = capsa_in(&root, &["create", "--bundle", b.to_str().unwrap(), name]);
        assert_fails(&out, needle, name);
        assert!(!root.join(name).exists(), "{name}: state dir left behind");
        assert!(host_processes_with(&format!("vmm-process {name}")).is_empty());
    }
    for verb in ["start", "state", "kill", "delete", "ps", "pause"] {
        assert_fails(&capsa_in(&root, &[verb, "nosuch"]), "does not exist", verb);
    }
    assert_fails(
        &capsa_in(&root, &["start", "../x"]),
        "invalid container id",
        "bad id",
    );
    assert_fails(
        &capsa_in(&root, &["kill", "nosuch", "NOSIG"]),
        "unknown signal",
        "bad signal",
    );
    let list = capsa_in(&root, &["list", "--format", "json"]);
    assert_ok(&list, "list");
    assert_eq!(
        serde_json::from_slice::<Value>(&list.stdout).unwrap(),
        json!([])
    );
}

/// Complete lines in `path` (the counter's output).
fn lines(path: &Path) -> usize {
    std::fs::read(path)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Asserts that `capsa create` succeeded (its stderr in `err_file` says
/// why not), prints how long it took, and returns the VMM pid it wrote to
/// `pid_file`.
fn created_vmm_pid(
    status: std::process::ExitStatus,
    err_file: &Path,
    pid_file: &Path,
    started: Instant,
) -> i32 {
    assert!(
        status.success(),
        "capsa create failed ({status}): {}",
        std::fs::read_to_string(err_file).unwrap_or_default()
    );
    eprintln!("create took {:?}", started.elapsed());
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Asserts that the VMM of container `id` runs in capsa-jailer's jail:
/// the pid engines wait on (`pid`) is the jailer, whose child, the VMM,
/// runs as an unprivileged uid without capabilities, with no_new_privs and
/// a seccomp filter, in mount and network namespaces of its own. Returns
/// the VMM's uid, leased for it alone.
fn assert_vmm_is_jailed(root: &Path, id: &str, pid: i32) -> u32 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().ends_with("capsa-jailer"),
        "the pid file names the jailer: {exe:?}"
    );
    let vmm: i32 = std::fs::read_to_string(root.join(id).join("capsa/vm/capsa.pid"))
        .expect("the jailer's pid file")
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{vmm}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        field("PPid:"),
        [pid.to_string()],
        "the VMM is the jailer's child"
    );
    let uid = field("Uid:");
    let leased = std::fs::read_to_string(root.join(id).join("vmm-uid")).unwrap();
    assert!(
        uid.iter().all(|u| *u == leased),
        "{uid:?} vs lease {leased}"
    );
    let lease = Path::new("/run/capsa-uids").join(&leased);
    assert_eq!(
        std::fs::read(&lease).expect("the uid's lease file"),
        root.join(id).as_os_str().as_encoded_bytes()
    );
    assert!(
        uid.iter().all(|u| *u != "0"),
        "the VMM runs as root: {uid:?}"
    );
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    assert_eq!(field("CapBnd:"), ["0000000000000000"]);
    assert_eq!(field("NoNewPrivs:"), ["1"]);
    assert_eq!(field("Seccomp:"), ["2"]);
    assert_vmm_threads_have_their_own_filters(vmm);
    for ns in ["mnt", "net"] {
        let own = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        assert_ne!(own, its, "the VMM has a {ns} namespace of its own");
    }
    leased.parse().unwrap()
}

/// Issue 14 item 9: every thread of a running VMM (the event loop, each
/// vCPU, the controller and its relays) is in seccomp filter mode with
/// its own allow-list on top of the jailer's two filters (deny list and
/// `clone3`): `Seccomp: 2` and `Seccomp_filters:` ≥ 3 in each
/// `/proc/<vmm>/task/<tid>/status` (KVM's kernel workers aside).
fn assert_vmm_threads_have_their_own_filters(vmm: i32) {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{vmm}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // a relay thread that just ended
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let name = field("Name:");
        if name.starts_with("kvm-") {
            // KVM's own worker (kvm-nx-lpage-recovery): a kernel thread
            // counted in the process, which makes no system calls.
            continue;
        }
        assert_eq!(field("Seccomp:"), "2", "thread {name}: {status}");
        let filters: u32 = field("Seccomp_filters:").parse().unwrap_or(0);
        assert!(
            filters >= 3,
            "thread {name} has {filters} seccomp filters: the jailer's 2 and its own allow-list"
        );
        names.push(name);
    }
    for kind in ["capsa-vcpu0", "capsa-controlle"] {
        assert!(
            names.iter().any(|n| n == kind),
            "no {kind} thread in {names:?}"
        );
    }
}

/// Waits until `path` has more than `n` lines.
fn wait_lines(path: &Path, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(path) <= n {
        assert!(Instant::now() < deadline, "{what}: stuck at {n} lines");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pause_freezes_and_resume_thaws_a_vm_container() {
    require_kvm();
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let id = "pause1";
    // A counter every 200 ms on stdout, and a forked child that counts too
    // (it must be frozen with its parent).
    let b = bundle(
        dir.path(),
        "b",
        &vm_config(&[
            "sh",
            "-c",
            "(while :; do echo child; sleep 0.2; done) & \
             i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done",
        ]),
    );
    let pid_file = dir.path().join("pid");
    let out_file = dir.path().join("stdout");
    let err_file = dir.path().join("stderr");
    let started = Instant::now();
    let status = capsa_cmd(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    let pid = created_vmm_pid(status, &err_file, &pid_file, started);

    // Only a running container can be paused, only a paused one resumed.
    assert_fails(&capsa_in(&root, &["pause", id]), "created", "pause created");
    assert_fails(
        &capsa_in(&root, &["resume", id]),
        "created",
        "resume created",
    );
    assert_ok(&capsa_in(&root, &["start", id]), "capsa start");
    wait_lines(&out_file, 4, "before pause");
    assert_fails(
        &capsa_in(&root, &["resume", id]),
        "only a paused container can be resumed",
        "resume running",
    );

    let t = Instant::now();
    assert_ok(&capsa_in(&root, &["pause", id]), "capsa pause");
    eprintln!("pause took {:?}", t.elapsed());
    assert_eq!(state(&root, id)["status"], "paused");
    let list = capsa_in(&root, &["list"]);
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    let row = text.lines().find(|l| l.starts_with(id)).expect("listed");
    assert!(row.contains("paused"), "{row}");
    assert_fails(&capsa_in(&root, &["pause", id]), "paused", "second pause");
    assert_fails(
        &capsa_in(&root, &["exec", id, "true"]),
        "cannot exec in a paused container",
        "exec paused",
    );
    assert_fails(&capsa_in(&root, &["delete", id]), "paused", "delete paused");
    let ps = capsa_in(&root, &["ps", "--format", "json", id]);
    assert_ok(&ps, "capsa ps while paused");
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(pids.len() >= 2, "{pids:?}");
    // Output written before the freeze may still be on its way; then the
    // counter stands still.
    std::thread::sleep(Duration::from_millis(1500));
    let frozen_at = lines(&out_file);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&out_file), frozen_at, "output advanced while paused");

    let t = Instant::now();
    assert_ok(&capsa_in(&root, &["resume", id]), "capsa resume");
    eprintln!("resume took {:?}", t.elapsed());
    assert_eq!(state(&root, id)["status"], "running");
    wait_lines(&out_file, frozen_at + 4, "after resume");
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(text.lines().any(|l| l == "child"), "{text}");
    let out = capsa_in(&root, &["exec", id, "echo", "thawed"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "thawed\n");

    // SIGKILL ends a paused container: the VMM process exits with 128+9.
    assert_ok(&capsa_in(&root, &["pause", id]), "second capsa pause");
    assert_ok(&capsa_in(&root, &["kill", id, "KILL"]), "kill paused");
    assert_eq!(wait_child(pid), 137);
    assert_eq!(state(&root, id)["status"], "stopped");
    assert_fails(&capsa_in(&root, &["pause", id]), "stopped", "pause stopped");
    assert_fails(
        &capsa_in(&root, &["resume", id]),
        "stopped",
        "resume stopped",
    );
    assert_ok(&capsa_in(&root, &["delete", id]), "capsa delete");
    assert!(!root.join(id).exists());
}
