//! `capsa exec`: runc's `exec`.

use std::path::PathBuf;

use capsa_vmm::runtime::backend::ExecOptions;

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

/// Runs `exec`; returns the process's status unless detached.
pub fn run(g: &GlobalArgs, args: ExecArgs) -> anyhow::Result<u8> {
    let opts = ExecOptions {
        process: args.process,
        tty: args.tty,
        detach: args.detach,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        cwd: args.cwd,
        env: args.env,
        args: args.args,
    };
    Ok(g.runtime().exec(&args.id, &opts)?)
}
