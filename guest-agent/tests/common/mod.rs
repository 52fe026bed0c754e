//! Shared fixture: the real agent server on the host over Unix sockets, with
//! a [`DirectoryPlatform`] whose rootfs is the host's `/`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capsa_agent::client::{attach_stream, Client, UnixPortConnector};
use capsa_agent::protocol::*;
use capsa_agent::server::{self, Agent, DirectoryPlatform};

pub struct Fixture {
    pub dir: PathBuf,
    pub connector: UnixPortConnector,
    pub platform: Arc<DirectoryPlatform>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start(tag: &str) -> Fixture {
    start_with(tag, DirectoryPlatform::default())
}

/// The agent with `platform` (e.g. one with a cgroup).
pub fn start_with(tag: &str, platform: DirectoryPlatform) -> Fixture {
    let dir = std::env::temp_dir().join(format!("capsa-agent-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("control.sock");
    let streams = dir.join("streams.sock");
    let platform = Arc::new(platform);
    let agent = Agent::new(platform.clone(), 0);
    let cl = UnixListener::bind(&control).unwrap();
    let sl = UnixListener::bind(&streams).unwrap();
    let a = agent.clone();
    std::thread::spawn(move || server::serve_control(a, cl));
    std::thread::spawn(move || server::serve_streams(agent, sl));
    Fixture {
        dir,
        connector: UnixPortConnector::new(control, streams),
        platform,
    }
}

impl Fixture {
    pub fn client(&self) -> Client {
        let c = Client::connect(&self.connector).unwrap();
        c.set_timeout(Some(Duration::from_secs(20)));
        c
    }

    /// A raw control connection: write lines, read response lines.
    pub fn raw(&self) -> (UnixStream, BufReader<UnixStream>) {
        let s = UnixStream::connect(self.connector.ports[&CONTROL_PORT].clone()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    pub fn attach(&self, token: &Option<String>) -> UnixStream {
        attach_stream(&self.connector, token.as_deref().unwrap()).unwrap()
    }

    pub fn create(&self, client: &Client, args: &[&str]) -> CreateResult {
        client.create(&create_params(args)).unwrap()
    }
}

pub fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

pub fn create_params(args: &[&str]) -> CreateParams {
    CreateParams {
        container_id: "c1".into(),
        rootfs: RootfsSpec {
            source: Some("/".into()),
            fstype: RootfsType::Ext4,
            readonly: false,
            tag: None,
        },
        process: process(args),
        hostname: Some("box".into()),
        shares: Vec::new(),
        mounts: vec![MountSpec {
            destination: "/proc".into(),
            kind: Some("proc".into()),
            source: Some("proc".into()),
            options: vec![],
        }],
        stdin: true,
        pid_namespace: false,
        network: None,
        sysctl: Default::default(),
    }
}

pub fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn send_line(s: &mut UnixStream, line: &str) {
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
}

pub fn recv_json(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
}

/// A cgroup v2 group made for one test under the host's cgroup2 mount;
/// on drop its processes are killed and it is removed.
pub struct TestCgroup {
    pub dir: PathBuf,
}

impl TestCgroup {
    /// A new group, or `None` (with the reason on stderr) when the host has
    /// no writable cgroup2 hierarchy (not root, no cgroup2 mount).
    pub fn new(tag: &str) -> Option<TestCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        // Fields: ... mount point (5th) ... " - " fstype source options.
        let mount = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        });
        let Some(mount) = mount else {
            eprintln!("no cgroup2 mount on this host: real freezing not tested");
            return None;
        };
        let dir = mount.join(format!("capsa-agent-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!(
                "cannot make {}: {e}: real freezing not tested",
                dir.display()
            );
            return None;
        }
        if !dir.join("cgroup.freeze").exists() {
            eprintln!(
                "{} has no cgroup.freeze: real freezing not tested",
                dir.display()
            );
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(TestCgroup { dir })
    }

    /// Pids in the group.
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..500 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
