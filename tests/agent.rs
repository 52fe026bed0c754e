//! The guest agent in the real guest (issue 4): `capsa vmm --agent` boots
//! the agent as `/init` with a busybox rootfs on virtio-blk, and the host
//! drives it with the typed client over hybrid vsock. One guest serves all
//! the checks, in the order a runtime would use them.

use std::time::{Duration, Instant};

use capsa_agent::client::Notification;
use capsa_agent::protocol::{
    CreateParams, ExecParams, MountSpec, ProcessExit, RootfsSpec, RootfsType, User,
};
use capsa_tests::support::agent::*;
use capsa_tests::support::devices::pattern;
use capsa_tests::*;

/// Bound on the boot and on the shutdown (boots take ~15–30 s on an idle
/// PVM host, several times that when the cores are shared).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const SIGTERM: i32 = 15;

fn exit_code(e: &ProcessExit) -> Option<i32> {
    e.exit_code
}

#[test]
fn agent_runs_container_processes_in_the_real_guest() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let guest = AgentGuest::boot(&[format!("{},ro", rootfs.display())], BOOT_TIMEOUT);
    // Reported, not asserted.
    println!(
        "VMM start → agent answers hello: {:.2} s (guest uptime {} ms, agent started at {} ms)",
        guest.hello_after.as_secs_f64(),
        guest.hello.uptime_ms,
        guest.hello.agent_start_ms
    );
    assert!(!guest.hello.container_created);
    let client = &guest.client;

    // create + start: stdout and stderr apart, exit code 7. The streams
    // are attached before `start`, stdin is /dev/null.
    let created = client
        .create(&CreateParams {
            container_id: "e2e".into(),
            rootfs: RootfsSpec {
                source: Some("/dev/vda".into()),
                fstype: RootfsType::Ext4,
                readonly: true,
                tag: None,
            },
            process: process(&["sh", "-c", "echo out; echo err >&2; exit 7"]),
            hostname: Some("e2e-host".into()),
            shares: Vec::new(),
            mounts: vec![
                MountSpec {
                    destination: "/proc".into(),
                    kind: Some("proc".into()),
                    source: Some("proc".into()),
                    options: vec![],
                },
                MountSpec {
                    destination: "/tmp".into(),
                    kind: Some("tmpfs".into()),
                    source: Some("tmpfs".into()),
                    options: vec!["nosuid".into(), "nodev".into()],
                },
            ],
            stdin: false,
            pid_namespace: false,
            network: None,
            sysctl: Default::default(),
        })
        .expect("create");
    assert!(
        created.streams.stdin.is_none(),
        "stdin: false gave a stream"
    );
    let init_streams = guest.collect_output(&created.streams);
    let started = client.start().expect("start");
    assert_eq!(started.process_id, created.process_id);
    assert!(started.pid > 1);
    let init_exit = client.wait(created.process_id).expect("wait init");
    let (out, err) = init_streams.finish();
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    assert_eq!(exit_code(&init_exit), Some(7), "{init_exit:?}");
    assert_eq!(init_exit.signal, None);
    assert_eq!(init_exit.pid, started.pid);
    // The exit was also pushed as a notification.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut notified = false;
    while !notified && Instant::now() < deadline {
        if let Some(Notification::Exit(e)) = client.next_notification(Duration::from_secs(1)) {
            notified = e == init_exit;
        }
    }
    assert!(notified, "no exit notification for the init process");

    // exec `cat`: 256 KiB on stdin come back on stdout (more than a pipe
    // holds, so both directions flow at once); stdin close gives EOF.
    let input = pattern(256 * 1024, 3);
    let cat = client
        .exec(&ExecParams {
            process: process(&["cat"]),
            stdin: true,
        })
        .expect("exec cat");
    let cat_out = guest.collect_output(&cat.streams);
    let feeder = feed(guest.stdin(&cat.streams), input.clone());
    let cat_exit = client.wait(cat.process_id).expect("wait cat");
    feeder.join().unwrap().expect("write stdin");
    let cat_stdout = cat_out.stdout_bytes();
    assert_eq!(exit_code(&cat_exit), Some(0), "{cat_exit:?}");
    assert_eq!(cat_stdout.len(), input.len());
    assert!(cat_stdout == input, "cat echoed different bytes");

    // Every container process is in the agent's cgroup v2 group (the
    // one `pause` freezes), joined before exec.
    let cg = client
        .exec(&ExecParams {
            process: process(&["cat", "/proc/self/cgroup"]),
            stdin: false,
        })
        .expect("exec cat /proc/self/cgroup");
    let cg_out = guest.collect_output(&cg.streams);
    client.wait(cg.process_id).expect("wait cat");
    let (out, err) = cg_out.finish();
    assert_eq!(out, "0::/container\n", "stderr: {err}");

    // A non-root user with a supplementary group, the hostname and the
    // writable layer over the read-only rootfs.
    let mut spec = process(&[
        "sh",
        "-c",
        "id; hostname; echo w > /etc/written && cat /etc/written",
    ]);
    spec.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![2000],
        ..Default::default()
    };
    let id = client
        .exec(&ExecParams {
            process: spec,
            stdin: false,
        })
        .expect("exec id");
    let id_out = guest.collect_output(&id.streams);
    let id_exit = client.wait(id.process_id).expect("wait id");
    let (out, err) = id_out.finish();
    let id_line = out.lines().next().unwrap_or_default();
    assert!(
        id_line.starts_with("uid=1000") && id_line.contains("gid=1000"),
        "id printed {out:?} (stderr {err:?})"
    );
    assert!(
        id_line.contains("2000"),
        "no supplementary group: {id_line}"
    );
    assert_eq!(out.lines().nth(1), Some("e2e-host"), "stdout {out:?}");
    // uid 1000 may not write to root's /etc: a permission error, not EROFS.
    assert!(
        err.contains("Permission denied"),
        "writing /etc as uid 1000: stdout {out:?} stderr {err:?}"
    );
    assert_eq!(exit_code(&id_exit), Some(1), "{id_exit:?}");

    // Root can write through the overlay on the read-only rootfs.
    let w = client
        .exec(&ExecParams {
            process: process(&["sh", "-c", "echo w > /etc/written && cat /etc/written"]),
            stdin: false,
        })
        .expect("exec write");
    let w_out = guest.collect_output(&w.streams);
    let w_exit = client.wait(w.process_id).expect("wait write");
    let (out, err) = w_out.finish();
    assert_eq!(
        (out.as_str(), exit_code(&w_exit)),
        ("w\n", Some(0)),
        "stderr {err:?}"
    );

    // A long-running process; a second one exec'd while it runs; ps and
    // stats see them; a signal ends the first, and its exit says so.
    let sleeper = client
        .exec(&ExecParams {
            process: process(&["sleep", "1000"]),
            stdin: false,
        })
        .expect("exec sleep");
    let sleeper_out = guest.collect_output(&sleeper.streams);
    // The second process waits for a line on its stdin (a shell builtin,
    // no child): it runs until the host lets it go, so the checks below do
    // not race with its exit however slow the guest is.
    let second = client
        .exec(&ExecParams {
            process: process(&["sh", "-c", "echo second; read x; echo \"got $x\"; exit 3"]),
            stdin: true,
        })
        .expect("exec a second process while the first runs");
    let second_out = guest.collect_output(&second.streams);
    let second_in = guest.stdin(&second.streams);

    let ps = client.ps().expect("ps");
    println!("ps: {:?}", ps.processes);
    let sleep_entry = ps
        .processes
        .iter()
        .find(|p| p.pid == sleeper.pid)
        .unwrap_or_else(|| panic!("ps does not list the sleep (pid {}): {ps:?}", sleeper.pid));
    assert_eq!(sleep_entry.process_id, Some(sleeper.process_id));
    assert_eq!(sleep_entry.cmdline, ["sleep", "1000"]);
    assert_eq!(
        sleep_entry.ppid, 1,
        "started processes are children of the agent"
    );
    assert!(
        ps.processes.iter().any(|p| p.pid == second.pid),
        "ps does not list the second process: {ps:?}"
    );
    assert!(
        ps.processes.windows(2).all(|w| w[0].pid < w[1].pid),
        "not sorted"
    );

    let stats = client.stats().expect("stats");
    println!("stats: {stats:?}");
    let m = &stats.memory;
    assert!(
        m.total_bytes > 32 << 20 && m.total_bytes <= 128 << 20,
        "{m:?}"
    );
    assert!(
        m.free_bytes <= m.total_bytes && m.available_bytes <= m.total_bytes,
        "{m:?}"
    );
    assert!(m.free_bytes > 0, "{m:?}");
    assert!(
        stats.pids >= 2,
        "sleep and the second process run: {stats:?}"
    );
    assert!(
        stats.cpu.usage_ns >= stats.cpu.user_ns.max(stats.cpu.system_ns),
        "{:?}",
        stats.cpu
    );
    assert!(
        stats.cpu.usage_ns > 0,
        "processes ran but used no cpu: {stats:?}"
    );

    let feeder = feed(second_in, b"go\n".to_vec());
    client.signal(sleeper.process_id, SIGTERM).expect("signal");
    let sleep_exit = client.wait(sleeper.process_id).expect("wait sleep");
    assert_eq!(sleep_exit.signal, Some(SIGTERM), "{sleep_exit:?}");
    assert_eq!(sleep_exit.exit_code, None, "{sleep_exit:?}");
    let _ = sleeper_out.finish();
    let second_exit = client.wait(second.process_id).expect("wait second");
    let (out, _) = second_out.finish();
    feeder.join().unwrap().expect("write stdin");
    assert_eq!(out, "second\ngot go\n");
    assert_eq!(exit_code(&second_exit), Some(3), "{second_exit:?}");
    // Signalling an exited process is an error, not a hang.
    assert!(client.signal(sleeper.process_id, SIGTERM).is_err());

    let stats = client.stats().expect("stats after the exits");
    assert_eq!(stats.pids, 0, "processes left: {stats:?}");

    let (exit, took) = guest.shutdown(BOOT_TIMEOUT);
    println!("shutdown → VMM exit: {:.2} s", took.as_secs_f64());
    if let Some(us) = boot_timer_us(&exit.stderr, "guest agent ready")
        .or_else(|| boot_timer_us(&exit.stderr, "guest init reached"))
    {
        println!("boot timer: agent/init mark after {:.2} s", us as f64 / 1e6);
    }
    exit.assert_clean();
}
