//! `capsa kill`: runc's `kill`.

use capsa_vmm::runtime::signal;

use super::GlobalArgs;

/// Flags of `kill`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(long, short)]
    pub all: bool,
    /// The container id.
    pub id: String,
    /// Number or name (`9`, `KILL`, `SIGKILL`).
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

/// Runs `kill`.
pub fn run(g: &GlobalArgs, args: KillArgs) -> anyhow::Result<u8> {
    let sig = signal::parse(&args.signal).map_err(anyhow::Error::msg)?;
    g.runtime().kill(&args.id, sig, args.all)?;
    Ok(0)
}
