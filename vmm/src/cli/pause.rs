//! `capsa pause` and `capsa resume`: runc's, for `process` containers; a
//! clear error for `vm` containers.

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
