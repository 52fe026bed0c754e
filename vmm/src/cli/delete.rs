//! `capsa delete`: runc's `delete`.

use super::GlobalArgs;

/// Flags of `delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kill the container first if it runs.
    #[arg(long, short)]
    pub force: bool,
    /// The container id.
    pub id: String,
}

/// Runs `delete`.
pub fn run(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<u8> {
    g.runtime().delete(&args.id, args.force)?;
    Ok(0)
}
