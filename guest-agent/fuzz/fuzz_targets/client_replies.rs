//! The host client's handling of what a (hostile) agent sends: replies to
//! calls in flight, notifications, garbage; the notification bound holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_agent::fuzzing::client_replies(data);
});
