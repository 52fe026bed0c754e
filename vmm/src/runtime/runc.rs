//! The `process` runtime type: capsa hands the call to runc (the real one,
//! `$CAPSA_RUNC` or `runc` in `PATH`) with the same arguments and a root of
//! its own, `<capsa root>/.runc`, and keeps a `state.json` of its own so that
//! `capsa list` shows the container (RUNTIME `process`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{Result, RuntimeError};

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

    /// `runc state ID` as JSON.
    pub fn state(&self, id: &str) -> Result<Value> {
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

/// `OsString`s from string slices.
pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(items: I) -> Vec<OsString> {
    items.into_iter().map(Into::into).collect()
}
