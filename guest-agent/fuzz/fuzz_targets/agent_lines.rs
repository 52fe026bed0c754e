//! The agent's handling of what a host sends on the control connection:
//! line framing, request parsing and dispatch to a mock service.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_agent::fuzzing::agent_lines(data);
});
