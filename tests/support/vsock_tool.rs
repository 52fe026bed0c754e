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
//! vsock-tool vectors SECONDS THREADS
//!                               a CPU check, not vsock: when AVX is usable
//!                               (CPUID and XCR0 say so), THREADS threads
//!                               hold values in all 16 YMM registers while
//!                               they spin and are switched by the guest
//!                               kernel, and count the registers that
//!                               changed; otherwise says that AVX is off;
//!                               and whether glibc uses AVX/AVX2
//! ```
//!
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

/// Whether AVX is usable: CPUID.1:ECX says AVX and OSXSAVE, and XCR0
/// enables the SSE and AVX state (what glibc and Rust's feature detection
/// check).
fn avx_usable() -> (bool, u64) {
    let ecx = std::arch::x86_64::__cpuid(1).ecx;
    if ecx & (1 << 27) == 0 || ecx & (1 << 28) == 0 {
        return (false, 0);
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) is allowed when CR4.OSXSAVE is set (CPUID bit 27).
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
    let xcr0 = (u64::from(hi) << 32) | u64::from(lo);
    (xcr0 & 0b110 == 0b110, xcr0)
}

/// Holds known values in ymm0..ymm15 for `spins` loop iterations; returns
/// a bit per register whose value changed.
#[target_feature(enable = "avx")]
unsafe fn ymm_round(seed: u64, spins: u64) -> u32 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    let a = _mm256_set_epi64x(seed as i64, !seed as i64, seed.rotate_left(17) as i64, 7);
    let b = _mm256_set_epi64x(0x0bad_cafe, seed.rotate_left(9) as i64, -1, seed as i64);
    let mut o = [_mm256_setzero_si256(); 16];
    asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) spins => _,
        inout("ymm0") a => o[0], inout("ymm1") b => o[1], inout("ymm2") a => o[2], inout("ymm3") b => o[3],
        inout("ymm4") a => o[4], inout("ymm5") b => o[5], inout("ymm6") a => o[6], inout("ymm7") b => o[7],
        inout("ymm8") a => o[8], inout("ymm9") b => o[9], inout("ymm10") a => o[10], inout("ymm11") b => o[11],
        inout("ymm12") a => o[12], inout("ymm13") b => o[13], inout("ymm14") a => o[14], inout("ymm15") b => o[15]);
    let mut changed = 0;
    for (i, got) in o.iter().enumerate() {
        let want = if i % 2 == 0 { a } else { b };
        let mut g = [0u8; 32];
        let mut w = [0u8; 32];
        _mm256_storeu_si256(g.as_mut_ptr().cast(), *got);
        _mm256_storeu_si256(w.as_mut_ptr().cast(), want);
        if g != w {
            changed |= 1 << i;
        }
    }
    changed
}

/// `struct cpuid_feature` of glibc's `<sys/platform/x86.h>` (2.33+).
#[repr(C)]
struct CpuidFeature {
    cpuid: [u32; 4],
    active: [u32; 4],
}

extern "C" {
    fn __x86_get_cpuid_feature_leaf(leaf: u32) -> *const CpuidFeature;
}

/// Whether glibc's string functions may use AVX and AVX2 (its "active"
/// features, after `GLIBC_TUNABLES`).
fn glibc_avx() -> (bool, bool) {
    // SAFETY: glibc returns a pointer to its static feature table (leaf 0
    // is CPUID 1, leaf 1 is CPUID 7), valid for the whole process.
    unsafe {
        let l1 = &*__x86_get_cpuid_feature_leaf(0);
        let l7 = &*__x86_get_cpuid_feature_leaf(1);
        (l1.active[2] & (1 << 28) != 0, l7.active[1] & (1 << 5) != 0)
    }
}

fn vectors(secs: &str, threads: &str) -> Result<String, String> {
    let secs: u64 = secs.parse().map_err(|e| format!("seconds: {e}"))?;
    let threads: u64 = threads.parse().map_err(|e| format!("threads: {e}"))?;
    let (usable, xcr0) = avx_usable();
    let (g_avx, g_avx2) = glibc_avx();
    let glibc = format!("glibc uses AVX: {g_avx}, AVX2: {g_avx2}");
    if !usable {
        return Ok(format!("vectors: AVX off (xcr0 {xcr0:#x}); {glibc}"));
    }
    let t0 = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut rounds, mut changed) = (0u64, 0u32);
                while t0.elapsed().as_secs() < secs {
                    // SAFETY: AVX is usable (checked above).
                    changed |= unsafe { ymm_round((t << 40) ^ rounds, 100_000) };
                    rounds += 1;
                }
                (rounds, changed)
            })
        })
        .collect();
    let mut rounds = 0;
    let mut changed = 0;
    for w in workers {
        let (r, c) = w.join().map_err(|_| "a thread panicked")?;
        rounds += r;
        changed |= c;
    }
    Ok(format!(
        "vectors: AVX on (xcr0 {xcr0:#x}), {rounds} rounds, registers changed: {changed:#06x}; {glibc}"
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |s: &str| s.parse::<u32>().map_err(|e| format!("port {s:?}: {e}"));
    let result = match args.get(1).map(String::as_str) {
        Some("vectors") if args.len() == 4 => vectors(&args[2], &args[3]),
        Some("echo") if args.len() == 3 => port(&args[2]).and_then(echo),
        Some("send") if args.len() == 5 || args.len() == 6 => port(&args[2])
            .and_then(|p| send(p, &args[3], &args[4], args.get(5).map(String::as_str))),
        _ => Err("usage: vsock-tool echo PORT | vsock-tool send PORT IN OUT [EXPECT] | vsock-tool vectors SECONDS THREADS".to_string()),
    };
    match result {
        Ok(line) => println!("vsock-tool: {line}"),
        Err(e) => {
            println!("vsock-tool: error: {e}");
            std::process::exit(1);
        }
    }
}
