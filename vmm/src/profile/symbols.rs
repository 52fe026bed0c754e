//! Naming guest kernel addresses with the kernel's `System.map` (the
//! `nm`-style list that `make vmlinux` writes: `address type name` per
//! line), which `kernel-config/build.sh` keeps next to `vmlinux`.

use std::path::{Path, PathBuf};

/// Where the kernel image is mapped (`__START_KERNEL_map`, Linux
/// arch/x86/include/asm/page_64_types.h): the kernel's text at physical
/// address P runs at virtual address `KERNEL_MAP + P`. The entry code runs
/// at physical addresses before paging is on, so those are named too.
pub const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Text symbols of a kernel, sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (address, name), sorted by address.
    text: Vec<(u64, String)>,
    /// The kernel's text sections (`_text`.. `_etext`, `_sinittext`..
    /// `_einittext`) when the map has their bounds; else everything
    /// below `_end`. Addresses elsewhere (data, stale stack words) are
    /// not named after the last function before them.
    ranges: Vec<(u64, u64)>,
}

impl Symbols {
    /// Parses the text of a `System.map`. Lines that are not
    /// `address type name` are skipped; only text symbols (`t`, `T`, `w`,
    /// `W`) name addresses.
    pub fn parse(map: &str) -> Self {
        let mut text = Vec::new();
        let mut marks: std::collections::HashMap<&str, u64> = Default::default();
        for line in map.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if matches!(
                name,
                "_text" | "_etext" | "_sinittext" | "_einittext" | "_end"
            ) {
                marks.insert(name, addr);
            }
            if matches!(kind, "t" | "T" | "w" | "W") {
                text.push((addr, name.to_owned()));
            }
        }
        text.sort_by_key(|(a, _)| *a);
        let mut ranges = Vec::new();
        for (from, to) in [("_text", "_etext"), ("_sinittext", "_einittext")] {
            if let (Some(a), Some(b)) = (marks.get(from), marks.get(to)) {
                ranges.push((*a, *b));
            }
        }
        if ranges.is_empty() {
            let first = text.first().map(|(a, _)| *a).unwrap_or(0);
            ranges.push((first, marks.get("_end").copied().unwrap_or(u64::MAX)));
        }
        Self { text, ranges }
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// How many text symbols there are.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The function that contains kernel-mode address `rip`: the nearest
    /// text symbol at or below it, within the kernel image. A low address
    /// is taken as a physical one (early entry code) and moved into the
    /// kernel map first.
    pub fn name(&self, rip: u64) -> Option<&str> {
        let first = self.text.first()?.0;
        let addr = if rip < first && rip < (1 << 30) {
            rip.checked_add(KERNEL_MAP)?
        } else {
            rip
        };
        if addr < first || !self.ranges.iter().any(|(a, b)| (*a..*b).contains(&addr)) {
            return None;
        }
        let i = self.text.partition_point(|(a, _)| *a <= addr);
        self.text.get(i.checked_sub(1)?).map(|(_, n)| n.as_str())
    }
}

/// The `System.map` next to `kernel`, if there is one.
pub fn beside(kernel: &Path) -> Option<PathBuf> {
    let map = kernel.parent()?.join("System.map");
    map.is_file().then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81001000 T clear_page_erms
ffffffff81002000 W weak_fn
ffffffff81003000 T _etext
ffffffff82000000 D some_data
ffffffff82100000 T _sinittext
ffffffff82100000 T start_kernel
ffffffff82110000 T _einittext
ffffffff82200000 t some_exit_fn
ffffffff83000000 B _end
garbage line
";

    #[test]
    fn names_the_nearest_text_symbol_below() {
        let s = Symbols::parse(MAP);
        assert_eq!(s.len(), 10);
        assert_eq!(s.name(0xffff_ffff_8100_0000), Some("startup_64"));
        assert_eq!(s.name(0xffff_ffff_8100_0150), Some("secondary_startup_64"));
        assert_eq!(s.name(0xffff_ffff_8100_1fff), Some("clear_page_erms"));
        assert_eq!(s.name(0xffff_ffff_8100_2010), Some("weak_fn"));
        assert_eq!(s.name(0xffff_ffff_8210_0040), Some("start_kernel"));
    }

    #[test]
    fn physical_entry_addresses_are_named_and_outside_is_not() {
        let s = Symbols::parse(MAP);
        assert_eq!(s.name(0x100_1004), Some("clear_page_erms"));
        assert_eq!(s.name(0xffff_ffff_8200_0010), None, "data");
        assert_eq!(s.name(0xffff_ffff_8220_0010), None, "not in a text section");
        assert_eq!(s.name(0xffff_ffff_8300_0000), None, "past _end");
        assert_eq!(s.name(0x7fff_0000_0000), None);
        assert_eq!(s.name(0), None);
        assert_eq!(Symbols::default().name(0xffff_ffff_8100_0000), None);
    }
}
