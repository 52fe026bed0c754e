//! Hidden subcommands: the helper processes `capsa` starts itself.

use std::path::PathBuf;
use std::time::Instant;

use capsa_vmm::runtime::spawn::Ready;
use capsa_vmm::runtime::vmm_process;

use super::GlobalArgs;

/// Flags of `vmm-process`.
#[derive(Debug, clap::Args)]
pub struct VmmProcessArgs {
    /// The container id (shown in `ps`; the inputs name the container).
    pub id: String,
    /// The directory with the inputs (`vmm-inputs.json`): `/` in the jail,
    /// the state directory when unjailed.
    #[arg(long)]
    pub state_dir: PathBuf,
}

/// The per-container VMM process.
pub fn vmm_process(args: VmmProcessArgs, start: Instant) -> anyhow::Result<u8> {
    Ok(vmm_process::run(&args.state_dir, start))
}

/// Flags of `exec-process`.
#[derive(Debug, clap::Args)]
pub struct ExecProcessArgs {
    /// The agent's process spec as JSON (removed once read).
    #[arg(long)]
    pub process_file: PathBuf,
    /// Unix socket for the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// The container id.
    pub id: String,
}

/// The host side of a detached exec'd process.
pub fn exec_process(g: &GlobalArgs, args: ExecProcessArgs) -> anyhow::Result<u8> {
    let mut ready = Ready::from_env();
    let result = g.runtime().serve_detached_exec(
        &args.id,
        &args.process_file,
        args.console_socket.as_deref(),
        &mut ready,
    );
    match result {
        Ok(status) => Ok((status & 0xff) as u8),
        Err(e) => {
            ready.fail(&e.to_string());
            Err(e.into())
        }
    }
}
