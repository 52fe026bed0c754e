//! Just enough ELF (System V gABI, "Program Header") to find the program
//! interpreter (`PT_INTERP`) of the exec file: a dynamically linked binary
//! cannot start in a jail that does not hold its interpreter and
//! libraries, and the jailer says so before building anything.

use std::io::Read;
use std::path::{Path, PathBuf};

const PT_INTERP: u32 = 3;

/// The `PT_INTERP` path of the 64-bit little-endian ELF file at `path`;
/// `None` for a static binary or a file that is not such an ELF (a script,
/// for which `execve` reports its own error).
pub fn interpreter(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut data = Vec::new();
    // Program headers and the interpreter string sit near the start; 64 KiB
    // is plenty and bounds what a hostile file can make us read.
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut data)?;
    Ok(interpreter_of(&data))
}

fn interpreter_of(data: &[u8]) -> Option<PathBuf> {
    let u16_at = |o: usize| {
        Some(u16::from_le_bytes(
            data.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |o: usize| {
        Some(u32::from_le_bytes(
            data.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |o: usize| {
        Some(u64::from_le_bytes(data.get(o..o.checked_add(8)?)?.try_into().ok()?) as usize)
    };
    // \x7fELF, ELFCLASS64, ELFDATA2LSB.
    if data.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = u64_at(0x20)?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == PT_INTERP {
            let off = u64_at(ph.checked_add(0x08)?)?;
            let size = u64_at(ph.checked_add(0x20)?)?;
            let bytes = data.get(off..off.checked_add(size)?)?;
            let s = bytes.split(|&b| b == 0).next()?;
            return Some(PathBuf::from(String::from_utf8_lossy(s).into_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_a_dynamic_binary() {
        // The test binary itself is dynamically linked (glibc target).
        let me = std::env::current_exe().unwrap();
        let interp = interpreter(&me).unwrap();
        if cfg!(target_feature = "crt-static") {
            assert_eq!(interp, None);
        } else {
            let interp = interp.expect("PT_INTERP");
            assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        }
    }

    #[test]
    fn non_elf_and_truncated_files_have_none() {
        assert_eq!(interpreter_of(b"#!/bin/sh\n"), None);
        assert_eq!(interpreter_of(b"\x7fELF\x02\x01\x01"), None);
        let mut bogus = b"\x7fELF\x02\x01".to_vec();
        bogus.resize(64, 0xff);
        assert_eq!(interpreter_of(&bogus), None);
    }
}
