//! virtio-vsock TX parsing, the muxer and RX delivery over arbitrary guest
//! memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_devices::virtio::fuzzing::vsock_packets(data);
});
