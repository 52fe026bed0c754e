//! A scripted vhost-user backend for the unit tests: it speaks the wire
//! protocol itself (not through the `vhost` crate, so that it can break
//! every rule on purpose), records what the frontend sent, and at a chosen
//! request misbehaves in a chosen way.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// vhost-user request codes (`docs/interop/vhost-user.rst`).
pub mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
}

const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

/// What virtiofsd offers: VERSION_1, INDIRECT_DESC, EVENT_IDX,
/// PROTOCOL_FEATURES.
pub const BACKEND_FEATURES: u64 = (1 << 32) | (1 << 28) | (1 << 29) | (1 << 30);
/// REPLY_ACK, MQ, CONFIG (the frontend must only take REPLY_ACK).
pub const BACKEND_PROTOCOL_FEATURES: u64 = 0x8 | 0x1 | 0x200;

/// How the backend misbehaves at the chosen request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Closes the connection instead of answering.
    Close,
    /// Never answers (until the frontend gives up and shuts the socket).
    Hang,
    /// Answers 20 bytes of 0xff.
    Garbage,
    /// Answers with another request's code.
    WrongRequest,
    /// Answers with protocol version 2.
    BadVersion,
    /// Answers a header whose size is larger than any message.
    HugeSize,
    /// Answers a header that announces a body, then closes.
    Truncated,
    /// Acknowledges with a non-zero status (refuses the request).
    Nack,
    /// Attaches a file descriptor to its answer.
    StrayFd,
}

/// What the frontend sent, in order.
#[derive(Default)]
pub struct Log {
    /// Request codes.
    pub requests: Vec<u32>,
    /// The memory regions: (guest address, size, frontend address,
    /// offset in the file).
    pub regions: Vec<(u64, u64, u64, u64)>,
    /// The region files (the guest memory memfd).
    pub region_files: Vec<File>,
    /// SET_VRING_ADDR bodies: (index, descriptor, used, available).
    pub vring_addrs: Vec<(u32, u64, u64, u64)>,
    /// SET_VRING_NUM: (index, size).
    pub vring_nums: Vec<(u32, u32)>,
    /// Kick eventfds by queue index.
    pub kicks: Vec<(u32, File)>,
    /// Call eventfds by queue index.
    pub calls: Vec<(u32, File)>,
    /// SET_FEATURES value.
    pub features: Option<u64>,
    /// SET_PROTOCOL_FEATURES value.
    pub protocol_features: Option<u64>,
    /// SET_VRING_ENABLE: (index, enable).
    pub enables: Vec<(u32, u32)>,
}

