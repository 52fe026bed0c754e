//! Guest memory in a snapshot: one raw file (`memory` in the snapshot
//! directory) holding every RAM region back to back at page-aligned
//! offsets, written sparse (pages of zeroes are holes), and mapped
//! `MAP_PRIVATE` by the restoring process: pages are read from the file
//! (the page cache, shared by every VM restored from the same snapshot)
//! until the guest writes them, then copied for that VM alone.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

use vm_memory::mmap::MmapRegionBuilder;

use crate::arch::x86_64::layout::ram_ranges;

/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Page size the file's regions are aligned to, bytes.
pub const PAGE_SIZE: u64 = 4096;
/// Bytes copied out of guest memory per write.
const CHUNK: usize = 1 << 20;

/// One RAM region: where it is in the guest and in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Guest-physical start address.
    pub guest_addr: u64,
    /// Length in bytes (a multiple of [`PAGE_SIZE`]).
    pub size: u64,
    /// Offset of its first byte in the memory file.
    pub file_offset: u64,
}

/// The guest memory of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryState {
    /// The file's name in the snapshot directory (always [`MEMORY_FILE`]).
    pub file: String,
    /// The RAM regions, in guest address order.
    pub regions: Vec<RegionState>,
}

impl MemoryState {
    /// Total guest RAM in bytes.
    pub fn total(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }
}

/// Errors writing or mapping the memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file cannot be created, written, opened or mapped.
    #[error("guest memory file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The saved layout is not what capsa lays out for that much memory.
    #[error("invalid guest memory layout in the snapshot: {0}")]
    Layout(String),
}

/// Writes every region of `mem` to `path` (through a temporary file
/// renamed into place). Call with the vCPUs paused.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryState, MemoryFileError> {
    let io = |e: &dyn std::fmt::Display| MemoryFileError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| io(&e))?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let start = region.start_addr();
        let size = region.len();
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(CHUNK as u64) as usize;
            mem.read_slice(&mut buf[..n], start.unchecked_add(done))
                .map_err(|e| io(&e))?;
            write_nonzero_pages(&file, &buf[..n], offset + done).map_err(|e| io(&e))?;
            done += n as u64;
        }
        regions.push(RegionState {
            guest_addr: start.raw_value(),
            size,
            file_offset: offset,
        });
        offset += size;
    }
    file.set_len(offset).map_err(|e| io(&e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io(&e))?;
    Ok(MemoryState {
        file: MEMORY_FILE.into(),
        regions,
    })
}

