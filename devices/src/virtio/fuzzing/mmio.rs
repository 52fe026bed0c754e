//! Register sequences on the virtio-mmio transport ([`MmioTransport`],
//! virtio 1.2 §4.2.2) in front of a real device: status transitions in any
//! order, resets and re-activation, feature words, queue setup with any
//! size and address, notifications, config space reads and writes at any
//! offset and width — with the device serving its queues in between, as
//! the event loop would.
//!
//! Input: a device byte (`% 4`: rng, blk, net, vsock), the guest memory's
//! queues as [`super::guest`] decodes them (queues 0 to 2), then at most
//! [`MAX_OPS`] operations, each an opcode byte (`% 6`) and its arguments:
//!
//! - 0: read of `1 + byte % 8` bytes at `u16 % 0x1100`;
//! - 1: write of `1 + byte % 8` bytes (from the input) at `u16 % 0x1100`;
//! - 2: 32-bit write of a known register (`byte % 28`) with a value
//!   (`byte`: a small value, a raw `u32`, or a ring address of the layout);
//! - 3: the whole §3.1.1 driver sequence up to DRIVER_OK with the layout's
//!   queues, the feature words taken from the input;
//! - 4: the device serves its queues (the event loop's work);
//! - 5: Status 0 (reset).
//!
//! Checked after every operation: MagicValue, Version and DeviceID read
//! back unchanged.

use std::sync::{Arc, Mutex};

use super::guest::{self, Input, QSIZE};
use super::{disk, unique_socket_path};
use crate::bus::BusDevice;
use crate::virtio::block::Block;
use crate::virtio::mmio::{MmioTransport, MMIO_MAGIC_VALUE, MMIO_VERSION};
use crate::virtio::net::tap::SocketBackend;
use crate::virtio::net::{Net, NetConfig};
use crate::virtio::rng::Rng;
use crate::virtio::vsock::{Vsock, VsockDeviceConfig};
use crate::virtio::{lock, status, VirtioDevice};

/// Most operations per input.
pub const MAX_OPS: usize = 512;

/// The registers of §4.2.2 (`include/uapi/linux/virtio_mmio.h`), in the
/// order the register-write operation picks them.
const REGISTERS: [u64; 28] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b8, 0x0fc,
    0x100, 0x104,
];
const STATUS: u64 = 0x070;
const QUEUE_SEL: u64 = 0x030;

/// A device behind the transport and its event-loop work.
struct Device {
    transport: MmioTransport,
    serve: Box<dyn FnMut()>,
    device_id: u32,
    _socket: Option<std::path::PathBuf>,
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(p) = &self._socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn device(pick: u8, mem: &crate::virtio::GuestMemory) -> Option<Device> {
    fn wrap<D: VirtioDevice + 'static>(
        dev: D,
        mem: &crate::virtio::GuestMemory,
        serve: fn(&mut D),
        socket: Option<std::path::PathBuf>,
    ) -> Option<Device> {
        let dev = Arc::new(Mutex::new(dev));
        let transport = MmioTransport::new(mem.clone(), dev.clone()).ok()?;
        let device_id = lock(&dev).device_type();
        Some(Device {
            transport,
            serve: Box::new(move || {
                let mut d = lock(&dev);
                if d.is_activated() {
                    serve(&mut d);
                }
            }),
            device_id,
            _socket: socket,
        })
    }
    match pick % 4 {
        0 => wrap(Rng::new().ok()?, mem, Rng::process_queue, None),
        1 => wrap(
            Block::from_file(disk(), pick & 4 != 0, b"fuzz").ok()?,
            mem,
            Block::process_queue,
            None,
        ),
        2 => {
            let (backend, _peer) = SocketBackend::pair().ok()?;
            let net = Net::new(
                Box::new(backend),
                NetConfig {
                    mac: [0x52, 0x54, 0, 0, 0, 1],
                    mtu: 1500,
                },
            )
            .ok()?;
            wrap(
                net,
                mem,
                |n: &mut Net| {
                    n.process_tx();
                    n.process_rx();
                },
                None,
            )
        }
        _ => {
            let path = unique_socket_path("mmio");
            let vsock = Vsock::new(&VsockDeviceConfig {
                guest_cid: 3,
                uds_path: path.clone(),
            })
            .ok()?;
            wrap(
                vsock,
                mem,
                |v: &mut Vsock| {
                    v.process_tx();
                    v.process_rx();
                },
                Some(path),
            )
        }
    }
}

fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// A register value: small, raw, or an address of the layout.
fn value(input: &mut Input) -> u32 {
    match input.byte() % 4 {
        0 => u32::from(input.byte()),
        1 => input.u32(),
        2 => {
            u32::from(input.byte() % 3) * 0x1000 + [0, 0x400, 0x800][usize::from(input.byte() % 3)]
        }
        _ => 1 << (input.byte() % 32),
    }
}

