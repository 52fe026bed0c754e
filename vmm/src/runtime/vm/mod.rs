//! The `vm` runtime type: each container in a micro-VM of its own, run by
//! its own VMM process ([`super::vmm_process`]) in a jail
//! ([`super::jail`]).
//!
//! - [`create`]: `create`, step by step.

pub mod create;
