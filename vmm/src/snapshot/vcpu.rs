//! A vCPU's KVM state: what is saved, and the order in which KVM takes it
//! back.
//!
//! Saved (on the vCPU's own thread, while it is parked outside `KVM_RUN`
//! with its last MMIO or port-I/O exit completed): MP state first
//! (`KVM_GET_MP_STATE` may process pending INIT/SIPI events into the
//! other state), then regs, sregs, FPU, XSAVE and XCRs (when the host has
//! them), debug registers, LAPIC, every MSR of `KVM_GET_MSR_INDEX_LIST`
//! that `KVM_GET_MSRS` reads (on PVM hosts this includes PVM's own MSRs),
//! vCPU events; plus the CPUID table as it was set and the TSC frequency.
//!
//! Restored in the order KVM requires: CPUID (before MSRs: it decides
//! which MSRs exist), TSC frequency, sregs before regs, FPU/XSAVE/XCRs,
//! debug registers, LAPIC (after sregs: the APIC base MSR is part of
//! sregs), MSRs (`IA32_TSC` before `IA32_TSC_DEADLINE`), then MP state
//! and vCPU events last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// `MSR_IA32_TSC_DEADLINE` (Intel SDM vol. 4): set after `IA32_TSC`.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// MSRs per `KVM_GET_MSRS`/`KVM_SET_MSRS` call.
const MSR_CHUNK: usize = 64;
/// Most MSRs a saved vCPU may hold (KVM's index list has a few hundred).
pub const MAX_MSRS: usize = 4096;

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM call failed.
    #[error("vCPU {cpu}: {what}: {source}")]
    Kvm {
        /// vCPU index.
        cpu: u8,
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused one MSR on restore.
    #[error("vCPU {cpu}: KVM_SET_MSRS refused MSR {index:#x} (value {value:#x})")]
    Msr {
        /// vCPU index.
        cpu: u8,
        /// The MSR.
        index: u32,
        /// Its saved value.
        value: u64,
    },
    /// The saved state is out of bounds.
    #[error("vCPU {cpu}: invalid saved state: {message}")]
    Invalid {
        /// vCPU index.
        cpu: u8,
        /// What is wrong.
        message: String,
    },
}

