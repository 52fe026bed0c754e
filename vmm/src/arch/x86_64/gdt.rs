//! Global descriptor table entries for the boot vCPU (Intel SDM vol. 3A,
//! §3.4.5 "Segment Descriptors").

use kvm_bindings::kvm_segment;

/// Builds a segment descriptor from its flags (access byte in bits 0–7,
/// flags nibble in bits 12–15, as Linux's `GDT_ENTRY` takes them), base and
/// limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// 64-bit code segment: present, DPL 0, execute/read, long mode (L), 4 KiB
/// granularity.
pub const CODE64: u16 = 0xa09b;
/// 32-bit code segment for the PVH entry: present, execute/read, D/B, G.
pub const CODE32: u16 = 0xc09b;
/// Flat data segment: present, read/write, D/B, G.
pub const DATA: u16 = 0xc093;
/// 64-bit TSS descriptor (busy).
pub const TSS: u16 = 0x808b;

/// The boot GDT: null, code, data, TSS (selectors 0x8, 0x10, 0x18).
pub fn boot_gdt(code: u16) -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0xfffff),
    ]
}

/// The `kvm_segment` that loading selector `index * 8` of a GDT holding
/// `entry` would produce.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from((entry >> 47) & 1 == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_fields() {
        let gdt = boot_gdt(CODE64);
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!(cs.selector, 0x8);
        assert_eq!(cs.type_, 0xb);
        assert_eq!(
            (cs.present, cs.s, cs.l, cs.db, cs.g, cs.dpl),
            (1, 1, 1, 0, 1, 0)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn code32_and_data_segment_fields() {
        let gdt = boot_gdt(CODE32);
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!((cs.l, cs.db), (0, 1));
        let ds = segment_from_gdt(gdt[2], 2);
        assert_eq!(ds.selector, 0x10);
        assert_eq!(ds.type_, 0x3);
        let tss = segment_from_gdt(gdt[3], 3);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
        let null = segment_from_gdt(gdt[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn entry_encoding_matches_linux_gdt_entry() {
        // GDT_ENTRY_INIT(0xa09b, 0, 0xfffff) from arch/x86/include/asm/desc_defs.h
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
