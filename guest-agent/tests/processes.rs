//! Every method against real processes on the host: streams, exit codes,
//! signals, exec, tty, stats, ps, shutdown.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capsa_agent::client::Notification;
use capsa_agent::protocol::*;
use capsa_agent::server::DirectoryPlatform;
use common::*;

#[test]
fn separate_streams_and_exit_code() {
    let fx = start("streams");
    let c = fx.client();
    let hello = c.hello(Duration::from_secs(5)).unwrap();
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert!(!hello.container_created);
    let created = fx.create(&c, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(created.container_id, "c1");
    assert_eq!(fx.platform.hostname.lock().unwrap().as_deref(), Some("box"));
    assert_eq!(fx.platform.mounts.lock().unwrap().len(), 1);
    // Start before attaching: output waits in the pipes.
    let started = c.start().unwrap();
    assert_eq!(started.process_id, created.process_id);
    assert!(started.pid > 0);
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!(exit.exit_code, Some(7));
    assert_eq!(exit.signal, None);
    assert_eq!(read_all(fx.attach(&created.streams.stdout)), "out\n");
    assert_eq!(read_all(fx.attach(&created.streams.stderr)), "err\n");
    // Tokens are single use.
    assert!(capsa_agent::client::attach_stream(
        &fx.connector,
        created.streams.stdout.as_deref().unwrap()
    )
    .is_err());
    // The exit notification arrived on the control connection.
    let note = c.next_notification(Duration::from_secs(5)).unwrap();
    assert_eq!(note, Notification::Exit(exit));
    assert!(c.hello(Duration::from_secs(5)).unwrap().container_created);
    assert_eq!(
        c.start().unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
}

#[test]
fn stdin_reaches_cat_and_eof_is_forwarded() {
    let fx = start("stdin");
    let c = fx.client();
    let created = fx.create(&c, &["cat"]);
    let mut stdin = fx.attach(&created.streams.stdin);
    let stdout = fx.attach(&created.streams.stdout);
    c.start().unwrap();
    stdin.write_all(b"hello through stdin\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(stdout), "hello through stdin\n");
    assert_eq!(c.wait(created.process_id).unwrap().exit_code, Some(0));
}

#[test]
fn signal_a_sleep_exec_ps_stats() {
    let fx = start("signal");
    let c = fx.client();
    let created = fx.create(&c, &["sleep", "100"]);
    c.start().unwrap();
    // exec a second process while the first runs.
    let exec = c
        .exec(&ExecParams {
            process: process(&["sh", "-c", "echo $((6*7))"]),
            stdin: false,
        })
        .unwrap();
    assert!(exec.streams.stdin.is_none());
    assert_eq!(read_all(fx.attach(&exec.streams.stdout)), "42\n");
    assert_eq!(c.wait(exec.process_id).unwrap().exit_code, Some(0));

    let ps = c.ps().unwrap();
    let entry = ps
        .processes
        .iter()
        .find(|p| p.process_id == Some(created.process_id))
        .expect("init in ps");
    assert_eq!(entry.cmdline, vec!["sleep", "100"]);
    let stats = c.stats().unwrap();
    assert!(stats.pids >= 1);
    assert!(stats.memory.total_bytes > 0);
    assert!(stats.memory.available_bytes <= stats.memory.total_bytes);

    c.signal(created.process_id, libc::SIGTERM).unwrap();
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGTERM)));
    assert_eq!(exit.status_code(), 128 + libc::SIGTERM);
    assert_eq!(
        c.signal(created.process_id, 9).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
}

#[test]
fn exec_failures_carry_errno() {
    let fx = start("execfail");
    let c = fx.client();
    fx.create(&c, &["true"]);
    let err = c
        .exec(&ExecParams {
            process: process(&["/definitely/not/here"]),
            stdin: true,
        })
        .unwrap_err();
    let capsa_agent::client::ClientError::Rpc(rpc) = err else {
        panic!("{err}")
    };
    assert_eq!(rpc.error_code(), Some(ErrorCode::ExecFailed));
    let data = rpc.data.unwrap();
    assert_eq!(
        (data.errno, data.stage.as_deref(), data.path.as_deref()),
        (
            Some(libc::ENOENT),
            Some("stat"),
            Some("/definitely/not/here")
        )
    );
    assert_eq!(
        rpc.message,
        r#"exec: "/definitely/not/here": stat /definitely/not/here: no such file or directory"#
    );
    let mut bad_cwd = process(&["true"]);
    bad_cwd.cwd = "/definitely/not/here".into();
    let err = c
        .exec(&ExecParams {
            process: bad_cwd,
            stdin: true,
        })
        .unwrap_err();
    assert_eq!(err.rpc_code(), Some(ErrorCode::ExecFailed));
    // The agent keeps serving after failed execs.
    assert!(c.hello(Duration::from_secs(5)).is_ok());
}

/// A command that cannot be run fails `create` (nothing runs), worded
/// as runc words it: engines turn these words into exit codes 127/126.
#[test]
fn a_command_that_cannot_run_fails_create_as_runc_says() {
    let fx = start("lookup");
    let c = fx.client();
    let dir = fx.dir.join("path");
    std::fs::create_dir_all(&dir).unwrap();
    // Not executable: skipped by the PATH lookup, refused by path.
    std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
    let tool = dir.join("tool").display().to_string();
    let cases: [(&str, &str, i32, String); 5] = [
        (
            "no-such-cmd",
            "lookup",
            libc::ENOENT,
            r#"exec: "no-such-cmd": executable file not found in $PATH"#.into(),
        ),
        (
            "tool",
            "lookup",
            libc::ENOENT,
            r#"exec: "tool": executable file not found in $PATH"#.into(),
        ),
        (
            &tool,
            "lookup",
            libc::EACCES,
            format!("exec: {tool:?}: permission denied"),
        ),
        (
            "/",
            "lookup",
            libc::EACCES,
            r#"exec: "/": permission denied"#.into(),
        ),
        (
            "/no/such",
            "stat",
            libc::ENOENT,
            r#"exec: "/no/such": stat /no/such: no such file or directory"#.into(),
        ),
    ];
    for (cmd, stage, errno, message) in cases {
        let mut p = create_params(&[cmd]);
        p.process.env = vec![format!("PATH={}:/usr/bin:/bin", dir.display())];
        let err = c.create(&p).unwrap_err();
        let capsa_agent::client::ClientError::Rpc(rpc) = err else {
            panic!("{cmd}: {err}")
        };
        assert_eq!(rpc.code, ErrorCode::ExecFailed.code(), "{cmd}");
        assert_eq!(rpc.message, message, "{cmd}");
        let data = rpc.data.unwrap();
        assert_eq!(
            (data.stage.as_deref(), data.errno, data.path.as_deref()),
            (Some(stage), Some(errno), Some(cmd)),
        );
        assert!(!c.hello(Duration::from_secs(5)).unwrap().container_created);
    }
    // Nothing was left half-created: a runnable command creates now.
    let created = fx.create(&c, &["sh", "-c", "exit 5"]);
    c.start().unwrap();
    assert_eq!(c.wait(created.process_id).unwrap().exit_code, Some(5));
}

/// The init process's exit says whether the OOM killer struck (engines
/// report it as `OOMKilled`); the exits of `exec`'d processes never do.
#[test]
fn the_init_exit_carries_oom_kills() {
    let fx = start("oom");
    let c = fx.client();
    let created = fx.create(&c, &["sh", "-c", "read x; exit 0"]);
    let stdin = fx.attach(&created.streams.stdin);
    c.start().unwrap();
    fx.platform.oom_kills.store(1, Ordering::SeqCst);
    let exec = c
        .exec(&ExecParams {
            process: process(&["true"]),
            stdin: false,
        })
        .unwrap();
    assert!(!c.wait(exec.process_id).unwrap().oom_killed);
    drop(stdin);
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!((exit.exit_code, exit.oom_killed), (Some(0), true));
}

/// `pidNamespace`: the init process is PID 1 of a namespace of its own
/// (and, as PID 1, ignores a SIGTERM it has no handler for); an `exec`'d
/// process joins that namespace and sees the init as PID 1.
#[test]
fn pid_namespace_makes_the_init_pid_1_and_exec_joins_it() {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (CLONE_NEWPID)");
        return;
    }
    let fx = start("pidns");
    let c = fx.client();
    let mut p = create_params(&["sh", "-c", "echo $$; read x; echo done"]);
    p.pid_namespace = true;
    let created = c.create(&p).unwrap();
    let mut stdin = fx.attach(&created.streams.stdin);
    let stdout = fx.attach(&created.streams.stdout);
    let started = c.start().unwrap();
    assert!(started.pid > 1);
    let exec = c
        .exec(&ExecParams {
            process: process(&["sh", "-c", "echo $$; kill -0 1 && echo init-is-1"]),
            stdin: false,
        })
        .unwrap();
    let out = read_all(fx.attach(&exec.streams.stdout));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let in_ns: i32 = lines[0].parse().unwrap();
    assert!(in_ns > 1 && in_ns != exec.pid, "{out:?} (pid {})", exec.pid);
    assert_eq!(lines[1], "init-is-1");
    assert_eq!(c.wait(exec.process_id).unwrap().exit_code, Some(0));
    // SIGTERM without a handler does not end a namespace's PID 1.
    c.signal(created.process_id, libc::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"x\n").unwrap();
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!((exit.exit_code, exit.signal), (Some(0), None));
    assert_eq!(read_all(stdout), "1\ndone\n");
}

