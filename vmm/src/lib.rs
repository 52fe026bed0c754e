//! capsa: a micro-VM monitor for containers.
//!
//! This crate holds the machine (KVM VM, guest memory, vCPUs, boot), the
//! device manager and event loop, and the front ends (`capsa vmm`, and the
//! OCI runtime commands). See `../shared/DESIGN.md` in the project for the
//! architecture.
#![deny(missing_docs)]

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod guest_agent;
pub mod install;
pub mod logger;
pub mod pvm;
pub mod runtime;
pub mod vmm;
pub mod vstate;
