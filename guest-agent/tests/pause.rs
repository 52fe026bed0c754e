//! `pause` and `resume`: their state checks on any host, and real freezing
//! of a cgroup v2 group when the host has a writable cgroup2 hierarchy.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capsa_agent::client::{Client, ClientError};
use capsa_agent::protocol::*;
use capsa_agent::server::DirectoryPlatform;
use common::*;

fn code(r: Result<(), ClientError>) -> Option<ErrorCode> {
    r.expect_err("expected an agent error").rpc_code()
}

fn errno(r: Result<(), ClientError>) -> Option<i32> {
    match r {
        Err(ClientError::Rpc(e)) => e.data.and_then(|d| d.errno),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// What arrives on `s` within `d`.
fn read_for(s: &mut UnixStream, d: Duration) -> String {
    read_until(s, d, None)
}

/// What arrives on `s` within `d`, stopping early once it holds `needle`.
fn read_until(s: &mut UnixStream, d: Duration, needle: Option<&str>) -> String {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if needle.is_some_and(|n| String::from_utf8_lossy(&out).contains(n)) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pause_and_resume_follow_the_container_state() {
    let fx = start("pause-state");
    let c = fx.client();
    let invalid = Some(ErrorCode::InvalidState);
    assert_eq!(code(c.pause()), invalid, "pause before create");
    assert_eq!(code(c.resume()), invalid, "resume before create");
    let created = fx.create(&c, &["sleep", "100"]);
    assert_eq!(code(c.pause()), invalid, "pause of a created container");
    assert_eq!(code(c.resume()), invalid, "resume of a created container");
    c.start().unwrap();
    assert_eq!(code(c.resume()), invalid, "resume of a running container");
    // Params are `{}`: anything else is refused.
    let bad = c.call_value(method::Pause::NAME, serde_json::json!({"x": 1}), None);
    assert_eq!(bad.unwrap_err().rpc_code(), Some(ErrorCode::InvalidParams));
    let bad = c.call_value(method::Resume::NAME, serde_json::json!([1]), None);
    assert_eq!(bad.unwrap_err().rpc_code(), Some(ErrorCode::InvalidParams));
    // This platform has no cgroup: a clear OS error, and nothing changed.
    assert_eq!(errno(c.pause()), Some(libc::EOPNOTSUPP));
    assert_eq!(code(c.resume()), invalid, "a failed pause does not pause");
    let exec = c
        .exec(&ExecParams {
            process: process(&["true"]),
            stdin: false,
        })
        .unwrap();
    assert_eq!(c.wait(exec.process_id).unwrap().exit_code, Some(0));
    c.signal(created.process_id, libc::SIGKILL).unwrap();
    c.wait(created.process_id).unwrap();
    assert_eq!(code(c.pause()), invalid, "pause after the process exited");
    c.shutdown().unwrap();
    assert_eq!(code(c.pause()), Some(ErrorCode::ShuttingDown));
    assert_eq!(code(c.resume()), Some(ErrorCode::ShuttingDown));
}

#[test]
fn pause_freezes_the_cgroup_and_resume_thaws_it() {
    let Some(cg) = TestCgroup::new("freeze") else {
        return;
    };
    let platform = DirectoryPlatform {
        cgroup: Some(cg.dir.clone()),
        ..Default::default()
    };
    let fx = start_with("freeze", platform);
    let c: Client = fx.client();
    let created = fx.create(
        &c,
        &[
            "sh",
            "-c",
            "sleep 1000 & while :; do echo tick; sleep 0.05; done",
        ],
    );
    let mut out = fx.attach(&created.streams.stdout);
    let started = c.start().unwrap();
    assert!(read_until(&mut out, Duration::from_secs(5), Some("tick")).contains("tick"));
    let exec = c
        .exec(&ExecParams {
            process: process(&["sleep", "1000"]),
            stdin: false,
        })
        .unwrap();

    c.pause().unwrap();
    let events = std::fs::read_to_string(cg.dir.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    // Every process of the container is in the group, the grandchild too
    // (and, frozen, none comes or goes; ps works on frozen processes).
    let procs = cg.procs();
    let ps = c.ps().unwrap();
    assert!(ps.processes.len() >= 3, "{ps:?}");
    for p in &ps.processes {
        // A child that exited just before the freeze stays a zombie (its
        // frozen parent cannot reap it): listed by ps, but no longer a
        // member of cgroup.procs.
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        assert!(
            zombie || procs.contains(&p.pid),
            "{} not in {procs:?}",
            p.pid
        );
    }
    assert!(procs.contains(&started.pid) && procs.contains(&exec.pid));
    // Bytes written before the freeze may still be in flight; then nothing.
    read_for(&mut out, Duration::from_millis(300));
    assert_eq!(read_for(&mut out, Duration::from_millis(700)), "");
    let invalid = Some(ErrorCode::InvalidState);
    assert_eq!(code(c.pause()), invalid, "second pause");
    let refused = c.exec(&ExecParams {
        process: process(&["true"]),
        stdin: false,
    });
    assert_eq!(
        refused.unwrap_err().rpc_code(),
        invalid,
        "exec while paused"
    );
    assert_eq!(c.ps().unwrap(), ps);
    assert!(c.stats().unwrap().pids >= 3);

    c.resume().unwrap();
    assert!(read_until(&mut out, Duration::from_secs(5), Some("tick")).contains("tick"));

    // SIGKILL reaches a frozen process without a resume.
    c.pause().unwrap();
    c.signal(exec.process_id, libc::SIGKILL).unwrap();
    let exit = c.wait(exec.process_id).unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert_eq!(read_for(&mut out, Duration::from_millis(500)), "");

    // shutdown thaws, then kills.
    c.shutdown().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fx.platform.powered_off.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no power-off");
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = std::fs::read_to_string(cg.dir.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "{events}");
    let exit = c.wait(created.process_id).unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}
