//! CPUID as the guest sees it: the host's `KVM_GET_SUPPORTED_CPUID`, with
//! each vCPU's APIC ID and topology filled in and the hypervisor and
//! TSC-deadline bits set (Intel SDM vol. 2A, CPUID).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 24, TSC-deadline mode of the local APIC timer.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX bit 31, "running under a hypervisor".
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, more than one logical processor per package.
pub const EDX_HTT: u32 = 1 << 28;

/// Facts about the host and the VM that CPUID must reflect.
#[derive(Debug, Clone, Copy)]
pub struct CpuidContext {
    /// Index (and APIC ID) of the vCPU.
    pub cpu_index: u8,
    /// Number of vCPUs of the VM.
    pub cpu_count: u8,
    /// The host supports the TSC-deadline timer for guests
    /// (`KVM_CAP_TSC_DEADLINE_TIMER`). Without a PIT the guest needs it to
    /// have a timer at all.
    pub tsc_deadline: bool,
}

/// Adjusts the supported CPUID of the host for one vCPU.
pub fn normalize(cpuid: &mut CpuId, ctx: CpuidContext) {
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, ctx);
    }
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, ctx: CpuidContext) {
    match entry.function {
        0x1 => {
            // EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
            entry.ebx = (entry.ebx & 0x0000_ffff)
                | (u32::from(ctx.cpu_index) << 24)
                | (u32::from(ctx.cpu_count) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if ctx.tsc_deadline {
                entry.ecx |= ECX_TSC_DEADLINE;
            }
            if ctx.cpu_count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        0xb => {
            // Extended topology: one thread per core, `cpu_count` cores.
            entry.edx = u32::from(ctx.cpu_index);
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (1 << 8) | entry.index;
                }
                1 => {
                    entry.eax = 32 - (u32::from(ctx.cpu_count).max(1) - 1).leading_zeros();
                    entry.ebx = u32::from(ctx.cpu_count);
                    entry.ecx = (2 << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            edx: EDX_HTT,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_gets_apic_id_hypervisor_and_deadline_bits() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        normalize(
            &mut cpuid,
            CpuidContext {
                cpu_index: 3,
                cpu_count: 4,
                tsc_deadline: true,
            },
        );
        let e = cpuid.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn single_cpu_clears_htt_and_keeps_deadline_off_without_cap() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        normalize(
            &mut cpuid,
            CpuidContext {
                cpu_index: 0,
                cpu_count: 1,
                tsc_deadline: false,
            },
        );
        let e = cpuid.as_slice()[0];
        assert_eq!(e.edx & EDX_HTT, 0);
        assert_eq!(e.ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn leaf_b_describes_topology() {
        let mut cpuid =
            CpuId::from_entries(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]).unwrap();
        normalize(
            &mut cpuid,
            CpuidContext {
                cpu_index: 2,
                cpu_count: 3,
                tsc_deadline: true,
            },
        );
        let e = cpuid.as_slice();
        assert_eq!((e[0].ebx, e[0].edx, e[0].ecx), (1, 2, 0x100));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx), (2, 3, 0x201));
        assert_eq!((e[2].ebx, e[2].ecx), (0, 2));
    }
}
