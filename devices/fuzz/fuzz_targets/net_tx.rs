//! virtio-net TX chain parsing and header checks, then RX delivery, over
//! arbitrary guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_devices::virtio::fuzzing::net_tx(data);
});