/// Writes the pages of `buf` that are not all zeroes at `offset` (runs of
/// them in one write each); zero pages stay holes.
fn write_nonzero_pages(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    let page = PAGE_SIZE as usize;
    let mut run: Option<usize> = None;
    for (i, p) in buf.chunks(page).enumerate() {
        let zero = p.iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(i * page),
            (true, Some(s)) => {
                file.write_all_at(&buf[s..i * page], offset + s as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run {
        file.write_all_at(&buf[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Checks a snapshot's layout: exactly the RAM ranges capsa lays out for
/// its total (so every region is page-aligned and outside the MMIO gap),
/// stored back to back from offset 0.
pub fn check_layout(state: &MemoryState) -> Result<(), MemoryFileError> {
    if state.file != MEMORY_FILE {
        return Err(MemoryFileError::Layout(format!(
            "memory file {:?} (expected {MEMORY_FILE:?})",
            state.file
        )));
    }
    if state.regions.is_empty() || state.regions.len() > 8 {
        return Err(MemoryFileError::Layout(format!(
            "{} regions",
            state.regions.len()
        )));
    }
    let total = state
        .regions
        .iter()
        .try_fold(0u64, |t, r| t.checked_add(r.size))
        .ok_or_else(|| MemoryFileError::Layout("sizes overflow".into()))?;
    if total % (1 << 20) != 0 {
        return Err(MemoryFileError::Layout(format!(
            "{total} bytes is not a whole number of MiB"
        )));
    }
    let mut offset = 0u64;
    let expected = ram_ranges(total);
    if expected.len() != state.regions.len() {
        return Err(MemoryFileError::Layout(format!(
            "{} regions for {total} bytes, capsa lays out {}",
            state.regions.len(),
            expected.len()
        )));
    }
    for (r, (start, size)) in state.regions.iter().zip(expected) {
        if r.guest_addr != start || r.size != size || r.file_offset != offset {
            return Err(MemoryFileError::Layout(format!(
                "region at {:#x} (+{:#x}, file offset {:#x}) where capsa lays out {start:#x} (+{size:#x}, file offset {offset:#x})",
                r.guest_addr, r.size, r.file_offset
            )));
        }
        offset += size;
    }
    Ok(())
}

/// Opens the memory file of a snapshot in `dir` after [`check_layout`]
/// and a check that it holds every region; returns it with the maker of
/// its errors (naming the file).
fn open_checked(
    dir: &Path,
    state: &MemoryState,
) -> Result<(File, impl Fn(&dyn std::fmt::Display) -> MemoryFileError), MemoryFileError> {
    check_layout(state)?;
    let path = dir.join(MEMORY_FILE).display().to_string();
    let io = move |e: &dyn std::fmt::Display| MemoryFileError::Io {
        path: path.clone(),
        message: e.to_string(),
    };
    let file = File::open(dir.join(MEMORY_FILE)).map_err(|e| io(&e))?;
    let len = file.metadata().map_err(|e| io(&e))?.len();
    if len < state.total() {
        return Err(io(&format!(
            "{len} bytes, the snapshot's guest memory is {} bytes (truncated?)",
            state.total()
        )));
    }
    Ok((file, io))
}

/// Maps the memory file of a snapshot in `dir` `MAP_PRIVATE`, after
/// [`check_layout`] and a check that the file holds every region.
pub fn restore(dir: &Path, state: &MemoryState) -> Result<GuestMemoryMmap, MemoryFileError> {
    let (file, io) = open_checked(dir, state)?;
    let mut regions = Vec::with_capacity(state.regions.len());
    for r in &state.regions {
        let size = usize::try_from(r.size).map_err(|e| io(&e))?;
        let fo = FileOffset::new(file.try_clone().map_err(|e| io(&e))?, r.file_offset);
        let mapping = MmapRegionBuilder::new_with_bitmap(size, ())
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(fo)
            .build()
            .map_err(|e| io(&e))?;
        regions.push(
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
                .ok_or_else(|| io(&"region does not fit the guest address space"))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| io(&e))
}

/// Restores the memory of a snapshot in `dir` into a new memfd (the
/// layout of [`crate::vstate::memory::create`]), mapped shared, for a VM
/// whose memory a vhost-user backend must map too (virtio-fs): a private
/// mapping of the snapshot's file would show the backend the snapshot's
/// pages, not this VM's. Only the file's data extents are copied (its
/// holes are zero pages, as a new memfd's are), so the cost follows the
/// pages the snapshotted guest had written, not its RAM size.
pub fn restore_shared(dir: &Path, state: &MemoryState) -> Result<GuestMemoryMmap, MemoryFileError> {
    let (file, io) = open_checked(dir, state)?;
    let total = state.total();
    let mem = crate::vstate::memory::create(total).map_err(|e| io(&e))?;
    let memfd = mem
        .iter()
        .next()
        .and_then(|r| r.file_offset())
        .map(|f| f.file().try_clone())
        .ok_or_else(|| io(&"guest memory has no file"))?
        .map_err(|e| io(&e))?;
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in data_extents(&file, total).map_err(|e| io(&e))? {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
            file.read_exact_at(&mut buf[..n], at).map_err(|e| io(&e))?;
            memfd
                .write_all_at(&buf[..n], at)
                .map_err(|e| io(&format!("copying into guest memory: {e}")))?;
            at += n as u64;
        }
    }
    Ok(mem)
}

/// The data extents of `file` below `limit` (`SEEK_DATA`/`SEEK_HOLE`),
/// as `(start, end)` byte offsets; a file system without holes reports
/// the whole file as data.
fn data_extents(file: &File, limit: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut extents = Vec::new();
    let mut at: u64 = 0;
    while at < limit {
        let offset = i64::try_from(at).map_err(std::io::Error::other)?;
        let start = match lseek(file, offset, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= limit {
            break;
        }
        let end = lseek(file, start as i64, Whence::SeekHole).map_err(std::io::Error::from)? as u64;
        extents.push((start, end.min(limit)));
        at = end;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MMIO_GAP_START;

    #[test]
    fn saved_memory_maps_back_private_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let mem = crate::vstate::memory::create(64 << 20).unwrap();
        mem.write_obj(0xfeed_u64, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0xbeef_u64, GuestAddress((64 << 20) - 8))
            .unwrap();
        let path = dir.path().join(MEMORY_FILE);
        let state = save(&mem, &path).unwrap();
        assert_eq!(state.total(), 64 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 1 << 20, "zero pages are holes");

        let back = restore(dir.path(), &state).unwrap();
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x3000)).unwrap(), 0xfeed);
        assert_eq!(
            back.read_obj::<u64>(GuestAddress((64 << 20) - 8)).unwrap(),
            0xbeef
        );
        back.write_obj(1u64, GuestAddress(0x3000)).unwrap();
        let shared = restore_shared(dir.path(), &state).unwrap();
        assert_eq!(
            shared.read_obj::<u64>(GuestAddress(0x3000)).unwrap(),
            0xfeed
        );
        assert_eq!(
            shared
                .read_obj::<u64>(GuestAddress((64 << 20) - 8))
                .unwrap(),
            0xbeef
        );
        assert!(
            shared.iter().all(|r| r.file_offset().is_some()),
            "a memfd a vhost-user backend can map"
        );
        let again = restore(dir.path(), &state).unwrap();
        assert_eq!(
            again.read_obj::<u64>(GuestAddress(0x3000)).unwrap(),
            0xfeed,
            "a restored VM's writes stay private"
        );
    }

    #[test]
    fn layouts_other_than_capsa_s_are_refused() {
        let good = MemoryState {
            file: MEMORY_FILE.into(),
            regions: ram_ranges(MMIO_GAP_START + (64 << 20))
                .into_iter()
                .scan(0, |off, (s, l)| {
                    let r = RegionState {
                        guest_addr: s,
                        size: l,
                        file_offset: *off,
                    };
                    *off += l;
                    Some(r)
                })
                .collect(),
        };
        check_layout(&good).unwrap();
        let mut bad = good.clone();
        bad.regions[1].guest_addr = MMIO_GAP_START;
        assert!(check_layout(&bad).is_err());
        let mut bad = good.clone();
        bad.regions[1].file_offset += 4096;
        assert!(check_layout(&bad).is_err());
        let mut bad = good.clone();
        bad.file = "../etc/passwd".into();
        assert!(check_layout(&bad).is_err());
        let mut bad = good;
        bad.regions[0].size = u64::MAX;
        assert!(check_layout(&bad).is_err());
        assert!(restore(Path::new("/nonexistent"), &bad).is_err());
    }
}
