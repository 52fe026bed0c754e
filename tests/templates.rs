//! Warm starts from VM templates (issue 13, docs/runtime.md § "Warm
//! starts"): containers restored from one template are new machines of
//! their own, a bad template is never used but rebuilt, and the engines
//! start containers from templates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use capsa_tests::support::engines::{
    container_slot, engines, ok, Container, Engine, Runtime, BUSYBOX,
};
use capsa_tests::support::runtime::{assert_ok, bundle, capsa_cmd, vm_config};
use serde_json::json;

/// Memory limit of the containers here: a shape of its own.
const LIMIT_MIB: u32 = 192;
/// Their guest RAM (docs/runtime.md, "The machine": the limit + 32 MiB +
/// 1/64 of the limit), the template's shape.
const GUEST_MIB: u32 = LIMIT_MIB + 32 + LIMIT_MIB / 64;

/// `capsa` with a private cache (its templates) and state root, logging
/// at info level to `log`.
fn capsa(dir: &Path, log: &Path) -> Command {
    let mut c = capsa_cmd(&dir.join("root"));
    c.env("CAPSA_CACHE_DIR", dir.join("cache"))
        .env("CAPSA_LOG", "capsa_vmm=info")
        .arg("--log")
        .arg(log);
    c
}

/// The private cache: its own templates, the host cache's virtiofsd.
fn private_cache(dir: &Path) {
    let host = std::env::var_os("CAPSA_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("capsa")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/capsa")
        });
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    std::os::unix::fs::symlink(host.join("virtiofsd"), dir.join("cache/virtiofsd")).unwrap();
}

fn build_template(dir: &Path) -> PathBuf {
    let out = capsa(dir, &dir.join("build.log"))
        .args(["build-template", "--memory-mib", &GUEST_MIB.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "capsa build-template");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.join("state").is_file(), "{}", path.display());
    path
}

/// A bundle `name` whose process prints the guest's boot id, 16 random
/// bytes, its hostname and the time, with the test's memory limit.
fn machine_bundle(dir: &Path, name: &str) -> PathBuf {
    let mut config = vm_config(&[
        "sh",
        "-c",
        "cat /proc/sys/kernel/random/boot_id; \
         head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
         hostname; date +%s",
    ]);
    config["hostname"] = json!(name);
    config["linux"]["resources"] = json!({"memory": {"limit": u64::from(LIMIT_MIB) << 20}});
    bundle(dir, name, &config)
}

fn spawn_run(dir: &Path, name: &str) -> Child {
    spawn_bundle(dir, name, &machine_bundle(dir, name))
}

