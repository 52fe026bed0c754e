//! Restoring a VM from a snapshot into this process (docs/snapshot.md):
//! the same steps as a boot ([`crate::builder`]) where devices are
//! concerned, with the saved state set instead of a kernel loaded.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use capsa_devices::boot_timer::BootMark;
use capsa_devices::virtio::free_slot::FREE_SLOT_DEVICE_ID;
use capsa_devices::virtio::{self, persist::TransportState};

use super::{Snapshot, SnapshotError};
use crate::builder::{attach_devices, finish, ignore_sigxfsz, lock, BuildError};
use crate::config::{self, VmConfig};
use crate::device_manager::DeviceManager;
use crate::pvm;
use crate::snapshot;
use crate::vmm::Vmm;
use crate::vstate::memory;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// Restores the VM of the snapshot in `dir` into this process
/// (docs/snapshot.md): guest memory mapped `MAP_PRIVATE` from the
/// snapshot's memory file, the VM's and each vCPU's KVM state set in the
/// order KVM needs, and the devices of `config` (which must be the
/// snapshot's: same kinds in the same slots) put in their saved state.
/// vCPUs and memory size come from the snapshot; `config.kernel`,
/// `initramfs`, `cmdline`, `vcpus` and `memory_mib` are not used.
///
/// Errors: the snapshot is unreadable, corrupt, of another format major
/// version or inconsistent; the device layout differs (naming the
/// device); KVM refuses a piece of state (naming the call, or the MSR).
pub fn restore_microvm(
    config: &VmConfig,
    dir: &Path,
    start: Instant,
) -> Result<(Vmm, Receiver<BootMark>), BuildError> {
    let snap = snapshot::load(dir)?;
    let mut config = config.clone();
    config.free_slots = free_slots_left(&config, &snap)?;
    config.vcpus = snap.vcpus.len() as u8;
    config.memory_mib = u32::try_from(snap.memory.total() >> 20).unwrap_or(u32::MAX);
    config.validate(config::host_memory_mib().map_err(BuildError::HostMemory)?)?;
    ignore_sigxfsz();
    let quirks = pvm::enabled(config.host_quirks);
    if quirks != snap.host_quirks {
        return Err(SnapshotError::Invalid(format!(
            "the snapshot's guest runs {} the PVM host workarounds, this VM {} (host_quirks)",
            if snap.host_quirks { "with" } else { "without" },
            if quirks { "has them" } else { "does not" },
        ))
        .into());
    }
    let vm = Vm::new()?;
    // A vhost-user backend maps guest memory from its descriptor: it must
    // see this VM's pages, so they are copied into a memfd of its own.
    let mem = if config.fs.is_empty() {
        snapshot::memory::restore(dir, &snap.memory)
    } else {
        snapshot::memory::restore_shared(dir, &snap.memory)
    }
    .map_err(SnapshotError::from)?;
    memory::register(&vm.fd, &mem)?;
    let parts = attach_devices(&vm, &mem, &config, start, snap.serial.as_ref())?;
    if parts.serial.is_some() != snap.serial.is_some() {
        tracing::warn!(
            snapshot = snap.serial.is_some(),
            command_line = parts.serial.is_some(),
            "the serial console differs from the snapshot's: the guest's console writes go nowhere, or its UART starts from power-on"
        );
    }
    let added = check_device_layout(&parts.devices, &snap)?;
    snapshot::vm::restore(&vm.fd, &snap.vm).map_err(SnapshotError::from)?;
    let vcpus = snap
        .vcpus
        .iter()
        .map(|state| Vcpu::restore(&vm.kvm, &vm.fd, state))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SnapshotError::from)?;
    for (i, (t, saved)) in parts
        .devices
        .transports
        .iter()
        .zip(&snap.virtio)
        .enumerate()
    {
        if saved.transport.device_type == FREE_SLOT_DEVICE_ID {
            // A free slot, or a device added in one: the guest never
            // bound it, so it starts from power-on.
            continue;
        }
        lock(t)
            .restore_state(&saved.transport)
            .map_err(|e| device_error(i, &saved.transport, e.to_string()))?;
    }
    tracing::info!(
        dir = %dir.display(),
        elapsed_us = start.elapsed().as_micros() as u64,
        added = ?added,
        "VM restored from snapshot"
    );
    let (mut vmm, marks) = finish(vm, mem, vcpus, parts, &config, start, quirks)?;
    vmm.set_added_devices(added);
    Ok((vmm, marks))
}

