//! Snapshot and restore of a whole micro-VM (docs/snapshot.md).
//!
//! A snapshot is a directory with two files:
//! - `state` ([`STATE_FILE`]): a header with magic, format version and
//!   checksum, then the [`Snapshot`] serialized ([`format`]);
//! - `memory` ([`memory::MEMORY_FILE`]): guest RAM, raw and sparse,
//!   mapped `MAP_PRIVATE` by the restoring process ([`memory`]).
//!
//! Taking one ([`crate::vmm::Vmm`]): every vCPU is kicked out of
//! `KVM_RUN`, completes its last MMIO/PIO exit and saves its own state
//! ([`vcpu`]) while parked; the event loop thread, where the devices live,
//! then saves the VM's ([`vm`]), the devices' and guest memory. Restoring
//! one ([`restore::restore_microvm`]) builds a fresh VM with the
//! devices of the new command line and sets the saved state on it.
//!
//! A snapshot file is untrusted input: every count and length is bounded
//! before use, and the memory layout, the vCPU list and the device list
//! are checked ([`load`], [`check`]) before anything is created.

pub mod format;
pub mod memory;
pub mod restore;
pub mod vcpu;
pub mod vm;

use std::path::Path;

use capsa_devices::legacy::SerialSnapshot;
use capsa_devices::virtio::persist::TransportState;
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::mptable::MAX_CPUS;

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Most virtio devices a snapshot may hold.
pub const MAX_VIRTIO_DEVICES: usize = 64;
/// Most queues a saved virtio device may have.
pub const MAX_QUEUES: usize = 64;
/// Most bytes a saved UART's receive FIFO may hold (the 16550's FIFO).
pub const MAX_SERIAL_FIFO: usize = 64;

/// A whole micro-VM.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The capsa version that took it (informative).
    pub capsa_version: String,
    /// Whether the guest runs with the PVM host workarounds (its kernel
    /// command line has them): it must be restored on a host of the same
    /// kind.
    pub host_quirks: bool,
    /// Guest RAM and where it is in the memory file.
    pub memory: memory::MemoryState,
    /// KVM clock, irqchips, PIT.
    pub vm: vm::VmState,
    /// Every vCPU, in index order.
    pub vcpus: Vec<vcpu::VcpuState>,
    /// Every virtio-mmio device, in slot order.
    pub virtio: Vec<VirtioSlot>,
    /// The COM1 UART, when the VM had a serial console.
    pub serial: Option<SerialSnapshot>,
}

/// One virtio-mmio slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VirtioSlot {
    /// MMIO base address.
    pub base: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
    /// The transport and device.
    pub transport: TransportState,
}