/// A running fake backend, listening on a socket in a temporary
/// directory; serves one connection.
pub struct FakeBackend {
    pub path: PathBuf,
    pub log: Arc<Mutex<Log>>,
    /// The server side of the connection, once accepted (to close it from
    /// the test, or to write unasked).
    pub conn: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeBackend {
    /// Starts a backend that misbehaves with `fault` at the `n`th request
    /// (1-based), or never with `None`.
    pub fn start(fault: Option<(usize, Fault)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vhost.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let conn = Arc::new(Mutex::new(None));
        let thread = {
            let (log, conn) = (log.clone(), conn.clone());
            std::thread::spawn(move || {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                *conn.lock().unwrap() = stream.try_clone().ok();
                let end = stream.try_clone();
                serve(stream, &log, fault);
                // `conn` holds a copy: closing ours would not end the
                // connection.
                if let Ok(s) = end {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            })
        };
        Self {
            path,
            log,
            conn,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Waits (up to 10 s) until the backend has read `n` requests: a
    /// request without a reply (`SET_PROTOCOL_FEATURES` without
    /// `REPLY_ACK`) may still be on its way when the frontend returns.
    pub fn wait_for_requests(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.log.lock().unwrap().requests.len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Closes the connection from the backend's side (as a killed
    /// virtiofsd would).
    pub fn disconnect(&self) {
        if let Some(c) = self.conn.lock().unwrap().take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Writes bytes the frontend did not ask for.
    pub fn write_unasked(&self, bytes: &[u8]) {
        if let Some(c) = self.conn.lock().unwrap().as_mut() {
            c.write_all(bytes).unwrap();
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the server thread (the connection ended).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one message: header fields, body and attached files. `None` at
/// end of file.
fn read_message(sock: &mut UnixStream) -> Option<(u32, u32, Vec<u8>, Vec<File>)> {
    let mut hdr = [0u8; 12];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut files = Vec::new();
    let n = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .ok()?;
        for c in msg.cmsgs().ok()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these descriptors in
                // this process for us; nothing else owns them.
                files.extend(fds.into_iter().map(|fd| unsafe { File::from_raw_fd(fd) }));
            }
        }
        msg.bytes
    };
    if n == 0 {
        return None;
    }
    if n < 12 {
        sock.read_exact(&mut hdr[n..]).ok()?;
    }
    let word = |i: usize| u32::from_le_bytes(hdr[4 * i..4 * i + 4].try_into().unwrap());
    let (request, flags, size) = (word(0), word(1), word(2));
    let mut body = vec![0u8; size as usize];
    sock.read_exact(&mut body).ok()?;
    Some((request, flags, body, files))
}

fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    for w in [request, flags, size] {
        h.extend_from_slice(&w.to_le_bytes());
    }
    h
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The reply body of `request`, if it has one besides an acknowledgement.
fn reply_body(request: u32, body: &[u8]) -> Option<Vec<u8>> {
    match request {
        code::GET_FEATURES => Some(BACKEND_FEATURES.to_le_bytes().to_vec()),
        code::GET_PROTOCOL_FEATURES => Some(BACKEND_PROTOCOL_FEATURES.to_le_bytes().to_vec()),
        code::GET_VRING_BASE => {
            let mut b = body.get(..4).unwrap_or(&[0; 4]).to_vec();
            b.extend_from_slice(&0u32.to_le_bytes());
            Some(b)
        }
        _ => None,
    }
}

fn record(log: &Mutex<Log>, request: u32, body: &[u8], mut files: Vec<File>) {
    let mut log = log.lock().unwrap();
    log.requests.push(request);
    match request {
        code::SET_FEATURES => log.features = Some(u64_at(body, 0)),
        code::SET_PROTOCOL_FEATURES => log.protocol_features = Some(u64_at(body, 0)),
        code::SET_MEM_TABLE => {
            let n = u32_at(body, 0) as usize;
            for i in 0..n {
                let o = 8 + 32 * i;
                log.regions.push((
                    u64_at(body, o),
                    u64_at(body, o + 8),
                    u64_at(body, o + 16),
                    u64_at(body, o + 24),
                ));
            }
            log.region_files.append(&mut files);
        }
        code::SET_VRING_NUM => log.vring_nums.push((u32_at(body, 0), u32_at(body, 4))),
        code::SET_VRING_ADDR => log.vring_addrs.push((
            u32_at(body, 0),
            u64_at(body, 8),
            u64_at(body, 16),
            u64_at(body, 24),
        )),
        code::SET_VRING_KICK | code::SET_VRING_CALL => {
            let idx = (u64_at(body, 0) & 0xff) as u32;
            if let Some(f) = files.pop() {
                if request == code::SET_VRING_KICK {
                    log.kicks.push((idx, f));
                } else {
                    log.calls.push((idx, f));
                }
            }
        }
        code::SET_VRING_ENABLE => log.enables.push((u32_at(body, 0), u32_at(body, 4))),
        _ => {}
    }
}

fn serve(mut sock: UnixStream, log: &Mutex<Log>, fault: Option<(usize, Fault)>) {
    let mut count = 0usize;
    while let Some((request, flags, body, files)) = read_message(&mut sock) {
        count += 1;
        record(log, request, &body, files);
        let answer = reply_body(request, &body)
            .or_else(|| (flags & NEED_REPLY != 0).then(|| 0u64.to_le_bytes().to_vec()));
        let mut out = match fault {
            Some((n, f)) if n == count => match f {
                Fault::Close => return,
                Fault::Hang => {
                    // Wait for the frontend to give up.
                    let mut b = [0u8; 64];
                    while matches!(sock.read(&mut b), Ok(n) if n > 0) {}
                    return;
                }
                Fault::Garbage => vec![0xff; 20],
                Fault::WrongRequest => {
                    let mut m = header(request + 1, VERSION | REPLY, 8);
                    m.extend_from_slice(&0u64.to_le_bytes());
                    m
                }
                Fault::BadVersion => {
                    let mut m = header(request, 0x2 | REPLY, 8);
                    m.extend_from_slice(&0u64.to_le_bytes());
                    m
                }
                Fault::HugeSize => header(request, VERSION | REPLY, u32::MAX),
                Fault::Truncated => {
                    let _ = sock.write_all(&header(request, VERSION | REPLY, 8));
                    return;
                }
                Fault::Nack => {
                    let mut m = header(request, VERSION | REPLY, 8);
                    m.extend_from_slice(&1u64.to_le_bytes());
                    m
                }
                Fault::StrayFd => {
                    let body = answer.unwrap_or_else(|| 0u64.to_le_bytes().to_vec());
                    let mut m = header(request, VERSION | REPLY, body.len() as u32);
                    m.extend_from_slice(&body);
                    let fds = [sock.as_raw_fd()];
                    let cmsg = [ControlMessage::ScmRights(&fds)];
                    let _ = sendmsg::<()>(
                        sock.as_raw_fd(),
                        &[IoSlice::new(&m)],
                        &cmsg,
                        MsgFlags::empty(),
                        None,
                    );
                    continue;
                }
            },
            _ => match answer {
                Some(body) => {
                    let mut m = header(request, VERSION | REPLY, body.len() as u32);
                    m.extend_from_slice(&body);
                    m
                }
                None => continue,
            },
        };
        if sock.write_all(&out).is_err() {
            return;
        }
        out.clear();
    }
}

/// Reads `len` bytes at `offset` of a region file received by the
/// backend (what a backend mapping the memfd would see).
pub fn read_region(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, offset).unwrap();
    b
}
