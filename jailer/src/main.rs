//! `capsa-jailer`: runs one capsa VMM process in a sandbox, modelled on
//! Firecracker's jailer. It assumes the VMM may be compromised: the VMM
//! runs as an unprivileged uid/gid in a `pivot_root` jail holding only its
//! binary, a few device nodes and the files its caller placed there, in
//! its own mount (and optionally pid and network) namespace, in its own
//! cgroups, with resource limits and a seccomp deny list.
//!
//! Usage, steps, the jail's layout and cleanup: docs/jailer.md.
//!
//! Exit status: the VMM's (128 + N when killed by signal N); 0 with
//! `--daemonize` once the VMM runs; 1 when a step fails (nothing created
//! is left behind); 2 for a command-line error.

// No function over 80 lines (clippy.toml).
#![warn(clippy::too_many_lines)]

mod cgroup;
mod chroot;
mod cleanup;
mod cli;
mod elf;
mod env;
mod fds;
mod jail;
mod namespaces;
mod privileges;
mod rlimits;
mod rollback;
mod seccomp;
mod supervisor;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Cleanup(args)) => cleanup::run(args).map(|()| 0),
        None => jail::run(cli.jail),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("capsa-jailer: error: {e:#}");
            std::process::exit(1);
        }
    }
}
