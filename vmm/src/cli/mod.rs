//! Command-line front end: global flags, logging, and one module per
//! command.

mod vmm;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for an error before or while setting up (bad flags, bad
/// configuration, a VM that could not be created).
pub const EXIT_ERROR: u8 = 1;
/// Exit code when the guest ended abnormally (triple fault, KVM emulation
/// failure, an unexpected exit).
pub const EXIT_GUEST_FAILURE: u8 = 3;

/// capsa: containers in micro-VMs.
#[derive(Debug, Parser)]
#[command(name = "capsa", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (as runc names them).
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Write the log to this file instead of stderr.
    #[arg(long, global = true, value_name = "PATH")]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log at debug level.
    #[arg(long, global = true)]
    pub debug: bool,
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a micro-VM from a kernel (and initramfs) and run it until the
    /// guest resets or fails.
    Vmm(vmm::VmmArgs),
}

/// Sets up `tracing` from the global flags. `CAPSA_LOG` (an env-filter
/// directive such as `debug` or `capsa_vmm=trace`) overrides the level.
pub fn init_logging(args: &GlobalArgs) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let default = if args.debug { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_env("CAPSA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (&args.log, args.log_format) {
        (Some(path), format) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--log: cannot open {}", path.display()))?;
            let b = builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false);
            match format {
                LogFormat::Json => b.json().try_init(),
                LogFormat::Text => b.try_init(),
            }
        }
        (None, LogFormat::Json) => builder.with_writer(std::io::stderr).json().try_init(),
        (None, LogFormat::Text) => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli, start: Instant) -> anyhow::Result<u8> {
    match cli.command {
        Command::Vmm(args) => vmm::run(args, start),
    }
}
