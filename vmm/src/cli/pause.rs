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

/// Runs `pause` or `resume`.
pub fn run(g: &GlobalArgs, args: PauseArgs, verb: &str) -> anyhow::Result<u8> {
    g.runtime().pause_resume(&args.id, verb)?;
    Ok(0)
}
