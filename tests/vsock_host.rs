//! Issue 9 item 5: the host side of the hybrid vsock under pressure, on
//! real guests. Many clients holding connections to a container's vsock
//! socket (some never finish their `CONNECT` line, some `CONNECT` to a
//! port nothing listens on) do not break `podman exec`; and a `CONNECT`
//! sent while the guest boots is answered — `ERR <reason>` at once while
//! nobody can answer, `OK` once the agent listens — never a silent close.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use capsa_agent::client::{connect_unix_nofollow, Client};
use capsa_tests::support::devices::Vm;
use capsa_tests::support::engines::*;
use capsa_tests::{guest_kernel, require_kvm};

fn podman(rt: Runtime) -> std::process::Command {
    let mut c = engines().command("podman");
    c.arg("--runtime").arg(rt.binary());
    c
}

/// One answer line of the VMM to a `CONNECT` (without the `\n`), read
/// within `timeout`; `None` if the socket closed or stayed silent.
fn answer_line(s: &mut UnixStream, timeout: Duration) -> Option<String> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
}

/// While 150 clients hold connections that never send their `CONNECT`
/// line and 50 more `CONNECT` to a port nothing listens on, `podman exec`
/// still works — as it does with runc, which has no such socket — and
/// each of the 50 reads why it was refused.
#[test]
fn podman_exec_works_while_clients_hold_many_vsock_connections() {
    for rt in [Runtime::Runc, Runtime::Capsa] {
        let _slot = container_slot();
        let name = container_name("vsockload", rt);
        let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
        ok(podman(rt)
            .args(["run", "-d", "--name", &name, "--cidfile"])
            .arg(guard.cidfile())
            .args([BUSYBOX, "sleep", "1000"]));
        let id = guard.id().expect("podman wrote the cidfile");
        let mut held = Vec::new();
        let mut refused = Vec::new();
        if rt == Runtime::Capsa {
            let socket = rt.default_root().join(&id).join("capsa/vm/root/vsock");
            for _ in 0..150 {
                held.push(connect_unix_nofollow(&socket).expect("connect to the vsock socket"));
            }
            for _ in 0..50 {
                let mut s = connect_unix_nofollow(&socket).expect("connect to the vsock socket");
                s.write_all(b"CONNECT 9999\n").unwrap();
                refused.push(s);
            }
        }
        let started = Instant::now();
        let mut cmd = podman(rt);
        cmd.args(["exec", &name, "sh", "-c", "echo exec-ok; exit 4"]);
        let out = run(&mut cmd, None);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{rt:?}: {}",
            describe(&cmd, &out)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "exec-ok\n", "{rt:?}");
        eprintln!("{rt:?}: exec under load took {:?}", started.elapsed());
        for s in &mut refused {
            let answer = answer_line(s, Duration::from_secs(30));
            assert!(
                answer
                    .as_deref()
                    .is_some_and(|a| a.starts_with("ERR guest port 9999 refused")),
                "a CONNECT to an unlistened port: {answer:?}"
            );
        }
        drop(held);
        ok(podman(rt).args(["kill", &name]));
        let _ = engines().command("podman").args(["wait", &name]).output();
        ok(podman(rt).args(["rm", &name]));
        assert_nothing_left(&rt.default_root(), &id);
    }
}

/// From the moment the VMM's vsock socket exists until the agent answers,
/// every `CONNECT 1024` gets a line within seconds: `ERR` (driver not up
/// yet, port not listened on yet) until `OK`, and the `OK` connection is
/// the agent's (it answers `hello`).
#[test]
fn a_connect_during_boot_is_answered_err_at_once_then_ok() {
    require_kvm();
    let kernel = guest_kernel();
    let agent = capsa_tests::support::agent::agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let kernel_arg = kernel.display().to_string();
    let uds_arg = uds.display().to_string();
    let cache = dir.path().join("cache");
    let vm = Vm::spawn(
        &[
            "vmm",
            "--kernel",
            &kernel_arg,
            "--agent",
            "--vsock-uds",
            &uds_arg,
        ],
        &[("CAPSA_AGENT", agent), ("CAPSA_CACHE_DIR", &cache)],
    );
    let deadline = vm.started + Duration::from_secs(600);
    let mut answers: Vec<String> = Vec::new();
    let ok_stream = loop {
        assert!(
            Instant::now() < deadline,
            "no OK within 600 s; answers: {answers:?}"
        );
        let Ok(mut s) = connect_unix_nofollow(Path::new(&uds)) else {
            // The VMM has not bound its socket yet.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.write_all(b"CONNECT 1024\n").unwrap();
        let asked = Instant::now();
        // Prompt: the VMM answers at once, or within its 10 s answer
        // timeout for a REQUEST the guest does not answer; never silence.
        let answer = answer_line(&mut s, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "CONNECT closed or unanswered after {:?}; answers so far: {answers:?}",
                asked.elapsed()
            )
        });
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "answer {answer:?} took {:?}",
            asked.elapsed()
        );
        if answer.starts_with("OK ") {
            break s;
        }
        assert!(answer.starts_with("ERR "), "{answer:?}");
        answers.push(answer);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        answers
            .iter()
            .any(|a| a.starts_with("ERR guest vsock driver not ready")),
        "while the guest boots, CONNECT is refused at once: {answers:?}"
    );
    let client = Client::new(ok_stream).unwrap();
    client
        .hello(Duration::from_secs(30))
        .expect("the OK connection is the agent's");
    let mut kinds: Vec<&str> = answers
        .iter()
        .map(|a| a.split(" (").next().unwrap_or(a))
        .collect();
    kinds.dedup();
    eprintln!(
        "{} ERR answers before OK ({:?} after spawn): {kinds:?}",
        answers.len(),
        vm.started.elapsed()
    );
    drop(vm);
}