/// The §3.1.1 sequence with the layout's queues; the feature words and
/// the queue count come from the input.
fn driver_sequence(t: &mut MmioTransport, input: &mut Input) {
    use status::*;
    write32(t, STATUS, 0);
    write32(t, STATUS, ACKNOWLEDGE);
    write32(t, STATUS, ACKNOWLEDGE | DRIVER);
    for sel in 0..2 {
        write32(t, 0x024, sel);
        let word = input.u32() | if sel == 1 { 1 } else { 0 };
        write32(t, 0x020, word);
    }
    write32(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let queues = 1 + u32::from(input.byte() % 3);
    for q in 0..queues {
        let base = u32::from(q as u8) * 0x1000;
        write32(t, QUEUE_SEL, q);
        write32(t, 0x038, u32::from(QSIZE));
        write32(t, 0x080, base);
        write32(t, 0x084, 0);
        write32(t, 0x090, base + 0x400);
        write32(t, 0x094, 0);
        write32(t, 0x0a0, base + 0x800);
        write32(t, 0x0a4, 0);
        write32(t, 0x044, 1);
    }
    write32(t, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/// Runs the register sequence of `data`.
pub fn mmio_registers(data: &[u8]) {
    let mut input = Input::new(data);
    let pick = input.byte();
    let mem = guest::zeroed_memory();
    let mut builder = guest::Builder::new(&mem);
    for q in 0..3 {
        builder.decode_queue(&mut input, q);
    }
    let Some(mut dev) = device(pick, &mem) else {
        return;
    };
    let t = &mut dev.transport;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.byte() % 6 {
            0 => {
                let len = 1 + usize::from(input.byte() % 8);
                let offset = u64::from(input.u16() % 0x1100);
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..len]);
            }
            1 => {
                let len = 1 + usize::from(input.byte() % 8);
                let offset = u64::from(input.u16() % 0x1100);
                let bytes: [u8; 8] = input.array();
                t.write(offset, &bytes[..len]);
            }
            2 => {
                let reg = REGISTERS[usize::from(input.byte()) % REGISTERS.len()];
                let v = value(&mut input);
                write32(t, reg, v);
            }
            3 => driver_sequence(t, &mut input),
            4 => (dev.serve)(),
            _ => write32(t, STATUS, 0),
        }
        assert_eq!(read32(t, 0x000), MMIO_MAGIC_VALUE);
        assert_eq!(read32(t, 0x004), MMIO_VERSION);
        assert_eq!(read32(t, 0x008), dev.device_id);
    }
}

#[cfg(test)]
mod tests {
    use super::super::guest::encode::{queue, Desc};
    use super::super::Rng as Seeded;
    use super::*;

    fn input(rng: &mut Seeded) -> Vec<u8> {
        let mut d = vec![rng.below(8) as u8];
        for _ in 0..3 {
            let chains: Vec<Vec<Desc>> = (0..rng.below(4))
                .map(|_| {
                    let n = rng.below(64) as usize;
                    vec![
                        Desc::Read(rng.bytes(n)),
                        Desc::Write(rng.below(0x200) as u16),
                    ]
                })
                .collect();
            queue(&mut d, &chains);
        }
        for _ in 0..rng.below(80) {
            let op = rng.below(6) as u8;
            d.push(op);
            d.extend(rng.bytes(if op == 3 { 9 } else { 10 }));
        }
        d
    }

    #[test]
    fn seeded_fuzz_mmio_registers() {
        let mut rng = Seeded(0x5eed_0000_3310);
        let start = std::time::Instant::now();
        let n = 400;
        for _ in 0..n {
            mmio_registers(&input(&mut rng));
        }
        eprintln!("seeded fuzz: {n} mmio inputs in {:?}", start.elapsed());
    }

    /// The driver sequence activates each device, a reset and a second
    /// sequence activate it again.
    #[test]
    fn mmio_harness_reaches_activation_and_reactivation() {
        for pick in 0..4u8 {
            let mem = guest::zeroed_memory();
            let mut dev = device(pick, &mem).unwrap();
            let queues = dev.transport.queue_evts().len() as u8;
            let seq = [0u8, 0, 0, 0, 0, 0, 0, 0, queues - 1];
            for _ in 0..2 {
                driver_sequence(&mut dev.transport, &mut Input::new(&seq));
                assert_ne!(
                    dev.transport.status() & status::DRIVER_OK,
                    0,
                    "device {pick}"
                );
                (dev.serve)();
                write32(&mut dev.transport, STATUS, 0);
                assert_eq!(dev.transport.status(), 0);
            }
        }
    }
}
