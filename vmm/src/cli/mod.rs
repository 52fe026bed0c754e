//! Command-line front end: global flags, logging, and one module per
//! command.

mod create;
mod delete;
mod exec;
mod internal;
mod kill;
mod list;
mod log_format;
mod pause;
mod ps;
mod run;
mod start;
mod state;
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
    /// Directory of the containers' state.
    #[arg(long, global = true, value_name = "DIR", default_value = capsa_vmm::runtime::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// `linux.cgroupsPath` is systemd's `slice:prefix:name` (runc's flag;
    /// capsa creates that unit's cgroup itself, docs/runtime.md).
    #[arg(long, global = true, hide = true)]
    pub systemd_cgroup: bool,
    /// Accepted and ignored.
    #[arg(long, global = true, hide = true, value_name = "MANAGER")]
    pub cgroup_manager: Option<String>,
    /// Accepted and ignored.
    #[arg(long, global = true, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
}

impl GlobalArgs {
    /// The runtime front end for these flags.
    pub fn runtime(&self) -> capsa_vmm::runtime::container::Runtime {
        use capsa_vmm::runtime::{runc::Runc, state::Root};
        let root = Root::new(&self.root);
        let runc = Runc {
            root: root.runc_root(),
            log: self.log.clone(),
            log_format: self.log.as_ref().map(|_| match self.log_format {
                LogFormat::Text => "text".to_string(),
                LogFormat::Json => "json".to_string(),
            }),
        };
        capsa_vmm::runtime::container::Runtime::new(root, runc)
    }
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
    /// Create a container from a bundle: boot its VM and prepare its
    /// process (which waits for `start`).
    Create(create::CreateArgs),
    /// Start the process of a created container.
    Start(start::StartArgs),
    /// Print the OCI state of a container as JSON.
    State(state::StateArgs),
    /// Send a signal to a container's process (default SIGTERM).
    Kill(kill::KillArgs),
    /// Remove a stopped container (--force: also a running one).
    Delete(delete::DeleteArgs),
    /// Run a new process in a running container.
    Exec(exec::ExecArgs),
    /// List the processes of a container.
    Ps(ps::PsArgs),
    /// List the containers.
    #[command(visible_alias = "ls")]
    List(list::ListArgs),
    /// Pause a running container (freeze its processes).
    Pause(pause::PauseArgs),
    /// Resume a paused container.
    Resume(pause::PauseArgs),
    /// Create and start a container, wait for it, and exit with its status.
    Run(run::RunArgs),
    /// Build the VM template that containers of one shape (vCPUs,
    /// memory) start from; `create` builds missing ones in the background.
    BuildTemplate(internal::BuildTemplateArgs),
    /// The per-container VMM process (started by `create`).
    #[command(hide = true)]
    VmmProcess(internal::VmmProcessArgs),
    /// A detached exec'd process's host side (started by `exec --detach`).
    #[command(hide = true)]
    ExecProcess(internal::ExecProcessArgs),
}

/// Sets up `tracing` from the global flags. `CAPSA_LOG` (an env-filter
/// directive such as `debug` or `capsa_vmm=trace`) overrides the level.
pub fn init_logging(args: &GlobalArgs) -> anyhow::Result<()> {
    use capsa_vmm::logger::{CappedWriter, PROCESS_LOG_LIMITS};
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
            // A guest can trigger the VMM's warnings again and again:
            // capped, as the console log is (capsa_vmm::logger).
            let file = CappedWriter::new(file, "the log", PROCESS_LOG_LIMITS);
            let b = builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false);
            match format {
                LogFormat::Json => b.event_format(log_format::RuncJson).try_init(),
                LogFormat::Text => b.try_init(),
            }
        }
        (None, LogFormat::Json) => builder
            .with_writer(std::io::stderr)
            .event_format(log_format::RuncJson)
            .try_init(),
        // Colours only on a terminal: engines (conmon, the containerd shim)
        // capture the runtime's stderr and show it in their own errors.
        (None, LogFormat::Text) => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli, start: Instant) -> anyhow::Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Vmm(args) => vmm::run(args, start),
        Command::Create(args) => create::run(g, args),
        Command::Start(args) => start::run(g, args),
        Command::State(args) => state::run(g, args),
        Command::Kill(args) => kill::run(g, args),
        Command::Delete(args) => delete::run(g, args),
        Command::Exec(args) => exec::run(g, args),
        Command::Ps(args) => ps::run(g, args),
        Command::List(args) => list::run(g, args),
        Command::Pause(args) => pause::pause(g, args),
        Command::Resume(args) => pause::resume(g, args),
        Command::Run(args) => run::run(g, args),
        Command::BuildTemplate(args) => internal::build_template(args),
        Command::VmmProcess(args) => internal::vmm_process(args, start),
        Command::ExecProcess(args) => internal::exec_process(g, args),
    }
}
