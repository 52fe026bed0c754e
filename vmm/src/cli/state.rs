//! `capsa state`: the OCI state as JSON.

use super::GlobalArgs;

/// Flags of `state`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// The container id.
    pub id: String,
}

/// Runs `state`.
pub fn run(g: &GlobalArgs, args: StateArgs) -> anyhow::Result<u8> {
    let state = g.runtime().state(&args.id)?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(0)
}
