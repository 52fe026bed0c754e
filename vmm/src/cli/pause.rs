//! `capsa pause` and `capsa resume`: runc's for `process` containers; for
//! `vm` containers the guest agent freezes/thaws the container's processes
//! (cgroup v2 freezer in the guest). Exit 1 when the container is not
//! running (`pause`) or not paused (`resume`).

use super::GlobalArgs;

/// Flags of `pause`/`resume`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The container id.
    pub id: String,
}

/// Runs `pause`.
pub fn pause(g: &GlobalArgs, args: PauseArgs) -> anyhow::Result<u8> {
    g.runtime().pause(&args.id)?;
    Ok(0)
}

/// Runs `resume`.
pub fn resume(g: &GlobalArgs, args: PauseArgs) -> anyhow::Result<u8> {
    g.runtime().resume(&args.id)?;
    Ok(0)
}
