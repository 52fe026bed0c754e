//! vCPUs: their setup (CPUID, MSRs, registers, local APIC) and the
//! `KVM_RUN` loop of each vCPU thread.
//!
//! A vCPU thread dispatches port-I/O and MMIO exits through the buses to
//! the device that owns the address, and reports every exit that ends the
//! VM (reset, triple fault, emulation failure) to the main thread through
//! a channel plus an eventfd that the event loop watches. Nothing the guest
//! does makes this thread panic: unknown addresses read as all-ones and
//! writes to them are dropped and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use capsa_devices::Bus;
use kvm_bindings::{kvm_lapic_state, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::pause::PauseControl;
use crate::arch::x86_64::{cpuid, msr, regs};
use crate::boot::LoadedKernel;
use crate::profile::Profiler;
use crate::snapshot::vcpu::{self as vcpu_state, VcpuSaveInfo, VcpuState, VcpuStateError};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
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
    /// Writing the boot structures failed.
    #[error("vCPU {cpu}: {source}")]
    Regs {
        /// vCPU index.
        cpu: u8,
        /// The error.
        source: regs::RegsError,
    },
    /// KVM did not take all boot MSRs.
    #[error("vCPU {cpu}: KVM_SET_MSRS set {set} of {wanted} MSRs")]
    Msrs {
        /// vCPU index.
        cpu: u8,
        /// How many KVM took.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
}

/// Why the VM stopped, as seen by a vCPU thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 `0xFE` or `KVM_SYSTEM_EVENT_RESET`).
    Reset,
    /// The guest powered off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    PowerOff,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// vCPU index.
        cpu: u8,
        /// Instruction pointer when it happened.
        rip: u64,
    },
    /// KVM could not emulate an instruction (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// vCPU index.
        cpu: u8,
        /// `kvm_run.internal.suberror` (1 = emulation failure).
        suberror: u32,
        /// Instruction pointer.
        rip: u64,
        /// Privilege level (0 = kernel mode, 3 = user mode).
        cpl: u8,
        /// Up to 16 bytes at `rip`, when they could be read.
        code: Option<Vec<u8>>,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest.
    FailEntry {
        /// vCPU index.
        cpu: u8,
        /// `hardware_entry_failure_reason`.
        reason: u64,
    },
    /// An exit capsa does not handle, or a failing `KVM_RUN`.
    Error {
        /// vCPU index.
        cpu: u8,
        /// What happened.
        message: String,
    },
    /// A device that the guest cannot do without failed for good (e.g. the
    /// virtio-fs backend went away: the guest's file system requests would
    /// never be answered).
    DeviceFailed {
        /// What failed and why.
        message: String,
    },
    /// A snapshot was written and the VM stopped, as asked
    /// (`--snapshot-then exit`).
    Snapshotted {
        /// The snapshot directory.
        dir: std::path::PathBuf,
    },
    /// A snapshot could not be taken, and the VM was to stop after it.
    SnapshotFailed {
        /// Why.
        message: String,
    },
}

impl VmExit {
    /// Whether this is an orderly end of the guest.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            VmExit::Reset | VmExit::PowerOff | VmExit::Snapshotted { .. }
        )
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset the machine"),
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::TripleFault { cpu, rip } => {
                write!(f, "guest triple fault on vCPU {cpu} at RIP {rip:#x}")
            }
            VmExit::InternalError {
                cpu,
                suberror,
                rip,
                cpl,
                code,
            } => {
                let what = if *suberror == 1 {
                    "emulation failure".to_string()
                } else {
                    format!("suberror {suberror}")
                };
                write!(
                    f,
                    "KVM internal error ({what}) on vCPU {cpu} at RIP {rip:#x}, CPL {cpl}"
                )?;
                match code {
                    Some(bytes) => {
                        write!(f, ", code bytes:")?;
                        for b in bytes {
                            write!(f, " {b:02x}")?;
                        }
                        Ok(())
                    }
                    None => write!(f, ", code bytes unreadable"),
                }
            }
            VmExit::FailEntry { cpu, reason } => {
                write!(
                    f,
                    "KVM could not enter the guest on vCPU {cpu} (reason {reason:#x})"
                )
            }
            VmExit::Error { cpu, message } => write!(f, "vCPU {cpu}: {message}"),
            VmExit::DeviceFailed { message } => write!(f, "{message}"),
            VmExit::Snapshotted { dir } => {
                write!(f, "snapshot written to {}; VM stopped", dir.display())
            }
            VmExit::SnapshotFailed { message } => write!(f, "snapshot failed: {message}"),
        }
    }
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Guest memory, for diagnostics.
    pub mem: GuestMemoryMmap,
    /// Terminal exits go here…
    pub exits: Sender<VmExit>,
    /// …and this eventfd wakes the event loop to read them.
    pub exit_evt: EventFd,
    /// Set by the main thread to make the vCPU threads return.
    pub stop: AtomicBool,
    /// Accesses to addresses no device owns.
    pub unhandled_accesses: AtomicU64,
    /// VMM process start, for the first-`KVM_RUN` log line.
    pub start: Instant,
    /// The guest profiler, when one was asked for.
    pub profiler: Option<Arc<Profiler>>,
    /// Pausing for a snapshot.
    pub pause: PauseControl,
}

