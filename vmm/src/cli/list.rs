//! `capsa list`: NAME STATE RUNTIME PID CREATED, or JSON.

use serde_json::json;

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
        for (r, _, _) in &all {
            println!("{}", r.id);
        }
        return Ok(0);
    }
    if args.format == "json" {
        let v: Vec<_> = all
            .iter()
            .map(|(r, status, pid)| {
                json!({
                    "ociVersion": "1.0.2", "id": r.id, "pid": pid, "status": status,
                    "bundle": r.bundle, "rootfs": r.rootfs, "created": r.created,
                    "annotations": r.annotations, "owner": "root", "runtime": r.runtime.kind(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    let width = all
        .iter()
        .map(|(r, _, _)| r.id.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:width$}  {:8}  {:7}  {:8}  CREATED",
        "NAME", "STATE", "RUNTIME", "PID"
    );
    for (r, status, pid) in all {
        println!(
            "{:width$}  {:8}  {:7}  {:8}  {}",
            r.id,
            status.to_string(),
            r.runtime.kind().to_string(),
            pid,
            r.created
        );
    }
    Ok(0)
}
