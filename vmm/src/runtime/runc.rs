//! The `process` runtime type: capsa hands the call to runc (the real one,
//! `$CAPSA_RUNC` or `runc` in `PATH`) with the same arguments and a root of
//! its own, `<capsa root>/.runc`, and keeps a `state.json` of its own so that
//! `capsa list` shows the container (RUNTIME `process`). runc keeps the
//! container's state and applies the status rules itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::backend::{Backend, CreateOptions, Created, ExecOptions, PsFormat};
use super::bundle::Bundle;
use super::state::{Container, Record, RuntimeRecord, Status};
use super::{Result, RuntimeError};

/// The part of `runc state`'s output capsa reads.
#[derive(Debug, Clone, Deserialize)]
pub struct RuncState {
    /// The container's status.
    pub status: Status,
    /// The pid of its init process (0 once stopped).
    #[serde(default)]
    pub pid: i32,
}

/// How to call runc.
#[derive(Debug, Clone)]
pub struct Runc {
    /// runc's `--root`.
    pub root: PathBuf,
    /// `--log`, passed on.
    pub log: Option<PathBuf>,
    /// `--log-format`, passed on.
    pub log_format: Option<String>,
}

impl Runc {
    /// `runc --root R [--log L --log-format F]`.
    pub fn command(&self) -> Command {
        let bin = std::env::var_os("CAPSA_RUNC").unwrap_or_else(|| "runc".into());
        let mut cmd = Command::new(bin);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = &self.log {
            cmd.arg("--log").arg(log);
        }
        if let Some(f) = &self.log_format {
            cmd.arg("--log-format").arg(f);
        }
        cmd
    }

    /// Runs `runc ... ARGS` with the caller's stdio; returns its exit code
    /// (128+N when killed by signal N).
    pub fn run(&self, args: &[OsString]) -> Result<i32> {
        let status =
            self.command().args(args).status().map_err(|e| {
                RuntimeError::io("cannot run runc (install it: scripts/setup.sh)", e)
            })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    /// Runs `runc ... ARGS`; an error unless it exits with 0.
    pub fn run_ok(&self, a: &[OsString]) -> Result<()> {
        match self.run(a)? {
            0 => Ok(()),
            code => Err(RuntimeError::Failed(format!(
                "runc {} exited with {code}",
                a.first()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))),
        }
    }

    /// `runc state ID`.
    pub fn state(&self, id: &str) -> Result<RuncState> {
        let out = self
            .command()
            .args(["state", id])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| RuntimeError::io("cannot run runc", e))?;
        if !out.status.success() {
            return Err(RuntimeError::Failed(format!(
                "runc state {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| RuntimeError::Failed(format!("runc state {id}: bad JSON: {e}")))
    }
}

/// Waits for `pid`, a process this process adopted as a child subreaper;
/// returns its status (255 when it cannot be waited for).
fn wait_adopted(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

impl ExecOptions {
    /// The same `exec` for runc.
    fn runc_args(&self, id: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["exec".into()];
        let mut opt = |flag: &str, v: Option<OsString>| {
            if let Some(v) = v {
                a.push(flag.into());
                a.push(v);
            }
        };
        opt("--process", self.process.clone().map(Into::into));
        opt("--pid-file", self.pid_file.clone().map(Into::into));
        opt(
            "--console-socket",
            self.console_socket.clone().map(Into::into),
        );
        opt("--cwd", self.cwd.clone().map(Into::into));
        for e in &self.env {
            a.push("--env".into());
            a.push(e.into());
        }
        if self.tty {
            a.push("--tty".into());
        }
        if self.detach {
            a.push("--detach".into());
        }
        a.push(id.into());
        a.extend(self.args.iter().map(Into::into));
        a
    }
}

impl Backend for Runc {
    fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        dir: &Path,
        opts: &CreateOptions,
    ) -> Result<Created> {
        let container = Container {
            dir: dir.to_owned(),
            record: Record::new(id, bundle, RuntimeRecord::Process),
        };
        container.save()?;
        let mut a = args(["create", "--bundle"]);
        a.push(bundle.dir.clone().into());
        if let Some(p) = &opts.pid_file {
            a.push("--pid-file".into());
            a.push(std::path::absolute(p).unwrap_or(p.clone()).into());
        }
        if let Some(s) = &opts.console_socket {
            a.push("--console-socket".into());
            a.push(s.into());
        }
        a.push(id.into());
        self.run_ok(&a)?;
        Ok(Created { child: None })
    }

    fn start(&self, c: &Container) -> Result<()> {
        self.run_ok(&args(["start", &c.record.id]))
    }

    fn status(&self, c: &Container) -> (Status, Option<i32>) {
        match self.state(&c.record.id) {
            Ok(s) => (s.status, Some(s.pid).filter(|p| *p > 0)),
            Err(_) => (Status::Stopped, None),
        }
    }

    fn kill(&self, c: &Container, signal: i32, all: bool) -> Result<()> {
        let mut a = args(["kill"]);
        if all {
            a.push("--all".into());
        }
        a.push(c.record.id.clone().into());
        a.push(signal.to_string().into());
        self.run_ok(&a)
    }

    fn delete(&self, c: &Container, force: bool) -> Result<()> {
        let mut a = args(["delete"]);
        if force {
            a.push("--force".into());
        }
        a.push(c.record.id.clone().into());
        self.run_ok(&a)
    }

    /// runc prints the table itself.
    fn ps(&self, c: &Container, format: PsFormat) -> Result<String> {
        let format = match format {
            PsFormat::Json => "json",
            PsFormat::Table => "table",
        };
        self.run_ok(&args(["ps", "--format", format, &c.record.id]))?;
        Ok(String::new())
    }

    fn pause(&self, c: &Container) -> Result<()> {
        self.run_ok(&args(["pause", &c.record.id]))
    }

    fn resume(&self, c: &Container) -> Result<()> {
        self.run_ok(&args(["resume", &c.record.id]))
    }

    fn exec(&self, c: &Container, opts: &ExecOptions) -> Result<u8> {
        Ok(self.run(&opts.runc_args(&c.record.id))? as u8)
    }

    /// runc's init of the container is this process's grandchild, which
    /// `run` adopted as a child subreaper.
    fn wait(&self, c: &Container, _created: Created) -> i32 {
        match self.state(&c.record.id) {
            Ok(s) if s.pid > 0 => wait_adopted(s.pid),
            _ => 255,
        }
    }
}

/// `OsString`s from string slices.
pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(items: I) -> Vec<OsString> {
    items.into_iter().map(Into::into).collect()
}
