//! The vsock backend's connection state machine: guest packets and a
//! real host peer (connect, credit, shutdown, reset) driven by the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_devices::virtio::fuzzing::vsock_conn::vsock_conn(data);
});