/// The legacy FPU/SSE state (`struct kvm_fpu`, which kvm-bindings has no
/// serde form for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 registers ST0-ST7, 16 bytes each (10 used).
    pub fpr: [[u8; 16]; 8],
    /// Control word, status word, abridged tag word, last opcode.
    pub fcw_fsw_ftwx_opcode: [u16; 4],
    /// Last instruction and data pointers.
    pub last_ip_dp: [u64; 2],
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw_fsw_ftwx_opcode: [f.fcw, f.fsw, u16::from(f.ftwx), f.last_opcode],
            last_ip_dp: [f.last_ip, f.last_dp],
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(s: &FpuState) -> Self {
        let [fcw, fsw, ftwx, last_opcode] = s.fcw_fsw_ftwx_opcode;
        kvm_fpu {
            fpr: s.fpr,
            fcw,
            fsw,
            ftwx: ftwx as u8,
            last_opcode,
            last_ip: s.last_ip_dp[0],
            last_dp: s.last_ip_dp[1],
            xmm: s.xmm,
            mxcsr: s.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (its APIC ID).
    pub index: u8,
    /// The CPUID table as set with `KVM_SET_CPUID2`.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// TSC frequency in kHz (`KVM_GET_TSC_KHZ`), when the host reports it.
    pub tsc_khz: Option<u32>,
    /// MP state (`KVM_MP_STATE_*`).
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87/SSE state.
    pub fpu: FpuState,
    /// XSAVE area, when the host has `KVM_CAP_XSAVE`.
    pub xsave: Option<kvm_xsave>,
    /// Extended control registers, when the host has `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Every readable MSR of the host's index list, in list order.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMM state.
    pub vcpu_events: kvm_vcpu_events,
}

/// What a vCPU knows about itself since its creation, for saving.
#[derive(Debug, Clone)]
pub struct VcpuSaveInfo {
    /// The CPUID table it was given.
    pub cpuid: CpuId,
    /// `KVM_GET_MSR_INDEX_LIST` of the host.
    pub msr_indices: Vec<u32>,
    /// `KVM_GET_TSC_KHZ` at creation.
    pub tsc_khz: Option<u32>,
    /// Whether `KVM_GET/SET_XSAVE` and `XCRS` are available.
    pub xsave: bool,
}

/// Reads vCPU `cpu`'s state. Call on a vCPU that is not in `KVM_RUN` and
/// whose last I/O exit was completed (see the module docs).
pub fn save(fd: &VcpuFd, cpu: u8, info: &VcpuSaveInfo) -> Result<VcpuState, VcpuStateError> {
    let err = |what| move |source| VcpuStateError::Kvm { cpu, what, source };
    let mp_state = fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(err("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let fpu = FpuState::from(&fd.get_fpu().map_err(err("KVM_GET_FPU"))?);
    let (xsave, xcrs) = if info.xsave {
        let xsave = fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        (
            Some(xsave),
            Some(fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?),
        )
    } else {
        (None, None)
    };
    let debugregs = fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    let msrs = save_msrs(fd, cpu, &info.msr_indices)?;
    let vcpu_events = fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        index: cpu,
        cpuid: info.cpuid.as_slice().to_vec(),
        tsc_khz: info.tsc_khz,
        mp_state,
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        vcpu_events,
    })
}

/// Reads every MSR of `indices` that KVM can read: `KVM_GET_MSRS` stops at
/// the first it cannot, which is then left out and the rest read on.
fn save_msrs(fd: &VcpuFd, cpu: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let err = |source| VcpuStateError::Kvm {
        cpu,
        what: "KVM_GET_MSRS",
        source,
    };
    let mut saved = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    let mut pos = 0;
    while pos < indices.len() {
        let end = (pos + MSR_CHUNK).min(indices.len());
        let entries: Vec<kvm_msr_entry> = indices[pos..end]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Invalid {
            cpu,
            message: "too many MSRs".into(),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(err)?;
        saved.extend_from_slice(&msrs.as_slice()[..read.min(entries.len())]);
        if pos + read < end {
            skipped.push(indices[pos + read]);
            pos += read + 1;
        } else {
            pos = end;
        }
    }
    tracing::debug!(
        cpu,
        listed = indices.len(),
        saved = saved.len(),
        indices = ?indices.iter().map(|i| format!("{i:#x}")).collect::<Vec<_>>(),
        ?skipped,
        "MSRs saved (the index list's, less those KVM does not read)"
    );
    Ok(saved)
}

/// Sets `state` on a new vCPU (created, nothing else set), in the order of
/// the module docs.
///
/// Errors: a KVM call fails (naming it), KVM refuses an MSR (naming it),
/// or the state is out of bounds (more CPUID entries or MSRs than KVM
/// takes).
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let cpu = state.index;
    let err = |what| move |source| VcpuStateError::Kvm { cpu, what, source };
    let invalid = |message: String| VcpuStateError::Invalid { cpu, message };
    if state.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(invalid(format!("{} CPUID entries", state.cpuid.len())));
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| invalid("CPUID".into()))?;
    fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(err("KVM_SET_TSC_KHZ"))?;
        }
    }
    fd.set_sregs(&state.sregs).map_err(err("KVM_SET_SREGS"))?;
    fd.set_regs(&state.regs).map_err(err("KVM_SET_REGS"))?;
    fd.set_fpu(&kvm_fpu::from(&state.fpu))
        .map_err(err("KVM_SET_FPU"))?;
    if let Some(xsave) = &state.xsave {
        // SAFETY: a legacy-size `kvm_xsave` (4 KiB, what KVM_GET_XSAVE
        // wrote); capsa never enables KVM_CAP_XSAVE2, so KVM_SET_XSAVE
        // reads no more than that.
        unsafe { fd.set_xsave(xsave) }.map_err(err("KVM_SET_XSAVE"))?;
    }
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(err("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&state.debugregs)
        .map_err(err("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(err("KVM_SET_LAPIC"))?;
    restore_msrs(fd, cpu, &state.msrs)?;
    fd.set_mp_state(state.mp_state)
        .map_err(err("KVM_SET_MP_STATE"))?;
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(err("KVM_SET_VCPU_EVENTS"))
}

/// `msrs` in the order `KVM_SET_MSRS` takes them: `IA32_TSC_DEADLINE`
/// after everything else (it is relative to `IA32_TSC`), the rest in
/// their saved order.
fn restore_order(msrs: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let (deadline, mut ordered): (Vec<_>, Vec<_>) = msrs
        .iter()
        .copied()
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    ordered.extend(deadline);
    ordered
}

fn restore_msrs(fd: &VcpuFd, cpu: u8, msrs: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    if msrs.len() > MAX_MSRS {
        return Err(VcpuStateError::Invalid {
            cpu,
            message: format!("{} MSRs (at most {MAX_MSRS})", msrs.len()),
        });
    }
    for chunk in restore_order(msrs).chunks(MSR_CHUNK) {
        let list = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::Invalid {
            cpu,
            message: "MSR list".into(),
        })?;
        let set = fd.set_msrs(&list).map_err(|source| VcpuStateError::Kvm {
            cpu,
            what: "KVM_SET_MSRS",
            source,
        })?;
        if let Some(refused) = chunk.get(set) {
            return Err(VcpuStateError::Msr {
                cpu,
                index: refused.index,
                value: refused.data,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_is_restored_after_the_tsc() {
        let msr = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let saved = [
            msr(0x174),
            msr(MSR_IA32_TSC_DEADLINE),
            msr(0x10),
            msr(0x4b56_4d01),
        ];
        let order: Vec<u32> = restore_order(&saved).iter().map(|m| m.index).collect();
        assert_eq!(order, [0x174, 0x10, 0x4b56_4d01, MSR_IA32_TSC_DEADLINE]);
    }

    #[test]
    fn fpu_state_round_trips() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            fsw: 1,
            ftwx: 0xaa,
            last_opcode: 7,
            last_ip: 0x1234,
            last_dp: 0x5678,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.xmm[3][5] = 9;
        f.fpr[7][9] = 4;
        let back = kvm_fpu::from(&FpuState::from(&f));
        assert_eq!(FpuState::from(&back), FpuState::from(&f));
        assert_eq!((back.ftwx, back.mxcsr, back.xmm[3][5]), (0xaa, 0x1f80, 9));
    }
}
