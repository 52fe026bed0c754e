//! How a VM container's VMM is confined on the host beyond its jail
//! (issue 14 items 10 and 11), with the real `capsa` binary, real guests
//! and podman: its host cgroup at `linux.cgroupsPath` (with the jailer
//! and virtiofsd, a memory limit of guest RAM plus overhead, a pids limit,
//! the spec's CPU quota; gone after `delete`, also after `kill -9`), what
//! `podman stats` shows of it, and its own PID and IPC namespaces, in
//! which it still receives the signals engines send.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use capsa_tests::require_kvm;
use capsa_tests::support::engines::{
    container_name, container_slot, engines, ok, Container, Engine, Runtime, BUSYBOX,
};
use capsa_tests::support::runtime::*;
use serde_json::json;

/// A bundle of `args` with `linux.cgroupsPath` and resources.
fn confined_bundle(dir: &Path, args: &[&str], cgroups_path: &str) -> PathBuf {
    let mut config = vm_config(args);
    config["linux"]["cgroupsPath"] = json!(cgroups_path);
    config["linux"]["resources"] = json!({
        "memory": {"limit": 64 << 20},
        "cpu": {"quota": 50000, "period": 100000}
    });
    bundle(dir, "b", &config)
}

/// `capsa create --pid-file` of `bundle` as `id`; returns the pid engines
/// wait on (the jailer).
fn create(root: &Path, dir: &Path, b: &Path, id: &str) -> i32 {
    let pid_file = dir.join("pid");
    let err_file = dir.join("create.err");
    let out_file = dir.join("stdout");
    let status = capsa_cmd(root)
        .args(["create", "--bundle", b.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "capsa create failed ({status}): {}",
        std::fs::read_to_string(&err_file).unwrap_or_default()
    );
    std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn state_of(root: &Path, id: &str) -> serde_json::Value {
    let out = capsa_in(root, &["state", id]);
    assert_ok(&out, "capsa state");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The jailed VMM's host pid (the jailer's pid file).
fn vmm_pid(root: &Path, id: &str) -> i32 {
    std::fs::read_to_string(root.join(id).join("capsa/vm/capsa.pid"))
        .expect("the jailer's pid file")
        .trim()
        .parse()
        .unwrap()
}

/// The v1 memory hierarchy's (or the v2) directory of cgroup `path`.
fn memory_dir(path: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let base = if v1.is_dir() {
        v1
    } else {
        Path::new("/sys/fs/cgroup")
    };
    base.join(path.trim_start_matches('/'))
}

/// Every directory of cgroup `path` in the mounted hierarchies.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| Path::new(m).join(path.trim_start_matches('/')))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The processes listed in `cgroup.procs` of `dir`.
fn procs(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Item 10: the running container's VMM, its jailer and its virtiofsd are
/// in one cgroup at `linux.cgroupsPath`, in every hierarchy, with a memory
/// limit above the guest's RAM, `pids.max` and the spec's CFS quota;
/// `kill -9` of the VMM ends the container and `delete` then removes the
/// cgroup directories. Also prints what the VMM and virtiofsd use beyond
/// the guest's RAM (docs/runtime.md, "The VMM's host cgroup").
#[test]
fn vmm_cgroup_holds_the_vm_with_its_limits_and_goes_with_delete_after_kill_9() {
    require_kvm();
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let id = format!("cg{}", std::process::id());
    let path = format!("/capsa-test/{id}");
    let b = confined_bundle(dir.path(), &["sh", "-c", "echo up; exec sleep 1000"], &path);
    let jailer = create(&root, dir.path(), &b, &id);
    let vmm = vmm_pid(&root, &id);
    assert_ok(&capsa_in(&root, &["start", &id]), "capsa start");
    let out = dir.path().join("stdout");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !read(&out).contains("up") {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every line of /proc/PID/cgroup of the VMM and of the jailer (the pid
    // engines read) names the path.
    for pid in [vmm, jailer] {
        let lines = read(Path::new(&format!("/proc/{pid}/cgroup")));
        for line in lines.lines() {
            assert!(line.ends_with(&format!(":{path}")), "{pid}: {lines}");
        }
    }
    let mem = memory_dir(&path);
    let members = procs(&mem);
    assert!(
        members.contains(&vmm) && members.contains(&jailer),
        "{members:?}"
    );
    let virtiofsd: Vec<i32> = members
        .iter()
        .copied()
        .filter(|p| cmdline(*p).contains("virtiofsd"))
        .collect();
    assert_eq!(virtiofsd.len(), 2, "virtiofsd and its sandbox: {members:?}");

    // Limits: guest RAM (64 MiB + 32 + 1 = 97 MiB) plus the overhead.
    let v1 = mem.starts_with("/sys/fs/cgroup/memory");
    let limit: u64 = read(&mem.join(if v1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    }))
    .parse()
    .unwrap();
    let guest = 97u64 << 20;
    assert!(
        limit > guest + (64 << 20) && limit < guest + (256 << 20),
        "memory limit {limit}"
    );
    let pids_dir = if v1 {
        Path::new("/sys/fs/cgroup/pids").join(path.trim_start_matches('/'))
    } else {
        mem.clone()
    };
    assert_eq!(read(&pids_dir.join("pids.max")), "256");
    if v1 {
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(path.trim_start_matches('/'));
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    } else {
        assert_eq!(read(&mem.join("cpu.max")), "50000 100000");
    }

    // What the VM uses of the host, for docs/runtime.md.
    let usage = if v1 {
        read(&mem.join("memory.usage_in_bytes"))
    } else {
        read(&mem.join("memory.current"))
    };
    let tasks = read(&pids_dir.join("pids.current"));
    let rss = |p: i32| {
        format!(
            "anon {} file {} shmem {} KiB",
            status_kib(p, "RssAnon:"),
            status_kib(p, "RssFile:"),
            status_kib(p, "RssShmem:")
        )
    };
    eprintln!(
        "cgroup: usage {usage} B, limit {limit} B, tasks {tasks}; VMM {}; jailer {}; \
         virtiofsd {} / {}",
        rss(vmm),
        rss(jailer),
        rss(virtiofsd[0]),
        rss(virtiofsd[1])
    );

    // kill -9 of the VMM: the jailer reports 137, the container is
    // stopped, and delete removes every cgroup directory.
    // SAFETY: kill(2) of the VMM child just checked.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    assert_eq!(wait_child(jailer), 137);
    assert_ok(&capsa_in(&root, &["delete", &id]), "capsa delete");
    for d in cgroup_dirs(&path) {
        assert!(!d.exists(), "{} is left", d.display());
    }
    assert!(!root.join(&id).exists());
    // The parent stays (as runc leaves it): this test's to remove.
    for d in cgroup_dirs("/capsa-test") {
        let _ = std::fs::remove_dir(d);
    }
}

/// Item 11: the VMM is pid 1 of a PID namespace and in an IPC namespace
/// of its own (the jailer's pid file and state hold its host pid), and a
/// created container's `kill` (SIGTERM straight to the VMM, which stands
/// for the container's process) still ends it with 143 — as pid 1 of a
/// namespace it receives only signals it handles. `delete` removes the
/// cgroup of a spec without `cgroupsPath` (`/capsa/<id>`).
#[test]
fn vmm_pid_ns_and_ipc_ns_of_its_own_and_sigterm_still_ends_it() {
    require_kvm();
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let id = format!("ns{}", std::process::id());
    let b = bundle(dir.path(), "b", &vm_config(&["sleep", "1000"]));
    let jailer = create(&root, dir.path(), &b, &id);
    let vmm = vmm_pid(&root, &id);
    for ns in ["pid", "ipc", "mnt", "net"] {
        let own = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        assert_ne!(own, its, "the VMM has a {ns} namespace of its own");
    }
    let status = read(Path::new(&format!("/proc/{vmm}/status")));
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(nspid, [vmm.to_string().as_str(), "1"], "host pid, then 1");
    assert_eq!(state_of(&root, &id)["pid"], json!(jailer));
    let record = read(&root.join(&id).join("state.json"));
    assert!(record.contains(&format!("\"pid\": {vmm}")), "{record}");
    let cgroup = format!("/capsa/{id}");
    let lines = read(Path::new(&format!("/proc/{vmm}/cgroup")));
    assert!(lines.contains(&format!(":{cgroup}\n")), "{lines}");

    assert_ok(&capsa_in(&root, &["kill", &id, "TERM"]), "capsa kill TERM");
    assert_eq!(wait_child(jailer), 143, "the VMM ended by SIGTERM");
    assert_eq!(state_of(&root, &id)["status"], "stopped", "the VMM is gone");
    assert_ok(&capsa_in(&root, &["delete", &id]), "capsa delete");
    for d in cgroup_dirs(&cgroup) {
        assert!(!d.exists(), "{} is left", d.display());
    }
}

/// Item 10 through an engine: `podman stats` shows the memory use of the
/// container's cgroup (podman finds it from the pid of `--pid-file`, the
/// jailer, now in it): for runc the container's processes (a `sleep`:
/// hundreds of KiB), for capsa its VM — the guest's RAM it touched, the
/// VMM, virtiofsd, the jailer: tens of MiB. Before, the jailer stayed in
/// conmon's cgroup and podman showed that. The limit podman shows is the
/// spec's `--memory` for both (podman takes it from the spec, not from
/// the cgroup, whose limit for capsa is the guest's RAM plus overhead).
#[test]
fn podman_stats_shows_the_vmm_cgroup_memory() {
    for rt in [Runtime::Runc, Runtime::Capsa] {
        let _slot = container_slot();
        let name = container_name("stats", rt);
        let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
        let mut run = engines().command("podman");
        run.arg("--runtime")
            .arg(rt.binary())
            .args(["run", "-d", "--name", &name, "--cidfile"])
            .arg(guard.cidfile())
            .args(["--memory", "64m", BUSYBOX, "sleep", "1000"]);
        ok(&mut run);
        let stats = ok(engines().command("podman").args([
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            &name,
        ]));
        eprintln!("{rt:?}: podman stats: {}", stats.trim());
        let (usage, limit) = stats.trim().split_once(" / ").expect("USAGE / LIMIT");
        let mib = |s: &str| -> f64 {
            let s = s.trim();
            let (n, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
            let n: f64 = n.parse().unwrap_or_else(|_| panic!("{s}"));
            match unit {
                "kB" => n * 1e3 / 1048576.0,
                "MB" => n * 1e6 / 1048576.0,
                "GB" => n * 1e9 / 1048576.0,
                "B" => n / 1048576.0,
                other => panic!("unit {other} in {s}"),
            }
        };
        let (usage, limit) = (mib(usage), mib(limit));
        assert!((limit - 64.0).abs() < 1.0, "{stats}");
        match rt {
            Runtime::Runc => assert!(usage < 16.0, "{stats}"),
            // The booted guest's RAM (~25 MiB touched) and the VMM.
            Runtime::Capsa => assert!(usage > 16.0 && usage < 64.0, "{stats}"),
        }
        ok(engines()
            .command("podman")
            .args(["rm", "--force", "--time", "0", &name]));
    }
}
