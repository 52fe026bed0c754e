//! `capsa-benches net`: TCP bulk transfer between the host and a container
//! on podman's default network, through a port published on 127.0.0.1,
//! with runc and with capsa in the same run; the result is capsa's
//! throughput as a ratio of runc's (docs/performance.md "Network").
//!
//! The container (busybox) serves a file of `--file-mib` MiB with httpd on
//! port 8080 and swallows uploads with `nc -l` on port 5001, both
//! published on 127.0.0.1. Per iteration, in each direction, the host
//! moves `--rounds` times the file's size:
//!
//! - **download** (container → host): `GET /big` over HTTP/1.0, timed
//!   from connect to the last byte;
//! - **upload** (host → container): the bytes written to the `nc`
//!   listener, timed from connect to the end of a lingering `close`, which
//!   returns once the container's kernel acknowledged every byte.
//!
//! Traffic goes only to 127.0.0.1 (podman's NAT takes it to the
//! container); every transfer is bounded in size and time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::fixtures::workspace_root;

/// Arguments of `capsa-benches net`.
#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// Measurements per runtime and direction.
    #[arg(long, default_value_t = 3)]
    pub iterations: usize,
    /// Size of the served file, MiB (it lives in the container's writable
    /// layer: guest RAM for capsa).
    #[arg(long, default_value_t = 4)]
    pub file_mib: u64,
    /// Transfers of the file per measurement.
    #[arg(long, default_value_t = 2)]
    pub rounds: u64,
    /// Results directory (default: benches/results/<UTC timestamp>-net/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The capsa binary (default: target/x86_64-unknown-linux-gnu/release/capsa).
    #[arg(long, value_name = "PATH")]
    pub capsa: Option<PathBuf>,
}

/// Timeout of one transfer or of the container's start.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The engines' environment (`scripts/engines.sh env`): `KEY=value` pairs.
fn engines_env() -> anyhow::Result<Vec<(String, String)>> {
    let script = workspace_root().join("scripts/engines.sh");
    let out = Command::new(&script)
        .arg("env")
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} env failed", script.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("export ").unwrap_or(l.trim());
            let (k, v) = l.split_once('=')?;
            Some((
                k.to_string(),
                v.trim_matches(|c| c == '"' || c == '\'').to_string(),
            ))
        })
        .collect())
}

