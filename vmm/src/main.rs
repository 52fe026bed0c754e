//! The `capsa` binary. Exit codes are documented in docs/cli.md.

// No function over 80 lines (clippy.toml).
#![warn(clippy::too_many_lines)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // The boot timer and the setup-time log line measure from here.
    let start = Instant::now();
    let args = cli::Cli::parse();
    if let Err(e) = cli::init_logging(&args.global) {
        eprintln!("capsa: {}", render(&e));
        return ExitCode::from(cli::EXIT_ERROR);
    }
    let logs_to_file = args.global.log.is_some();
    match cli::run(args, start) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Engines read the error from the --log file (runc writes it
            // there); without one, the log is stderr already.
            let message = render(&e);
            if logs_to_file {
                tracing::error!("{message}");
            }
            eprintln!("capsa: {message}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message already holds (capsa's errors name their cause themselves, e.g.
/// "kernel: cannot open PATH: No such file or directory").
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
