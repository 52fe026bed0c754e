//! `capsa run`: create, start, wait; exits with the container's status and
//! removes it (as `runc run`).

use std::path::PathBuf;

use capsa_vmm::runtime::backend::CreateOptions;

use super::GlobalArgs;

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The OCI bundle directory (with config.json).
    #[arg(long, short, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// Write the pid of the VMM process here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the master of the container's pty.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Return once started (the container keeps running; `delete` it).
    #[arg(long, short)]
    pub detach: bool,
    /// Keep the container's state after it exited.
    #[arg(long)]
    pub keep: bool,
    /// The container id.
    pub id: String,
}

/// Runs `run`.
pub fn run(g: &GlobalArgs, args: RunArgs) -> anyhow::Result<u8> {
    let rt = g.runtime();
    // runc's init of a `process` container is our grandchild: adopt it to
    // wait for it.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let opts = CreateOptions {
        bundle: args.bundle,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        foreground: !args.detach,
        systemd_cgroup: g.systemd_cgroup,
    };
    let created = rt.create(&args.id, &opts)?;
    if let Err(e) = rt.start(&args.id) {
        let _ = rt.delete(&args.id, true);
        return Err(e.into());
    }
    if args.detach {
        return Ok(0);
    }
    let code = rt.wait(&args.id, created)?;
    if !args.keep {
        let _ = rt.delete(&args.id, true);
    }
    Ok((code & 0xff) as u8)
}
