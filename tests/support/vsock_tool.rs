//! `vsock-tool`: a guest-side helper of the end-to-end tests. Not a module
//! of the test crate: `support::devices::vsock_tool()` compiles this file
//! alone with `rustc` into a static binary (`-C target-feature=+crt-static`)
//! that goes into a busybox initramfs (busybox has no vsock applet).
//! No dependencies beyond std: the few socket calls are declared here.
//!
//! ```text
//! vsock-tool echo PORT          listen on vsock PORT (any CID), accept one
//!                               connection, read it to EOF, write all of it
//!                               back, close
//! vsock-tool send PORT IN OUT   connect to the host (CID 2) port PORT, write
//!                               the file IN, shut down writing, read to EOF
//!                               into the file OUT; IN may be
//!                               `pattern:SEED:LEN`: LEN bytes made here by
//!                               the same generator as the host's
//!                               `support::devices::pattern(LEN, SEED)`
//!                               (keeps the initramfs small); with
//!                               EXPECT (a file or pattern), says where
//!                               what came back first differs from it
//! ```
//! Prints one line on stdout when done (`echo: N bytes`, `send: N bytes
//! sent, M received`) and exits 0; on an error prints it and exits 1.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const VMADDR_CID_ANY: u32 = u32::MAX;
const VMADDR_CID_HOST: u32 = 2;

/// `struct sockaddr_vm` (linux/vm_sockets.h), 16 bytes.
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    zero: [u8; 4],
}

extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut u8, len: *mut u32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
}

fn check(rc: i32, what: &str) -> Result<i32, String> {
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid,
        zero: [0; 4],
    }
}

fn vsock_socket() -> Result<i32, String> {
    // SAFETY: socket() returns a new descriptor or -1.
    check(unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) }, "socket")
}

fn echo(port: u32) -> Result<String, String> {
    let fd = vsock_socket()?;
    let a = addr(VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    check(unsafe { bind(fd, &a, 16) }, "bind")?;
    // SAFETY: plain syscall on our socket.
    check(unsafe { listen(fd, 4) }, "listen")?;
    println!("vsock-tool: listening on {port}");
    // SAFETY: accept without an address buffer.
    let conn = check(
        unsafe { accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) },
        "accept",
    )?;
    // SAFETY: `conn` is a fresh descriptor that we own from here on.
    let mut s = unsafe { UnixStream::from_raw_fd(conn) };
    let mut data = Vec::new();
    s.read_to_end(&mut data).map_err(|e| format!("read: {e}"))?;
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    s.flush().map_err(|e| format!("flush: {e}"))?;
    Ok(format!("echo: {} bytes", data.len()))
}

/// Same generator as `support::devices::pattern`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn input_data(input: &str) -> Result<Vec<u8>, String> {
    if let Some(spec) = input.strip_prefix("pattern:") {
        let (seed, len) = spec.split_once(':').ok_or("pattern:SEED:LEN")?;
        let seed = seed.parse::<u64>().map_err(|e| format!("seed: {e}"))?;
        let len = len.parse::<usize>().map_err(|e| format!("len: {e}"))?;
        return Ok(pattern(len, seed));
    }
    std::fs::read(input).map_err(|e| format!("{input}: {e}"))
}

/// Where `got` differs from `want`: the first few byte ranges, each with
/// what arrived there (zeros, or the expected data shifted: where those
/// bytes are in `want`); empty when they are equal.
fn differences(got: &[u8], want: &[u8]) -> String {
    let mut out = String::new();
    if got.len() != want.len() {
        out.push_str(&format!(", expected {} bytes", want.len()));
    }
    let n = got.len().min(want.len());
    let (mut at, mut ranges, mut differ) = (0, 0, 0usize);
    while at < n {
        if got[at] == want[at] {
            at += 1;
            continue;
        }
        let end = (at..n).find(|&i| got[i] == want[i]).unwrap_or(n);
        differ += end - at;
        ranges += 1;
        if ranges <= 4 {
            let window = &got[at..end.min(at + 16)];
            let zeros = got[at..end].iter().all(|&b| b == 0);
            let found = want.windows(window.len()).position(|w| w == window);
            out.push_str(&format!(
                ", bytes {at}..{end} differ (got {:02x?}{}, found at {found:?} in the expected data)",
                &got[at..end.min(at + 8)],
                if zeros { ", all zero" } else { "" }
            ));
        }
        at = end;
    }
    if ranges > 0 {
        out.push_str(&format!(", {differ} bytes in {ranges} ranges differ"));
    }
    out
}

fn send(port: u32, input: &str, output: &str, expect: Option<&str>) -> Result<String, String> {
    let data = input_data(input)?;
    let fd = vsock_socket()?;
    let a = addr(VMADDR_CID_HOST, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    check(unsafe { connect(fd, &a, 16) }, "connect")?;
    // SAFETY: `fd` is our connected socket; the stream owns it from here on.
    let mut s = unsafe { UnixStream::from_raw_fd(fd) };
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
    std::fs::write(output, &back).map_err(|e| format!("{output}: {e}"))?;
    let check = match expect {
        Some(e) => differences(&back, &input_data(e)?),
        None => String::new(),
    };
    Ok(format!(
        "send: {} bytes sent, {} received{check}",
        data.len(),
        back.len()
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |s: &str| s.parse::<u32>().map_err(|e| format!("port {s:?}: {e}"));
    let result = match args.get(1).map(String::as_str) {
        Some("echo") if args.len() == 3 => port(&args[2]).and_then(echo),
        Some("send") if args.len() == 5 || args.len() == 6 => port(&args[2])
            .and_then(|p| send(p, &args[3], &args[4], args.get(5).map(String::as_str))),
        _ => Err("usage: vsock-tool echo PORT | vsock-tool send PORT IN OUT [EXPECT]".to_string()),
    };
    match result {
        Ok(line) => println!("vsock-tool: {line}"),
        Err(e) => {
            println!("vsock-tool: error: {e}");
            std::process::exit(1);
        }
    }
}
