//! The VM-wide KVM state: the KVM clock, the in-kernel PIC pair and
//! IOAPIC, and the PIT.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring the VM's state.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct VmStateError {
    /// Which call.
    pub what: &'static str,
    /// The error.
    pub source: kvm_ioctls::Error,
}

/// The VM's own KVM state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// `KVM_GET_CLOCK`: the KVM clock in ns.
    pub clock: kvm_clock_data,
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (its redirection table and pending lines).
    pub ioapic: kvm_irqchip,
    /// The i8254 PIT (`KVM_GET_PIT2`).
    pub pit: kvm_pit_state2,
}

fn chip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut c).map_err(|source| VmStateError {
        what: "KVM_GET_IRQCHIP",
        source,
    })?;
    Ok(c)
}

/// Reads the VM's state (vCPUs paused).
pub fn save(fd: &VmFd) -> Result<VmState, VmStateError> {
    Ok(VmState {
        clock: fd.get_clock().map_err(|source| VmStateError {
            what: "KVM_GET_CLOCK",
            source,
        })?,
        pic_master: chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit: fd.get_pit2().map_err(|source| VmStateError {
            what: "KVM_GET_PIT2",
            source,
        })?,
    })
}

/// Sets `state` on a new VM that has its irqchip and PIT. The clock is
/// set without flags (as the saving host's `KVM_CLOCK_TSC_STABLE` and
/// `KVM_CLOCK_REALTIME` say nothing about this process's host clock); each
/// chip is set under its own ID whatever the saved one says.
pub fn restore(fd: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    let err = |what| move |source| VmStateError { what, source };
    fd.set_pit2(&state.pit).map_err(err("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(err("KVM_SET_CLOCK"))?;
    for (id, saved) in [
        (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
        (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
        (KVM_IRQCHIP_IOAPIC, &state.ioapic),
    ] {
        let mut c = *saved;
        c.chip_id = id;
        fd.set_irqchip(&c).map_err(err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
