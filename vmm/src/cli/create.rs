//! `capsa create`: runc's `create`.

use std::path::PathBuf;

use capsa_vmm::runtime::backend::CreateOptions;

use super::GlobalArgs;

/// Flags of `create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The OCI bundle directory (with config.json).
    #[arg(long, short, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// Write the pid of the VMM process (the container's stand-in) here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the master of the container's pty.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Accepted and ignored (runc's).
    #[arg(long, hide = true)]
    pub no_pivot: bool,
    /// Accepted and ignored (runc's).
    #[arg(long, hide = true)]
    pub no_new_keyring: bool,
    /// Accepted and ignored (runc's).
    #[arg(long, hide = true, value_name = "N")]
    pub preserve_fds: Option<u32>,
    /// The container id.
    pub id: String,
}

/// Runs `create`.
pub fn run(g: &GlobalArgs, args: CreateArgs) -> anyhow::Result<u8> {
    let opts = CreateOptions {
        bundle: args.bundle,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        foreground: false,
        systemd_cgroup: g.systemd_cgroup,
    };
    g.runtime().create(&args.id, &opts)?;
    Ok(0)
}
