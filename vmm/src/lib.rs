//! capsa: a micro-VM monitor for containers.
//!
//! This crate holds the machine (KVM VM, guest memory, vCPUs, boot), the
//! device manager and event loop, and the front ends (`capsa vmm`, and the
//! OCI runtime commands). The map of the code is `docs/architecture.md`.
#![deny(missing_docs)]
// No function over 80 lines (clippy.toml): each does one step a reader can follow.
#![warn(clippy::too_many_lines)]

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod guest_agent;
pub mod install;
pub mod logger;
pub mod pid1;
pub mod profile;
pub mod pvm;
pub mod runtime;
pub mod seccomp;
pub mod snapshot;
pub mod vmm;
pub mod vstate;
