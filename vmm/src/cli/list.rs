//! `capsa list`: NAME STATE RUNTIME PID CREATED, or JSON.

use super::GlobalArgs;

/// Flags of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// `table` or `json`.
    #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Print only the ids.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `list`.
pub fn run(g: &GlobalArgs, args: ListArgs) -> anyhow::Result<u8> {
    let all = g.runtime().list();
    if args.quiet {
        for c in &all {
            println!("{}", c.id);
        }
        return Ok(0);
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string(&all)?);
        return Ok(0);
    }
    let width = all.iter().map(|c| c.id.len()).max().unwrap_or(0).max(4);
    println!(
        "{:width$}  {:8}  {:7}  {:8}  CREATED",
        "NAME", "STATE", "RUNTIME", "PID"
    );
    for c in all {
        println!(
            "{:width$}  {:8}  {:7}  {:8}  {}",
            c.id,
            c.status.to_string(),
            c.runtime.to_string(),
            c.pid,
            c.created
        );
    }
    Ok(0)
}