fn spawn_bundle(dir: &Path, name: &str, b: &Path) -> Child {
    capsa(dir, &dir.join(format!("{name}.log")))
        .args(["run", "--bundle"])
        .arg(b)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What one container printed.
struct Machine {
    boot_id: String,
    random: String,
    hostname: String,
    time: u64,
    log: String,
}

fn finish(dir: &Path, name: &str, child: Child) -> Machine {
    let out: Output = child.wait_with_output().unwrap();
    assert_ok(&out, &format!("capsa run {name}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.len() >= 4, "{name} printed:\n{text}");
    Machine {
        boot_id: lines[0].to_owned(),
        random: lines[1].to_owned(),
        hostname: lines[2].to_owned(),
        time: lines[3]
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {text}")),
        log: std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default(),
    }
}

fn run(dir: &Path, name: &str) -> Machine {
    let child = spawn_run(dir, name);
    finish(dir, name, child)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn warm_starts_are_new_machines_and_a_bad_template_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    private_cache(dir);
    let template = build_template(dir);

    // Two containers restored from the template at once, a while after
    // it was taken: a guest clock left as the template's would be late.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let before = now();
    let (a, b) = (spawn_run(dir, "warm-a"), spawn_run(dir, "warm-b"));
    let (a, b) = (finish(dir, "warm-a", a), finish(dir, "warm-b", b));
    let after = now();
    for (m, name) in [(&a, "warm-a"), (&b, "warm-b")] {
        assert!(
            m.log.contains("warm start"),
            "{name} did not start from the template:\n{}",
            m.log
        );
        assert_eq!(m.hostname, name);
        assert!(
            (before..=after + 1).contains(&m.time),
            "{name}: guest clock {} outside the run's host time {before}..{after}: not set after the restore",
            m.time
        );
        assert_eq!(m.random.len(), 32, "{name}: {}", m.random);
    }
    assert!(
        template.join("state").is_file(),
        "the template is gone after the warm starts: {:?}",
        std::fs::read_dir(template.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    assert_ne!(a.boot_id, b.boot_id, "same boot id from one template");
    assert_ne!(a.random, b.random, "same random bytes from one template");

    // A guest's writes stay its own: a block-rootfs container (its memory
    // the template's file mapped MAP_PRIVATE) fills 8 MiB of its RAM, and
    // the template's memory file is unchanged.
    let memory = template.join("memory");
    let before = std::fs::read(&memory).unwrap();
    let mut config = vm_config(&[
        "sh",
        "-c",
        "dd if=/dev/urandom of=/dev/fill bs=1M count=8 2>/dev/null; echo filled",
    ]);
    config["annotations"] = json!({"io.capsa.rootfs": "block"});
    config["linux"]["resources"] = json!({"memory": {"limit": u64::from(LIMIT_MIB) << 20}});
    let writer = bundle(dir, "writer", &config);
    let out = spawn_bundle(dir, "writer", &writer)
        .wait_with_output()
        .unwrap();
    assert_ok(&out, "capsa run writer");
    assert!(String::from_utf8_lossy(&out.stdout).contains("filled"));
    let log = std::fs::read_to_string(dir.join("writer.log")).unwrap_or_default();
    assert!(log.contains("warm start"), "{log}");
    assert!(
        std::fs::read(&memory).unwrap() == before,
        "a warm container's writes reached the template's memory file"
    );

    // A flipped byte in the state file: the container boots cold, the
    // template is removed and built again.
    let state = template.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&state, &bytes).unwrap();
    let c = run(dir, "corrupt");
    assert!(
        c.log.contains("cold boot") && c.log.contains("unusable") && c.log.contains("checksum"),
        "{}",
        c.log
    );
    assert_eq!(c.hostname, "corrupt");
    // Waits for the builder `create` started, then finds its template.
    assert_eq!(build_template(dir), template);
    let d = run(dir, "rebuilt");
    assert!(d.log.contains("warm start"), "{}", d.log);

    // Another major format version: refused the same way.
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[8..10].copy_from_slice(&99u16.to_le_bytes());
    std::fs::write(&state, &bytes).unwrap();
    let e = run(dir, "other-version");
    assert!(
        e.log.contains("unusable") && e.log.contains("version 99"),
        "{}",
        e.log
    );
    // Leaves no builder running.
    assert_eq!(build_template(dir), template);
}

#[test]
fn podman_starts_vm_containers_from_the_default_template() {
    let _slot = container_slot();
    let rt = Runtime::Capsa;
    // Builds the template of the default shape, as the engines' capsa
    // finds its files.
    let bin = rt.binary();
    let mut guard = Container::new(Engine::Podman, "warm-podman", rt, &rt.default_root());
    let name = guard.name.clone();
    let mut c = engines().command("podman");
    c.arg("--runtime")
        .arg(&bin)
        .args(["run", "-d", "--name", &name, "--cidfile"])
        .arg(guard.cidfile())
        .args([
            "--annotation",
            "io.capsa.runtime=vm",
            BUSYBOX,
            "sh",
            "-c",
            "echo started; sleep 600",
        ]);
    ok(&mut c);
    let id = guard.id().expect("container id");
    let state = rt.default_root().join(&id).join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.contains("\"template\""),
        "podman's container booted cold:\n{text}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut logs = engines().command("podman");
        logs.args(["logs", &name]);
        let text = ok(&mut logs);
        if text.contains("started") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no output from the container: {text:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut exec = engines().command("podman");
    exec.args(["exec", &name, "sh", "-c", "echo exec-ok; exit 3"]);
    let out = exec.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("exec-ok"));
    let mut stop = engines().command("podman");
    stop.args(["stop", "-t", "2", &name]);
    ok(&mut stop);
}
