//! virtio-mmio register sequences (reset, re-activation, bad queue
//! setup, config space at any offset and width) in front of each device.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capsa_devices::virtio::fuzzing::mmio::mmio_registers(data);
});
