//! Initial register state of the boot vCPU for the two entry points capsa
//! uses:
//!
//! - the **64-bit entry** (Linux boot protocol, Documentation/arch/x86/boot.rst
//!   "64-bit Boot Protocol"): long mode, paging on with an identity map,
//!   `%rsi` = address of the zero page;
//! - the **PVH entry** (Xen's `docs/misc/pvh.pandoc`, used by Firecracker and
//!   QEMU for direct boot): 32-bit protected mode, paging off, `%ebx` =
//!   address of `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, segment_from_gdt, CODE32, CODE64};
use super::layout::*;

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory is too small for the boot structures.
    #[error("cannot write boot {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The vm-memory error.
        source: vm_memory::GuestMemoryError,
    },
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Entry mode of the boot vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux entry with the zero page at [`ZERO_PAGE_START`].
    Linux64,
    /// PVH entry with `hvm_start_info` at [`PVH_INFO_START`].
    Pvh,
}

/// General-purpose registers at the entry point `entry`.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and must be set
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// FPU state as after `FNINIT`, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the GDT, the IDT and (for the 64-bit entry) the identity page
/// tables into guest memory, and sets the segment and control registers of
/// `sregs` for `mode`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = boot_gdt(match mode {
        EntryMode::Linux64 => CODE64,
        EntryMode::Pvh => CODE32,
    });
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, *entry, BOOT_GDT_START + 8 * i as u64, "GDT")?;
    }
    write(mem, 0u64, BOOT_IDT_START, "IDT")?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);

    match mode {
        EntryMode::Linux64 => {
            setup_identity_map(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first [`IDENTITY_MAP_SIZE`] bytes with 2 MiB pages.
fn setup_identity_map(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write(mem, PDPTE_START | PRESENT_RW, PML4_START, "PML4")?;
    write(mem, PDE_START | PRESENT_RW, PDPTE_START, "PDPT")?;
    for i in 0..(IDENTITY_MAP_SIZE >> 21) {
        write(
            mem,
            (i << 21) | PAGE_SIZE_2M | PRESENT_RW,
            PDE_START + i * 8,
            "PD",
        )?;
    }
    Ok(())
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::GuestMemory { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn linux64_sregs_enable_long_mode_with_identity_map() {
        let mem = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, EntryMode::Linux64, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.l, 1);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, (1 << 21) | 0x83);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode_without_paging() {
        let mem = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, EntryMode::Pvh, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
        assert_eq!(sregs.cs.selector, 0x8);
        assert_eq!(sregs.ds.selector, 0x10);
    }

    #[test]
    fn boot_regs_point_at_boot_structures() {
        let r = boot_regs(EntryMode::Linux64, 0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        let r = boot_regs(EntryMode::Pvh, 0x100_1000);
        assert_eq!((r.rip, r.rbx), (0x100_1000, PVH_INFO_START));
    }

    #[test]
    fn too_small_memory_is_an_error_not_a_panic() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        assert!(setup_sregs(&mem, EntryMode::Linux64, &mut sregs).is_err());
    }
}
