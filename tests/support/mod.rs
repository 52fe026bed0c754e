//! Fixtures of one feature area each.

pub mod agent;
pub mod devices;
pub mod engines;
pub mod runtime;