/// A vCPU, configured and ready to run.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    save_info: VcpuSaveInfo,
}

impl Vcpu {
    /// Creates vCPU `index` and configures it: CPUID (normalised for
    /// `count` vCPUs, adjusted for PVM hosts when `pvm_quirks`), MSRs, FPU,
    /// local APIC (LINT0 ExtINT, LINT1 NMI) and, for the boot vCPU (index
    /// 0), the registers at the kernel's entry; the others wait for the
    /// guest to start them (INIT, STARTUP IPI).
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        index: u8,
        count: u8,
        kernel: &LoadedKernel,
        pvm_quirks: bool,
    ) -> Result<Self, VcpuError> {
        let err = |what| {
            move |source| VcpuError::Kvm {
                cpu: index,
                what,
                source,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(err("KVM_CREATE_VCPU"))?;

        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::normalize(
            &mut cpuid,
            cpuid::CpuidContext {
                cpu_index: index,
                cpu_count: count,
                tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            },
        );
        if pvm_quirks {
            crate::pvm::adjust_cpuid(&mut cpuid);
        }
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        let save_info = save_info(kvm, &fd, cpuid).map_err(err("KVM_GET_MSR_INDEX_LIST"))?;

        let msrs = msr::boot_msrs();
        let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                cpu: index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        fd.set_fpu(&regs::boot_fpu()).map_err(err("KVM_SET_FPU"))?;

        if index == 0 {
            // The boot processor starts at the kernel's entry. Application
            // processors keep their reset state: with the in-kernel local
            // APIC, KVM leaves every vCPU but the first in
            // KVM_MP_STATE_UNINITIALIZED, where KVM_RUN waits for the
            // INIT and STARTUP IPIs that the guest kernel's SMP boot sends
            // (Intel SDM vol. 3A, §8.4 "Multiple-Processor (MP)
            // Initialization"); the STARTUP IPI sets CS:IP to the guest's
            // real-mode trampoline.
            let mut sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            regs::setup_sregs(mem, kernel.mode, &mut sregs)
                .map_err(|source| VcpuError::Regs { cpu: index, source })?;
            fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(kernel.mode, kernel.entry))
                .map_err(err("KVM_SET_REGS"))?;
        }

        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        setup_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;

        Ok(Self {
            index,
            fd,
            save_info,
        })
    }

    /// Creates vCPU `state.index` and sets a snapshot's `state` on it
    /// ([`crate::snapshot::vcpu::restore`]).
    pub fn restore(kvm: &Kvm, vm: &VmFd, state: &VcpuState) -> Result<Self, VcpuStateError> {
        let cpu = state.index;
        let err = |what| move |source| VcpuStateError::Kvm { cpu, what, source };
        let fd = vm
            .create_vcpu(u64::from(cpu))
            .map_err(err("KVM_CREATE_VCPU"))?;
        vcpu_state::restore(&fd, state)?;
        let cpuid = kvm_bindings::CpuId::from_entries(&state.cpuid).map_err(|_| {
            VcpuStateError::Invalid {
                cpu,
                message: "CPUID".into(),
            }
        })?;
        let save_info = save_info(kvm, &fd, cpuid).map_err(err("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(Self {
            index: cpu,
            fd,
            save_info,
        })
    }

    /// Parks this vCPU for a snapshot: completes the pending MMIO/PIO exit
    /// (`immediate_exit`: KVM finishes the instruction and returns `EINTR`
    /// without running the guest further, Documentation/virt/kvm/api.rst
    /// "KVM_RUN"), saves the state and waits to be resumed or stopped.
    fn park(&mut self, shared: &VcpuShared) {
        self.fd.set_kvm_immediate_exit(1);
        for _ in 0..4 {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => pio_in(shared, port, data),
                Ok(VcpuExit::IoOut(port, data)) => pio_out(shared, port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => mmio_read(shared, addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => mmio_write(shared, addr, data),
                Err(e) if e.errno() == libc::EINTR => break,
                other => {
                    tracing::warn!(
                        cpu = self.index,
                        "completing the last exit for a pause: {other:?}"
                    );
                    break;
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        let state =
            vcpu_state::save(&self.fd, self.index, &self.save_info).map_err(|e| e.to_string());
        shared.pause.park((self.index, state), &shared.stop);
    }

    /// The `KVM_RUN` loop. Returns when the VM ends or `shared.stop` is set.
    pub fn run(mut self, shared: Arc<VcpuShared>) {
        if self.index == 0 {
            tracing::info!(
                elapsed_us = shared.start.elapsed().as_micros() as u64,
                "first KVM_RUN"
            );
        }
        while !shared.stop.load(Ordering::Acquire) {
            if shared.pause.requested() {
                self.park(&shared);
                continue;
            }
            if let Some(profiler) = &shared.profiler {
                profiler.sample_if_requested(self.index, &self.fd, &shared.mem);
            }
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    pio_in(&shared, port, data);
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio_out(&shared, port, data);
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    mmio_read(&shared, addr, data);
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    mmio_write(&shared, addr, data);
                    continue;
                }
                Ok(VcpuExit::Shutdown) => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    VmExit::TripleFault {
                        cpu: self.index,
                        rip,
                    }
                }
                Ok(VcpuExit::InternalError) => self.internal_error(&shared.mem),
                Ok(VcpuExit::FailEntry(reason, _cpu)) => VmExit::FailEntry {
                    cpu: self.index,
                    reason,
                },
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                    other => VmExit::Error {
                        cpu: self.index,
                        message: format!("unexpected system event {other}"),
                    },
                },
                Ok(VcpuExit::Hlt) => VmExit::Error {
                    cpu: self.index,
                    message: "guest halted with interrupts disabled".into(),
                },
                Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => continue,
                Ok(other) => VmExit::Error {
                    cpu: self.index,
                    message: format!("unhandled KVM exit {other:?}"),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => VmExit::Error {
                    cpu: self.index,
                    message: format!("KVM_RUN failed: {e}"),
                },
            };
            // The receiver only goes away when the VMM is already ending.
            let _ = shared.exits.send(exit);
            let _ = shared.exit_evt.write(1);
            return;
        }
    }

    /// Ends the VM without running this vCPU (its thread could not be
    /// set up, e.g. its seccomp filter was refused).
    pub fn fail(self, shared: &VcpuShared, message: String) {
        let _ = shared.exits.send(VmExit::Error {
            cpu: self.index,
            message,
        });
        let _ = shared.exit_evt.write(1);
    }

    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> VmExit {
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so the exit
        // union of kvm_run holds the `internal` member.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let regs = self.fd.get_regs().ok();
        let sregs = self.fd.get_sregs().ok();
        let rip = regs.map(|r| r.rip).unwrap_or(0);
        let cpl = sregs.map(|s| s.cs.dpl).unwrap_or(0);
        let code = self
            .fd
            .translate_gva(rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| crate::boot::read_guest_bytes(mem, t.physical_address, 16));
        VmExit::InternalError {
            cpu: self.index,
            suberror,
            rip,
            cpl,
            code,
        }
    }
}

/// What a vCPU records at creation for its later snapshots: the CPUID
/// table, the host's MSR index list, the TSC frequency, XSAVE support.
fn save_info(
    kvm: &Kvm,
    fd: &VcpuFd,
    cpuid: kvm_bindings::CpuId,
) -> Result<VcpuSaveInfo, kvm_ioctls::Error> {
    Ok(VcpuSaveInfo {
        cpuid,
        msr_indices: kvm.get_msr_index_list()?.as_slice().to_vec(),
        tsc_khz: fd.get_tsc_khz().ok(),
        xsave: kvm.check_extension(Cap::Xsave) && kvm.check_extension(Cap::Xcrs),
    })
}

// Port-I/O and MMIO exits go to the device that owns the address; unknown
// addresses read as all-ones, writes to them are dropped; both counted.

fn pio_in(shared: &VcpuShared, port: u16, data: &mut [u8]) {
    if !shared.pio.read(u64::from(port), data) {
        data.fill(0xff);
        shared.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
    }
}

fn pio_out(shared: &VcpuShared, port: u16, data: &[u8]) {
    if !shared.pio.write(u64::from(port), data) {
        shared.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
    }
}

fn mmio_read(shared: &VcpuShared, addr: u64, data: &mut [u8]) {
    if !shared.mmio.read(addr, data) {
        data.fill(0xff);
        shared.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
    }
}

fn mmio_write(shared: &VcpuShared, addr: u64, data: &[u8]) {
    if !shared.mmio.write(addr, data) {
        shared.unhandled_accesses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Local APIC LVT registers (Intel SDM vol. 3A, §10.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as on a PC.
fn setup_lint(lapic: &mut kvm_lapic_state) {
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let value = read_lapic_reg(lapic, reg);
        write_lapic_reg(lapic, reg, (value & !0x700) | (mode << 8));
    }
}

fn read_lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn write_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        write_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        setup_lint(&mut lapic);
        assert_eq!(read_lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_lapic_reg(&lapic, APIC_LVT1), 0x400);
    }

    #[test]
    fn exits_describe_themselves() {
        let e = VmExit::InternalError {
            cpu: 0,
            suberror: 1,
            rip: 0xffff_ffff_8100_0000,
            cpl: 0,
            code: Some(vec![0xcc, 0x90]),
        };
        let s = e.to_string();
        assert!(
            s.contains("emulation failure")
                && s.contains("0xffffffff81000000")
                && s.contains("cc 90"),
            "{s}"
        );
        assert!(VmExit::Reset.is_clean());
        assert!(!VmExit::TripleFault { cpu: 0, rip: 0 }.is_clean());
    }
}