/// How many of the snapshot's free slots (DeviceID 0) stay free once the
/// devices of `config` are placed: the snapshot's own devices first, then
/// those it has not, in free slots.
fn free_slots_left(config: &VmConfig, snap: &Snapshot) -> Result<u8, BuildError> {
    let wanted = config.virtio_device_count();
    let slots = snap.virtio.len();
    let free = slots.checked_sub(wanted).ok_or_else(|| {
        SnapshotError::Device(format!(
            "the command line has {wanted} virtio devices, the snapshot {slots} slots (free ones included): the devices do not fit"
        ))
    })?;
    Ok(u8::try_from(free).unwrap_or(u8::MAX))
}

/// The snapshot's virtio devices must be the command line's: the same
/// kind at the same slot and IRQ, as many (each is checked again by its
/// transport); a free slot of the snapshot may hold any device of the
/// command line. Returns the slots (indexes in command-line order) whose
/// device was added in a free slot: the guest binds them
/// (docs/snapshot.md, "Devices added at restore").
fn check_device_layout(devices: &DeviceManager, snap: &Snapshot) -> Result<Vec<usize>, BuildError> {
    let count = devices.virtio_devices.len().max(snap.virtio.len());
    let mut added = Vec::new();
    for i in 0..count {
        let here = devices
            .virtio_devices
            .get(i)
            .zip(devices.transports.get(i))
            .map(|(slot, t)| (slot, lock(t).device_type()));
        let why = match (snap.virtio.get(i), here) {
            (Some(saved), Some((slot, _))) if (slot.base, slot.irq) != (saved.base, saved.irq) => {
                format!(
                    "was at {:#x} IRQ {} in the snapshot, the command line puts it at {:#x} IRQ {}",
                    saved.base, saved.irq, slot.base, slot.irq
                )
            }
            (Some(saved), Some((_, kind))) if saved.transport.device_type == FREE_SLOT_DEVICE_ID => {
                if kind != FREE_SLOT_DEVICE_ID {
                    added.push(i);
                }
                continue;
            }
            (Some(saved), Some((slot, kind))) if kind != saved.transport.device_type => format!(
                "the command line has a {} in its place (slot {:#x}): the device layout must match",
                device_kind(kind),
                slot.base
            ),
            (Some(_), Some(_)) => continue,
            (Some(_), None) => "is in the snapshot but not on the command line".into(),
            (None, Some((_, kind))) => {
                return Err(SnapshotError::Device(format!(
                    "the command line's virtio device {i} ({}) is not in the snapshot: the device layout must match",
                    device_kind(kind)
                ))
                .into())
            }
            (None, None) => continue,
        };
        return Err(device_error(i, &snap.virtio[i].transport, why));
    }
    Ok(added)
}

fn device_kind(device_type: u32) -> &'static str {
    match device_type {
        virtio::device_type::BLOCK => "virtio-blk",
        virtio::device_type::NET => "virtio-net",
        virtio::device_type::RNG => "virtio-rng",
        virtio::device_type::VSOCK => "virtio-vsock",
        virtio::device_type::FS => "virtio-fs",
        FREE_SLOT_DEVICE_ID => "free slot",
        _ => "virtio device",
    }
}

fn device_error(index: usize, saved: &TransportState, why: String) -> BuildError {
    SnapshotError::Device(format!(
        "snapshot device {index} ({}): {why}",
        device_kind(saved.device_type)
    ))
    .into()
}
