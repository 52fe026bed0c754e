//! `capsa exec`: runc's `exec`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use capsa_vmm::runtime::spawn::{self, Ready};
use capsa_vmm::runtime::state::{write_atomic, RuntimeType};
use capsa_vmm::runtime::{exec, vm_spec};

use super::GlobalArgs;

/// Flags of `exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The process as OCI `process` JSON (instead of ARGS).
    #[arg(long, short, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Allocate a pty.
    #[arg(long, short)]
    pub tty: bool,
    /// Return once the process started; a helper process relays its stdio
    /// and exits with its status.
    #[arg(long, short)]
    pub detach: bool,
    /// Write the pid of the process that stands for the exec'd one.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the master of the process's pty.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable (KEY=VALUE), repeatable.
    #[arg(long, short, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Accepted and ignored (runc's).
    #[arg(long, hide = true)]
    pub no_new_privs: bool,
    /// Accepted and ignored (runc's).
    #[arg(long, hide = true, value_name = "N")]
    pub preserve_fds: Option<u32>,
    /// The container id.
    pub id: String,
    /// The command and its arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl ExecArgs {
    fn runc_args(&self) -> Vec<OsString> {
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
        a.push(self.id.clone().into());
        a.extend(self.args.iter().map(Into::into));
        a
    }
}

/// Runs `exec`; returns the process's status unless detached.
pub fn run(g: &GlobalArgs, args: ExecArgs) -> anyhow::Result<u8> {
    let rt = g.runtime();
    let c = rt.exec_target(&args.id)?;
    if c.record.runtime.kind() == RuntimeType::Process {
        return Ok(rt.runc.run(&args.runc_args())? as u8);
    }
    let mut process = match &args.process {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--process {}", file.display()))?;
            let de = &mut serde_json::Deserializer::from_str(&text);
            let p: oci_spec::runtime::Process =
                serde_path_to_error::deserialize(de).map_err(|e| {
                    anyhow::anyhow!("--process {}: {}: {}", file.display(), e.path(), e.inner())
                })?;
            vm_spec::process_spec(&p, (p.user().uid(), p.user().gid()))
        }
        None => {
            if args.args.is_empty() {
                anyhow::bail!("exec: give the command (ARGS) or --process FILE");
            }
            let mut p = rt.exec_base(&c)?;
            p.args = args.args.clone();
            p
        }
    };
    if let Some(cwd) = &args.cwd {
        process.cwd = cwd.clone();
    }
    process.env.extend(args.env.iter().cloned());
    process.terminal |= args.tty;
    if process.args.is_empty() {
        anyhow::bail!("exec: process.args must not be empty");
    }
    if args.detach {
        let file = c.dir.join(format!("exec-{}.json", std::process::id()));
        write_atomic(&file, &serde_json::to_vec(&process)?)?;
        let mut helper: Vec<OsString> = vec![
            "--root".into(),
            g.root.clone().into(),
            "exec-process".into(),
            "--process-file".into(),
            file.clone().into(),
        ];
        if let Some(s) = &args.console_socket {
            helper.push("--console-socket".into());
            helper.push(std::path::absolute(s)?.into());
        }
        helper.push(args.id.clone().into());
        let result = spawn::spawn(&helper, true)?.wait_ready(Duration::from_secs(60));
        let _ = std::fs::remove_file(&file);
        let (child, _): (_, exec::ExecReady) = result?;
        if let Some(p) = &args.pid_file {
            write_atomic(p, child.id().to_string().as_bytes())?;
        }
        return Ok(0);
    }
    if let Some(p) = &args.pid_file {
        write_atomic(p, std::process::id().to_string().as_bytes())?;
    }
    let mut ready = Ready::from_env();
    let status = exec::run(&c, process, args.console_socket.as_deref(), &mut ready)?;
    Ok((status & 0xff) as u8)
}
