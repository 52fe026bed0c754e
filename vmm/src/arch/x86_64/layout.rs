//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries) and, right after it, an empty IDT
//! 0x0000_6000  PVH start info, module list and memory map
//! 0x0000_7000  zero page (Linux boot_params) for the 64-bit entry
//! 0x0000_8ff0  initial stack (grows down)
//! 0x0000_9000  identity-mapping page tables (PML4, PDPT, PD: first 1 GiB)
//! 0x0002_0000  kernel command line (at most 2 KiB)
//! 0x0009_fc00  MP table, up to the end of base memory (0xa0000)
//! 0x0010_0000  high memory: the kernel is loaded here or above
//!     ...      initramfs at the top of low RAM
//! 0xc000_0000  MMIO gap: boot timer, then one 4 KiB slot per virtio device;
//!              the IOAPIC (0xfec0_0000) and LAPIC (0xfee0_0000) are in it too
//! 0x1_0000_0000  RAM beyond 3 GiB continues here
//! ```
//!
//! Guest RAM is the memory below the MMIO gap plus, for guests larger than
//! 3 GiB, the rest above 4 GiB.

/// Where the GDT is written.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT is written.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity mapping (512 × 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line Linux 6.1 accepts on x86 (`COMMAND_LINE_SIZE`),
/// including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the MP floating pointer and table are written (in the last KiB of
/// base memory, one of the places Linux scans).
pub const MPTABLE_START: u64 = EBDA_START;
/// First address of high memory.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap (exclusive): 4 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The boot timer's MMIO page, first in the gap.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Last address usable by virtio-mmio slots (below the IOAPIC).
pub const VIRTIO_MMIO_END: u64 = 0xfec0_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// First IOAPIC pin handed out to virtio devices (0–4 are the timer,
/// keyboard, cascade and serial ports).
pub const IRQ_BASE: u32 = 5;
/// Last IOAPIC pin (the in-kernel IOAPIC has 24).
pub const IRQ_MAX: u32 = 23;
/// The identity map set up for the 64-bit entry covers this much.
pub const IDENTITY_MAP_SIZE: u64 = 1 << 30;
/// Address of the KVM TSS (three pages, inside the MMIO gap, unused by
/// devices), as `KVM_SET_TSS_ADDR` needs on Intel hosts.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

// The fixed regions must not overlap: checked at compile time.
const _: () = {
    assert!(BOOT_IDT_START >= BOOT_GDT_START + 4 * 8);
    assert!(PVH_MODLIST_START >= PVH_INFO_START + 56);
    assert!(PVH_MEMMAP_START >= PVH_MODLIST_START + 32);
    assert!(PVH_MEMMAP_START + 8 * 24 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= MPTABLE_START);
    assert!(BOOT_TIMER_START + 0x1000 <= VIRTIO_MMIO_START);
    assert!(KVM_TSS_ADDRESS >= APIC_START + 4096);
};

/// A range of guest RAM: `(start, size in bytes)`.
pub type RamRange = (u64, u64);

/// The RAM ranges of a guest with `mem_bytes` of memory: below the MMIO
/// gap, and the rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<RamRange> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// Kind of an e820 / PVH memory-map entry (Linux `E820_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// Usable RAM (`E820_TYPE_RAM` = 1).
    Ram = 1,
    /// Reserved (`E820_TYPE_RESERVED` = 2).
    Reserved = 2,
}

/// One entry of the guest memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: MemoryType,
}

/// The memory map given to the guest (e820 for the 64-bit entry, the PVH
/// memmap otherwise): base memory up to the EBDA, high memory up to the
/// gap, and RAM above 4 GiB. The MP table page and the legacy ROM area are
/// left out, so the kernel treats them as reserved.
pub fn memory_map(mem_bytes: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![MemoryMapEntry {
        addr: 0,
        size: EBDA_START,
        kind: MemoryType::Ram,
    }];
    for (start, size) in ram_ranges(mem_bytes) {
        let end = start + size;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: MemoryType::Ram,
            });
        }
    }
    map
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_has_one_ram_range() {
        assert_eq!(ram_ranges(128 * MIB), vec![(0, 128 * MIB)]);
        assert_eq!(low_ram_end(128 * MIB), 128 * MIB);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let mem = 4096 * MIB;
        assert_eq!(
            ram_ranges(mem),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem - MMIO_GAP_START)]
        );
        let map = memory_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr, HIMEM_START);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        assert_eq!(map[2].size, mem - MMIO_GAP_START);
    }

    #[test]
    fn memory_map_leaves_ebda_and_rom_area_out() {
        let map = memory_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                MemoryMapEntry {
                    addr: 0,
                    size: EBDA_START,
                    kind: MemoryType::Ram
                },
                MemoryMapEntry {
                    addr: HIMEM_START,
                    size: 128 * MIB - HIMEM_START,
                    kind: MemoryType::Ram
                },
            ]
        );
        // Nothing in the map covers the MP table or the MMIO gap.
        for e in &map {
            assert!(e.addr + e.size <= MPTABLE_START || e.addr >= HIMEM_START);
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }
}
