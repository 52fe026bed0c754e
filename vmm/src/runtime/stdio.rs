//! Relaying the host side's stdio to a guest process's streams (agent
//! protocol § Streams): the host's stdin to the `stdin` stream (then
//! `shutdown(SHUT_WR)`, which gives the process EOF), the `stdout` and
//! `stderr` streams to the host's stdout and stderr until EOF; or the `tty`
//! stream to a pty ([`super::console`]) or to the host's stdin/stdout.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capsa_agent::client::{attach_stream, Client, Connector, HybridVsockConnector};
use capsa_agent::protocol::{ConsoleSize, ProcessId, StreamTokens};

use super::{console, Result, RuntimeError};

/// Copies until EOF or an error on either side; returns the bytes copied.
pub fn copy(mut from: impl Read, mut to: impl Write) -> u64 {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
            break;
        }
        total += n as u64;
    }
    total
}

/// A duplicate of one of this process's stdio fds as a `File`.
pub fn dup_stdio(fd: impl AsFd) -> Result<File> {
    nix::unistd::dup(fd)
        .map(File::from)
        .map_err(|e| RuntimeError::io("dup stdio", e.into()))
}

/// The relay threads of one process.
#[derive(Default)]
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
}

impl Relays {
    /// Adds an output thread (the caller waits for its EOF).
    pub fn push_output(&mut self, t: JoinHandle<()>) {
        self.outputs.push(t);
    }

    /// Waits until every output stream reached EOF, at most `timeout`.
    pub fn wait_outputs(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for t in self.outputs {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Attaches the pipe streams of a process to `stdin`/`stdout`/`stderr`.
pub fn attach_pipes(
    connector: &dyn Connector,
    tokens: &StreamTokens,
    stdin: Option<File>,
    stdout: File,
    stderr: File,
) -> Result<Relays> {
    let mut relays = Relays::default();
    if let Some(token) = &tokens.stdin {
        let stream = attach_stream(connector, token)?;
        match stdin {
            Some(input) => {
                std::thread::spawn(move || {
                    copy(input, &stream);
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
            None => {
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
    }
    for (token, out) in [(&tokens.stdout, stdout), (&tokens.stderr, stderr)] {
        if let Some(token) = token {
            let stream: UnixStream = attach_stream(connector, token)?;
            relays.push_output(std::thread::spawn(move || {
                copy(&stream, out);
            }));
        }
    }
    Ok(relays)
}

/// Where a process's terminal goes.
pub enum Console<'a> {
    /// No pty: the terminal stream is relayed to this process's
    /// stdin/stdout.
    Inherit,
    /// Make a pty and send its master to this `--console-socket`.
    Socket(&'a Path),
    /// Relay this pty slave (its master was sent already).
    Slave(OwnedFd),
}

/// Relays one guest process's streams (shared by the VMM process and
/// `exec`): its tty stream to `console`, or its pipes to this process's
/// stdio. `process_id` is the agent's id of the process, for `resize`.
pub fn attach_process(
    connector: &HybridVsockConnector,
    client: &Arc<Client>,
    streams: &StreamTokens,
    console_size: Option<ConsoleSize>,
    console: Console<'_>,
    process_id: ProcessId,
) -> Result<Relays> {
    let Some(token) = &streams.tty else {
        return attach_pipes(
            connector,
            streams,
            Some(dup_stdio(std::io::stdin())?),
            dup_stdio(std::io::stdout())?,
            dup_stdio(std::io::stderr())?,
        );
    };
    let tty = attach_stream(connector, token)?;
    let slave = match console {
        Console::Socket(socket) => {
            let pty = console::open(console_size)?;
            console::send_master(socket, &pty.master)?;
            Some(pty.slave)
        }
        Console::Slave(slave) => Some(slave),
        Console::Inherit => None,
    };
    if let Some(slave) = slave {
        let c = client.clone();
        return console::relay(slave, tty, move |rows, cols| {
            if let Err(e) = c.resize(process_id, rows, cols) {
                tracing::debug!("resize: {e}");
            }
        });
    }
    let input = dup_stdio(std::io::stdin())?;
    let output = dup_stdio(std::io::stdout())?;
    let to_guest = tty
        .try_clone()
        .map_err(|e| RuntimeError::io("dup tty stream", e))?;
    std::thread::spawn(move || {
        copy(input, &to_guest);
    });
    let mut relays = Relays::default();
    relays.push_output(std::thread::spawn(move || {
        copy(&tty, output);
    }));
    Ok(relays)
}