fn podman(env: &[(String, String)]) -> Command {
    let mut c = Command::new("podman");
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A container of the benchmark, removed on drop.
struct BenchContainer {
    name: String,
    env: Vec<(String, String)>,
}

impl Drop for BenchContainer {
    fn drop(&mut self) {
        let _ = podman(&self.env)
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

fn start(
    env: &[(String, String)],
    runtime: &Path,
    name: &str,
    file_mib: u64,
) -> anyhow::Result<(BenchContainer, SocketAddr, SocketAddr)> {
    let (http, nc) = (free_port()?, free_port()?);
    let script = format!(
        "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={file_mib} 2>/dev/null && \
         echo ready > /www/ready && \
         (while :; do nc -l -p 5001 > /dev/null < /dev/null; done &) && \
         exec httpd -f -p 8080 -h /www"
    );
    let guard = BenchContainer {
        name: name.to_string(),
        env: env.to_vec(),
    };
    let out = podman(env)
        .arg("--runtime")
        .arg(runtime)
        .args(["run", "-d", "--name", name])
        .args(["-p", &format!("127.0.0.1:{http}:8080")])
        .args(["-p", &format!("127.0.0.1:{nc}:5001")])
        .args(["localhost/capsa-busybox:latest", "sh", "-c", &script])
        .output()
        .context("podman run")?;
    if !out.status.success() {
        bail!(
            "podman run with {}: {}",
            runtime.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, http));
    let nc = SocketAddr::from((Ipv4Addr::LOCALHOST, nc));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if get(http, "/ready", 64).is_ok_and(|b| b > 0) {
            return Ok((guard, http, nc));
        }
        if Instant::now() > deadline {
            bail!("the container with {} never served", runtime.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `GET path`; the body's length (at most `limit` bytes read).
fn get(addr: SocketAddr, path: &str, limit: u64) -> std::io::Result<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Ok(0);
        }
        head.push(byte[0]);
        if head.len() > 4096 {
            return Err(std::io::Error::other("header too long"));
        }
    }
    if !head.starts_with(b"HTTP/1.0 200") && !head.starts_with(b"HTTP/1.1 200") {
        return Ok(0);
    }
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    let mut take = s.take(limit);
    loop {
        let r = take.read(&mut buf)?;
        if r == 0 {
            return Ok(n);
        }
        n += r as u64;
    }
}

/// Uploads `bytes` to `addr`; returns once the peer acknowledged them
/// (lingering close).
fn upload(addr: SocketAddr, bytes: u64) -> std::io::Result<()> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: TIMEOUT.as_secs() as i32,
    };
    // SAFETY: setsockopt reads a `linger` of the given size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let buf = vec![0x5au8; 256 << 10];
    let mut left = bytes;
    let mut w = &s;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    drop(s);
    Ok(())
}

/// MiB/s of one measurement of `f` moving `bytes`.
fn measure(bytes: u64, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark; writes `net.json` and `net.md` into the results
/// directory and prints the table.
pub fn run(args: NetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.iterations >= 1, "--iterations must be at least 1");
    anyhow::ensure!(
        (1..=64).contains(&args.file_mib),
        "--file-mib must be 1 to 64"
    );
    let env = engines_env()?;
    let capsa = args
        .capsa
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/x86_64-unknown-linux-gnu/release/capsa"));
    let runc = PathBuf::from(
        String::from_utf8_lossy(
            &Command::new("sh")
                .args(["-c", "command -v runc"])
                .output()?
                .stdout,
        )
        .trim(),
    );
    let out = args.out.clone().unwrap_or_else(|| {
        workspace_root()
            .join("benches/results")
            .join(format!("{}-net", crate::timestamp()))
    });
    std::fs::create_dir_all(&out)?;
    let bytes = (args.file_mib * args.rounds) << 20;
    let mut results = Vec::new();
    for (label, runtime) in [("runc", runc), ("capsa", capsa)] {
        eprintln!("capsa-benches net: starting a container with {label}...");
        let name = format!("capsa-bench-net-{label}-{}", std::process::id());
        let (_guard, http, nc) = start(&env, &runtime, &name, args.file_mib)?;
        let (mut down, mut up) = (Vec::new(), Vec::new());
        for i in 0..args.iterations {
            let d = measure(bytes, || {
                for _ in 0..args.rounds {
                    let n = get(http, "/big", args.file_mib << 20)?;
                    anyhow::ensure!(n == args.file_mib << 20, "short download: {n} bytes");
                }
                Ok(())
            })?;
            let u = measure(bytes, || Ok(upload(nc, bytes)?))?;
            eprintln!("  {label} #{i}: download {d:.3} MiB/s, upload {u:.3} MiB/s");
            down.push(d);
            up.push(u);
        }
        results.push(json!({
            "runtime": label,
            "download_mib_s": down.clone(),
            "upload_mib_s": up.clone(),
            "download_median": median(&mut down),
            "upload_median": median(&mut up),
        }));
    }
    let ratio = |k: &str| {
        results[1][k].as_f64().unwrap_or(f64::NAN) / results[0][k].as_f64().unwrap_or(f64::NAN)
    };
    let (rd, ru) = (ratio("download_median"), ratio("upload_median"));
    let table = format!(
        "| TCP bulk, host ↔ container (podman, 127.0.0.1 published port, {} MiB x{}) | runc MiB/s | capsa MiB/s | capsa / runc |\n|---|---|---|---|\n\
         | container → host (download) | {:.1} | {:.3} | {rd:.2e} |\n\
         | host → container (upload) | {:.1} | {:.3} | {ru:.2e} |\n",
        args.file_mib,
        args.rounds,
        results[0]["download_median"].as_f64().unwrap_or(f64::NAN),
        results[1]["download_median"].as_f64().unwrap_or(f64::NAN),
        results[0]["upload_median"].as_f64().unwrap_or(f64::NAN),
        results[1]["upload_median"].as_f64().unwrap_or(f64::NAN),
    );
    print!("{table}");
    std::fs::write(out.join("net.md"), &table)?;
    let doc = json!({
        "schema": "capsa-benches/net/1",
        "timestamp": crate::timestamp(),
        "machine": crate::machine(),
        "config": {"iterations": args.iterations, "file_mib": args.file_mib, "rounds": args.rounds},
        "results": results,
        "ratios": {"download": rd, "upload": ru},
    });
    std::fs::write(
        out.join("net.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!("results: {}", out.join("net.json").display());
    Ok(())
}
