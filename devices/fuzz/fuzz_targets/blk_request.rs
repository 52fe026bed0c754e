//! virtio-blk request parsing and execution over arbitrary guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_devices::virtio::fuzzing::blk_request(data);
});
