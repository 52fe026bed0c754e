//! `capsa start`: runc's `start`.

use super::GlobalArgs;

/// Flags of `start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The container id.
    pub id: String,
}

/// Runs `start`.
pub fn run(g: &GlobalArgs, args: StartArgs) -> anyhow::Result<u8> {
    g.runtime().start(&args.id)?;
    Ok(0)
}
