//! The KVM VM: `/dev/kvm`, the VM file descriptor, the in-kernel irqchip
//! (PIC, IOAPIC, LAPICs) and PIT.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error(
        "cannot open /dev/kvm: {0} (is KVM available on this host, and may this user use it?)"
    )]
    OpenKvm(kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0} (capsa needs 12)")]
    ApiVersion(i32),
    /// A capability capsa needs is missing.
    #[error("the host's KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// Capabilities capsa relies on.
const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::ExtCpuid,
];

/// An open `/dev/kvm` and one VM created on it.
pub struct Vm {
    /// The KVM system file descriptor.
    pub kvm: Kvm,
    /// The VM file descriptor.
    pub fd: VmFd,
}

impl Vm {
    /// Opens `/dev/kvm`, checks the API and capabilities, creates a VM with
    /// the in-kernel irqchip and PIT.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(VmError::ApiVersion(api));
        }
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(*cap));
            }
        }
        let kvm_err = |what| move |source| VmError::Kvm { what, source };
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        Ok(Self { kvm, fd })
    }
}
