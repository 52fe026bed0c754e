//! Hidden subcommands: the helper processes `capsa` starts itself.

use std::path::PathBuf;
use std::time::Instant;

use capsa_vmm::runtime::spawn::Ready;
use capsa_vmm::runtime::vmm_process;

use super::GlobalArgs;

/// Flags of `vmm-process`.
#[derive(Debug, clap::Args)]
pub struct VmmProcessArgs {
    /// The container id (shown in `ps`; the inputs name the container).
    pub id: String,
    /// The directory with the inputs (`vmm-inputs.json`): `/` in the jail,
    /// the state directory when unjailed.
    #[arg(long)]
    pub state_dir: PathBuf,
}

/// The per-container VMM process.
pub fn vmm_process(args: VmmProcessArgs, start: Instant) -> anyhow::Result<u8> {
    Ok(vmm_process::run(&args.state_dir, start))
}

/// Flags of `exec-process`.
#[derive(Debug, clap::Args)]
pub struct ExecProcessArgs {
    /// The agent's process spec as JSON (removed once read).
    #[arg(long)]
    pub process_file: PathBuf,
    /// Unix socket for the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// The container id.
    pub id: String,
}

/// The host side of a detached exec'd process.
pub fn exec_process(g: &GlobalArgs, args: ExecProcessArgs) -> anyhow::Result<u8> {
    let mut ready = Ready::from_env();
    let result = g.runtime().serve_detached_exec(
        &args.id,
        &args.process_file,
        args.console_socket.as_deref(),
        &mut ready,
    );
    match result {
        Ok(status) => Ok((status & 0xff) as u8),
        Err(e) => {
            ready.fail(&e.to_string());
            Err(e.into())
        }
    }
}

/// Flags of `build-template`.
#[derive(Debug, clap::Args)]
pub struct BuildTemplateArgs {
    /// vCPUs of the containers that will start from it.
    #[arg(long, default_value_t = capsa_vmm::config::DEFAULT_VCPUS)]
    pub vcpus: u8,
    /// Guest RAM of those containers, MiB: 512 without a memory limit, a
    /// limit of L MiB gives L + 32 + L/64 (docs/runtime.md, "The machine").
    #[arg(long, default_value_t = capsa_vmm::runtime::vm_spec::DEFAULT_CONTAINER_MEMORY_MIB)]
    pub memory_mib: u32,
    /// Whether the guest runs with the PVM host workarounds (default: as
    /// this host needs).
    #[arg(long, value_parser = ["on", "off"])]
    pub host_quirks: Option<String>,
    /// Give up at once when another builder is at work (the default is to
    /// wait for it).
    #[arg(long)]
    pub no_wait: bool,
    /// First remove the templates of other builds (another capsa binary,
    /// kernel or agent: any shape) and what builders left behind, except
    /// those in use; prints each removed directory on stderr.
    #[arg(long)]
    pub prune: bool,
}

/// Builds the VM template of one shape (docs/runtime.md, "Warm starts").
pub fn build_template(args: BuildTemplateArgs) -> anyhow::Result<u8> {
    use capsa_vmm::runtime::template::{self, Shape, Shipped};
    let shipped = Shipped::locate()?;
    let shape = Shape {
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        host_quirks: match args.host_quirks.as_deref() {
            Some(v) => v == "on",
            None => capsa_vmm::pvm::is_pvm_host(),
        },
    };
    if args.prune {
        for dir in template::prune(&shipped)? {
            eprintln!("removed {}", dir.display());
        }
    }
    match template::build(&shipped, shape, !args.no_wait)? {
        Some(dir) => println!("{}", dir.display()),
        None => println!("another builder is at work on it"),
    }
    Ok(0)
}