/// Errors taking or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is unreadable, corrupt or of another version.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// The memory file.
    #[error(transparent)]
    Memory(#[from] memory::MemoryFileError),
    /// The VM's KVM state.
    #[error("VM state: {0}")]
    Vm(#[from] vm::VmStateError),
    /// A vCPU's KVM state.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuStateError),
    /// A vCPU could not be paused or saved.
    #[error("pausing the vCPUs: {0}")]
    Pause(String),
    /// A device cannot be saved, or its saved state does not fit.
    #[error("{0}")]
    Device(String),
    /// The snapshot's content is out of bounds or inconsistent.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// The snapshot directory.
    #[error("snapshot directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Reads and checks the snapshot in `dir` ([`format::read_file`], then
/// [`check`]).
pub fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let snapshot: Snapshot = format::read_file(&dir.join(STATE_FILE))?;
    check(&snapshot)?;
    Ok(snapshot)
}

/// Bounds and consistency of a decoded snapshot: 1 to `MAX_CPUS` vCPUs
/// numbered in order, at most [`MAX_VIRTIO_DEVICES`] devices of at most
/// [`MAX_QUEUES`] queues, the memory layout capsa makes, a UART FIFO no
/// larger than the UART's.
pub fn check(s: &Snapshot) -> Result<(), SnapshotError> {
    let invalid = |m: String| Err(SnapshotError::Invalid(m));
    if s.vcpus.is_empty() || s.vcpus.len() > usize::from(MAX_CPUS) {
        return invalid(format!("{} vCPUs (1 to {MAX_CPUS})", s.vcpus.len()));
    }
    for (i, v) in s.vcpus.iter().enumerate() {
        if usize::from(v.index) != i {
            return invalid(format!("vCPU {i} is saved as vCPU {}", v.index));
        }
    }
    if s.virtio.len() > MAX_VIRTIO_DEVICES {
        return invalid(format!("{} virtio devices", s.virtio.len()));
    }
    for (i, d) in s.virtio.iter().enumerate() {
        if d.transport.queues.len() > MAX_QUEUES {
            return invalid(format!(
                "virtio device {i}: {} queues",
                d.transport.queues.len()
            ));
        }
    }
    if s.serial
        .as_ref()
        .is_some_and(|u| u.in_buffer.len() > MAX_SERIAL_FIFO)
    {
        return invalid("serial FIFO larger than the UART's".into());
    }
    memory::check_layout(&s.memory)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};

    fn vcpu(index: u8) -> vcpu::VcpuState {
        vcpu::VcpuState {
            index,
            cpuid: Vec::new(),
            tsc_khz: Some(2_000_000),
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            fpu: vcpu::FpuState::from(&kvm_bindings::kvm_fpu::default()),
            xsave: Some(Default::default()),
            xcrs: Some(Default::default()),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![kvm_bindings::kvm_msr_entry {
                index: 0x10,
                data: 42,
                ..Default::default()
            }],
            vcpu_events: Default::default(),
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            capsa_version: "0.1.0".into(),
            host_quirks: true,
            memory: memory::MemoryState {
                file: memory::MEMORY_FILE.into(),
                regions: vec![memory::RegionState {
                    guest_addr: 0,
                    size: 128 << 20,
                    file_offset: 0,
                }],
            },
            vm: vm::VmState {
                clock: kvm_clock_data::default(),
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip::default(),
                ioapic: kvm_irqchip::default(),
                pit: kvm_pit_state2::default(),
            },
            vcpus: vec![vcpu(0), vcpu(1)],
            virtio: Vec::new(),
            serial: Some(SerialSnapshot {
                baud_divisor: [12, 0],
                registers: [0; 7],
                in_buffer: vec![b'x'],
            }),
        }
    }

    #[test]
    fn a_snapshot_round_trips_through_the_format() {
        let bytes = format::encode(&snapshot()).unwrap();
        let back: Snapshot = format::decode(&bytes).unwrap();
        check(&back).unwrap();
        assert_eq!(back.vcpus[1].index, 1);
        assert_eq!(back.vcpus[0].msrs[0].data, 42);
        assert_eq!(back.memory, snapshot().memory);
        assert_eq!(back.serial, snapshot().serial);
    }

    #[test]
    fn inconsistent_snapshots_are_refused() {
        let mut s = snapshot();
        s.vcpus.swap(0, 1);
        assert!(matches!(check(&s), Err(SnapshotError::Invalid(_))));
        let mut s = snapshot();
        s.vcpus.clear();
        assert!(check(&s).is_err());
        let mut s = snapshot();
        s.serial.as_mut().unwrap().in_buffer = vec![0; MAX_SERIAL_FIFO + 1];
        assert!(check(&s).is_err());
        let mut s = snapshot();
        s.memory.regions[0].size = (128 << 20) + 4096;
        assert!(check(&s).is_err());
    }

    /// Any payload byte changed (with a valid checksum, as a hostile file
    /// would have) decodes to an error or to a snapshot that `check`
    /// judges; nothing panics.
    #[test]
    fn mutated_payloads_never_panic() {
        let bytes = format::encode(&snapshot()).unwrap();
        let payload = &bytes[format::HEADER_LEN..];
        let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
        for i in (0..payload.len()).step_by(7) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut p = payload.to_vec();
                p[i] ^= flip;
                let mut file = bytes[..format::HEADER_LEN].to_vec();
                file[24..32].copy_from_slice(&crc.checksum(&p).to_le_bytes());
                file.extend_from_slice(&p);
                if let Ok(s) = format::decode::<Snapshot>(&file) {
                    let _ = check(&s);
                }
            }
        }
    }
}
