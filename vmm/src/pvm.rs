//! Workarounds for PVM hosts, all in one place.
//!
//! On a PVM host (`/dev/kvm` provided by the `kvm_pvm` module, a
//! paravirtual hypervisor without VT-x/SVM, as on capsa's development and
//! CI machines), guest kernel mode runs in an instruction emulator that
//! cannot execute a handful of instructions, and SYSCALL from guest user
//! mode does not reach the guest kernel. capsa's guest kernel carries
//! patches for that which stay inert unless the `capsa_pvm` boot parameter
//! is given (see `kernel-config/patches/` and docs/kernel.md); this module
//! decides whether to pass it, and which CPU features to hide with
//! `clearcpuid=` because the emulator cannot run their instructions.
//!
//! On a real KVM host (VT-x/SVM) none of this applies and nothing here
//! changes the VM.

use std::path::Path;

use kvm_bindings::CpuId;

use crate::config::HostQuirks;

/// Present when the host's KVM is PVM.
pub const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";

/// Boot parameter that switches on the guest kernel's PVM patches.
pub const KERNEL_PARAM: &str = "capsa_pvm";

/// CPU features whose instructions the PVM CPL0 emulator cannot execute:
/// `xsave` (XSAVE/XRSTOR), `cx16` (CMPXCHG16B in SLUB), `smap` (CLAC/STAC),
/// `popcnt`, `fsgsbase` (with it, the entry of NMIs and other paranoid
/// exceptions reads the CPU number with LSL, which the emulator cannot
/// run: an NMI backtrace of an SMP guest ended in an emulation failure);
/// `erms` and `fsrm` are not required but make string copies take a path
/// that emulates faster (~2 s less boot time).
pub const CLEARCPUID: &[&str] = &[
    "xsave", "cx16", "smap", "popcnt", "fsgsbase", "erms", "fsrm",
];

/// Kernel parameter that the kernel hands to init as an environment
/// variable (it is no kernel parameter): tells glibc not to use AVX (its
/// AVX2 `memcpy`, `strlen`, …). Guest user mode runs on the host CPU with
/// AVX enabled (the host's XCR0, which PVM keeps), but the guest kernel
/// cannot execute XSAVE here (`clearcpuid=xsave`) and switches tasks' FPU
/// state with FXSAVE/FXRSTOR, which leave out the upper halves of the YMM
/// registers: AVX code loses them at context switches (it showed as
/// 16-byte stripes of zeros in data copied by glibc's AVX2 `memcpy`). The
/// agent passes this on to the container's processes. Programs that pick
/// AVX themselves (Go, Rust's `is_x86_feature_detected!`, hand-written
/// AVX) are still exposed: see docs/kernel.md.
pub const GLIBC_TUNABLES_PARAM: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,\
-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4,-F16C,-AVX_Fast_Unaligned_Load";

/// No RCU CPU stall warnings. Where guest kernel mode is emulated, a vCPU
/// that shares a host core with others (more vCPUs than cores, or a busy
/// host) easily spends the stall timeout (21 s) in one stretch of kernel
/// code; the warning then sends NMIs for backtraces and prints them
/// through the emulated console: seconds of boot time for nothing.
pub const RCU_STALL_PARAM: &str = "rcupdate.rcu_cpu_stall_suppress=1";

/// Parameters the quirks add to the kernel command line.
pub const KERNEL_PARAMS: &[&str] = &[KERNEL_PARAM, RCU_STALL_PARAM, GLIBC_TUNABLES_PARAM];

/// CPUID.80000008H:EBX bit 2, "XSAVE always saves/restores the error
/// pointers" (Linux `X86_FEATURE_XSAVEERPTR`): when set, Linux skips the
/// FNCLEX-based workaround that the emulator cannot execute.
const XSAVEERPTR: u32 = 1 << 2;

/// CPUID leaf of the KVM paravirtual features (`KVM_CPUID_FEATURES`,
/// Linux Documentation/virt/kvm/x86/cpuid.rst).
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// `KVM_FEATURE_PV_SEND_IPI` (bit 11): IPIs through the
/// `KVM_HC_SEND_IPI` hypercall.
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
/// `KVM_FEATURE_PV_SCHED_YIELD` (bit 13): yielding to a preempted vCPU
/// through the `KVM_HC_SCHED_YIELD` hypercall.
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;

/// Whether this host is a PVM host.
pub fn is_pvm_host() -> bool {
    Path::new(PVM_MODULE_PATH).exists()
}

/// Whether to apply the workarounds, given the configured mode.
pub fn enabled(mode: HostQuirks) -> bool {
    match mode {
        HostQuirks::Auto => is_pvm_host(),
        HostQuirks::On => true,
        HostQuirks::Off => false,
    }
}

/// Kernel parameters that the quirks add. The kernel honours only the last
/// `clearcpuid=`, so one from the user's command line is merged into this
/// list by the command-line builder.
pub fn kernel_params() -> (&'static [&'static str], &'static [&'static str]) {
    (KERNEL_PARAMS, CLEARCPUID)
}

/// CPUID changes for PVM hosts: advertise XSAVEERPTR, and hide the KVM
/// paravirtual features that work by hypercall, PV IPIs and PV yield. The
/// PVM host's `KVM_HC_SEND_IPI` never completes: the vCPU that sends the
/// first IPI of an SMP boot stays at the hypercall for good (seen with the
/// guest profiler in `__send_ipi_mask`), and the other vCPUs then wait
/// for it on a spinlock. Without these features the guest sends IPIs
/// through its local APIC, as on hardware.
pub fn adjust_cpuid(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x8000_0008 => entry.ebx |= XSAVEERPTR,
            KVM_CPUID_FEATURES => {
                entry.eax &= !(KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn explicit_modes_win_over_detection() {
        assert!(enabled(HostQuirks::On));
        assert!(!enabled(HostQuirks::Off));
        assert_eq!(enabled(HostQuirks::Auto), is_pvm_host());
    }

    #[test]
    fn kernel_params_are_words_and_keep_glibc_off_avx() {
        for p in KERNEL_PARAMS {
            assert!(!p.is_empty() && !p.contains(char::is_whitespace), "{p:?}");
        }
        let tunables = GLIBC_TUNABLES_PARAM
            .strip_prefix("GLIBC_TUNABLES=glibc.cpu.hwcaps=")
            .unwrap();
        for f in ["AVX", "AVX2", "AVX512F", "AVX_Fast_Unaligned_Load"] {
            assert!(tunables.split(',').any(|t| t == format!("-{f}")), "{f}");
        }
    }

    #[test]
    fn xsaveerptr_is_advertised_and_hypercall_ipis_hidden() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_CPUID_FEATURES,
                // What this PVM host reports: clocksource, async PF, steal
                // time, PV EOI, PV TLB flush, PV IPI, PV yield, …
                eax: 0x0100_7efb,
                ..Default::default()
            },
        ])
        .unwrap();
        adjust_cpuid(&mut cpuid);
        assert_eq!(cpuid.as_slice()[0].ebx & XSAVEERPTR, XSAVEERPTR);
        let kvm = cpuid.as_slice()[1].eax;
        assert_eq!(
            kvm & (KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD),
            0
        );
        assert_eq!(kvm, 0x0100_7efb & !(1 << 11) & !(1 << 13), "others kept");
    }
}
