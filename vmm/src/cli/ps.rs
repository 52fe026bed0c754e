//! `capsa ps`: the container's processes.

use capsa_vmm::runtime::backend::PsFormat;

use super::GlobalArgs;

/// Flags of `ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// `table` or `json` (an array of pids).
    #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// The container id.
    pub id: String,
    /// Accepted and ignored (runc passes them to ps(1)).
    #[arg(trailing_var_arg = true, hide = true)]
    pub ps_args: Vec<String>,
}

/// Runs `ps`.
pub fn run(g: &GlobalArgs, args: PsArgs) -> anyhow::Result<u8> {
    let format = if args.format == "json" {
        PsFormat::Json
    } else {
        PsFormat::Table
    };
    print!("{}", g.runtime().ps(&args.id, format)?);
    Ok(0)
}
