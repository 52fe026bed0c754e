//! The `capsa` binary. Exit codes are documented in docs/cli.md.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // The boot timer and the setup-time log line measure from here.
    let start = Instant::now();
    let args = cli::Cli::parse();
    if let Err(e) = cli::init_logging(&args.global) {
        eprintln!("capsa: {e:#}");
        return ExitCode::from(cli::EXIT_ERROR);
    }
    let logs_to_file = args.global.log.is_some();
    match cli::run(args, start) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Engines read the error from the --log file (runc writes it
            // there); without one, the log is stderr already.
            if logs_to_file {
                tracing::error!("{e:#}");
            }
            eprintln!("capsa: {e:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