#[test]
fn user_ids_and_rlimits_apply() {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = start("user");
    let c = fx.client();
    let mut p = create_params(&["sh", "-c", "id -u; id -g; id -G; ulimit -n; umask"]);
    p.process.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![1000, 44],
        umask: Some(0o027),
        username: None,
    };
    p.process.rlimits = vec![Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        hard: 512,
        soft: 256,
    }];
    p.process.no_new_privileges = true;
    p.stdin = false;
    let created = c.create(&p).unwrap();
    c.start().unwrap();
    let out = read_all(fx.attach(&created.streams.stdout));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1000");
    assert!(lines[2].split(' ').any(|g| g == "44"), "{out}");
    assert_eq!(lines[3], "256");
    assert_eq!(lines[4], "0027");
    assert_eq!(c.wait(created.process_id).unwrap().exit_code, Some(0));
}

#[test]
fn terminal_resize_and_tty_stream() {
    let fx = start("tty");
    let c = fx.client();
    let mut p = create_params(&["sh", "-c", "stty size; read line; echo got:$line"]);
    p.process.terminal = true;
    p.process.console_size = Some(ConsoleSize {
        height: 24,
        width: 80,
    });
    let created = c.create(&p).unwrap();
    assert!(created.streams.stdout.is_none());
    let mut tty = fx.attach(&created.streams.tty);
    c.start().unwrap();
    c.resize(created.process_id, 30, 100).unwrap_or(());
    tty.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    // Wait for the size line, then answer the `read`.
    while !String::from_utf8_lossy(&seen).contains('\n') {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let size = String::from_utf8_lossy(&seen).to_string();
    assert!(
        size.starts_with("24 80") || size.starts_with("30 100"),
        "{size:?}"
    );
    tty.write_all(b"abc\n").unwrap();
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!(exit.exit_code, Some(0));
    let mut rest = Vec::new();
    let _ = tty.read_to_end(&mut rest);
    seen.extend_from_slice(&rest);
    assert!(
        String::from_utf8_lossy(&seen).contains("got:abc"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[test]
fn shutdown_kills_and_powers_off() {
    let fx = start("shutdown");
    let c = fx.client();
    let created = fx.create(&c, &["sleep", "100"]);
    c.start().unwrap();
    c.shutdown().unwrap();
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(fx.platform.powered_off.load(Ordering::SeqCst));
    let again = c.exec(&ExecParams {
        process: process(&["true"]),
        stdin: false,
    });
    assert_eq!(again.unwrap_err().rpc_code(), Some(ErrorCode::ShuttingDown));
}

#[test]
fn signal_all_and_output_before_attach_is_kept() {
    let fx = start("all");
    let c = fx.client();
    let created = fx.create(
        &c,
        &[
            "sh",
            "-c",
            "head -c 100000 /dev/zero | tr '\\0' x; echo; sleep 100",
        ],
    );
    c.start().unwrap();
    // The process blocks on the full pipe until we attach; nothing is lost.
    std::thread::sleep(Duration::from_millis(200));
    let out = fx.attach(&created.streams.stdout);
    let reader = std::thread::spawn(move || read_all(out));
    // Give it time to finish writing, then kill everything.
    std::thread::sleep(Duration::from_millis(300));
    c.signal_all(libc::SIGKILL).unwrap();
    assert_eq!(
        c.wait(created.process_id).unwrap().signal,
        Some(libc::SIGKILL)
    );
    let text = reader.join().unwrap();
    assert_eq!(text.trim_end().len(), 100_000);
}

#[test]
fn sysctls_are_set_in_key_order_and_a_failure_names_the_key() {
    let fx = start("sysctl");
    let c = fx.client();
    let mut p = create_params(&["true"]);
    p.sysctl = [
        ("net.ipv4.ip_forward", "1"),
        ("kernel.msgmax", "12345"),
        ("net/ipv4/conf/eth0.100/rp_filter", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.create(&p).unwrap();
    assert_eq!(
        *fx.platform.sysctls.lock().unwrap(),
        [
            ("kernel/msgmax".to_string(), "12345".to_string()),
            ("net/ipv4/ip_forward".to_string(), "1".to_string()),
            (
                "net/ipv4/conf/eth0.100/rp_filter".to_string(),
                "2".to_string()
            ),
        ]
    );

    // A key outside /proc/sys is refused before anything is done.
    let fx = start("sysctl-bad");
    let c = fx.client();
    let mut p = create_params(&["true"]);
    p.sysctl.insert("net/../../etc/passwd".into(), "x".into());
    let e = c.create(&p).unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidParams));
    assert!(e.to_string().contains("net/../../etc/passwd"), "{e}");
    assert!(fx.platform.mounts.lock().unwrap().is_empty());

    // A parameter the kernel does not have fails `create`, named.
    let fx = start_with(
        "sysctl-missing",
        DirectoryPlatform {
            missing_sysctl: Some("net/ipv4/no_such".into()),
            ..Default::default()
        },
    );
    let c = fx.client();
    let mut p = create_params(&["true"]);
    p.sysctl.insert("net.ipv4.no_such".into(), "1".into());
    let e = c.create(&p).unwrap_err();
    assert!(e.to_string().contains("/proc/sys/net/ipv4/no_such"), "{e}");
    // Nothing was started: a second create is allowed.
    p.sysctl.clear();
    c.create(&p).unwrap();
}
