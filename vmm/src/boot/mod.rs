//! Loading the guest kernel and initramfs and writing what the kernel reads
//! at its entry: the command line, the memory map and either the Linux zero
//! page (64-bit entry, Documentation/arch/x86/boot.rst) or the PVH start
//! info (Xen `docs/misc/pvh.pandoc`).

pub mod cmdline;
pub mod initramfs;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::regs::EntryMode;
use crate::config::BootProtocol;

/// Errors loading the kernel or initramfs, or writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("kernel: cannot open {path}: {source}")]
    OpenKernel {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("kernel: {path} is neither an x86_64 ELF vmlinux nor a bzImage ({elf}; {bzimage})")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// Why the ELF loader refused it.
        elf: String,
        /// Why the bzImage loader refused it.
        bzimage: String,
    },
    /// The kernel is a valid image but cannot be loaded into this VM.
    #[error("kernel: cannot load {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The PVH entry was asked for but the kernel does not have one.
    #[error(
        "boot_protocol: pvh was requested but {0} has no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)"
    )]
    NoPvhEntry(PathBuf),
    /// The initramfs cannot be read.
    #[error("initramfs: cannot read {path}: {source}")]
    OpenInitramfs {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the end of low RAM.
    #[error(
        "initramfs: {path} ({size} bytes) does not fit in guest memory above the kernel; \
         raise memory_mib"
    )]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} into guest memory: {message}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// Where and how the loaded kernel starts.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry mode of the boot vCPU.
    pub mode: EntryMode,
    /// Guest physical address of the entry point.
    pub entry: u64,
    /// First guest physical address after the kernel image (incl. BSS).
    pub end: u64,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Loads the kernel at `path` into guest memory and picks its entry.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    protocol: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let load_err = |e: &dyn std::fmt::Display| BootError::Load {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let elf_err = match Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(res) => {
            let pvh = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
                _ => None,
            };
            let (mode, entry) = match (protocol, pvh) {
                (BootProtocol::Auto | BootProtocol::Pvh, Some(addr)) => (EntryMode::Pvh, addr),
                (BootProtocol::Pvh, None) => return Err(BootError::NoPvhEntry(path.to_owned())),
                (_, _) => (EntryMode::Linux64, res.kernel_load.0),
            };
            return Ok(LoadedKernel {
                mode,
                entry,
                end: res.kernel_end,
                setup_header: None,
            });
        }
        Err(linux_loader::loader::Error::Elf(
            e @ (linux_loader::loader::elf::Error::InvalidElfMagicNumber
            | linux_loader::loader::elf::Error::ReadElfHeader),
        )) => e.to_string(),
        Err(e) => return Err(load_err(&e)),
    };
    if protocol == BootProtocol::Pvh {
        return Err(BootError::NoPvhEntry(path.to_owned()));
    }
    match BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(res) => Ok(LoadedKernel {
            mode: EntryMode::Linux64,
            // startup_64 is 0x200 bytes into the protected-mode kernel.
            entry: res.kernel_load.0 + 0x200,
            end: res.kernel_end,
            setup_header: res.setup_header,
        }),
        Err(linux_loader::loader::Error::Bzimage(
            e @ (linux_loader::loader::bzimage::Error::InvalidBzImage
            | linux_loader::loader::bzimage::Error::ReadBzImageHeader
            | linux_loader::loader::bzimage::Error::SeekBzImageHeader
            | linux_loader::loader::bzimage::Error::SeekBzImageEnd),
        )) => Err(BootError::NotAKernel {
            path: path.to_owned(),
            elf: elf_err,
            bzimage: e.to_string(),
        }),
        Err(e) => Err(load_err(&e)),
    }
}

/// Loads the initramfs at the top of low RAM, page aligned, above
/// `kernel_end`. Returns its address and size in bytes.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_bytes: u64,
) -> Result<(u64, u64), BootError> {
    let open_err = |source| BootError::OpenInitramfs {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let too_large = || BootError::InitramfsTooLarge {
        path: path.to_owned(),
        size,
    };
    let addr = low_ram_end(mem_bytes)
        .checked_sub(size)
        .ok_or_else(too_large)?
        & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::Write {
            what: "initramfs",
            message: e.to_string(),
        })?;
    Ok((addr, size))
}

/// Writes the command line, the memory map and the zero page or PVH start
/// info for `kernel`.
pub fn configure(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initramfs: Option<(u64, u64)>,
    mem_bytes: u64,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(|e| {
        BootError::Write {
            what: "command line",
            message: e.to_string(),
        }
    })?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let map = memory_map(mem_bytes);
    let write_err = |what| {
        move |e: linux_loader::configurator::Error| BootError::Write {
            what,
            message: e.to_string(),
        }
    };
    match kernel.mode {
        EntryMode::Pvh => {
            const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
            let memmap: Vec<hvm_memmap_table_entry> = map
                .iter()
                .map(|e| hvm_memmap_table_entry {
                    addr: e.addr,
                    size: e.size,
                    type_: e.kind as u32,
                    reserved: 0,
                })
                .collect();
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC_VALUE,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let mut modules = Vec::new();
            if let Some((addr, size)) = initramfs {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_START;
                modules.push(hvm_modlist_entry {
                    paddr: addr,
                    size,
                    ..Default::default()
                });
            }
            let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if !modules.is_empty() {
                params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&params, mem).map_err(write_err("PVH start info"))
        }
        EntryMode::Linux64 => {
            let zero_page = zero_page(kernel.setup_header, cmdline_len, initramfs, &map);
            let params = BootParams::new(&zero_page, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&params, mem).map_err(write_err("zero page"))
        }
    }
}

/// The zero page for the 64-bit entry.
pub fn zero_page(
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    map: &[MemoryMapEntry],
) -> boot_params {
    const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
    const KERNEL_LOADER_OTHER: u8 = 0xff;
    const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Reads `len` bytes of guest memory at `addr`, for diagnostics.
pub fn read_guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn zero_page_has_magic_cmdline_initrd_and_e820() {
        let map = memory_map(128 * MIB);
        let p = zero_page(None, 42, Some((0x700_0000, 0x1234)), &map);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, 128 * MIB - HIMEM_START, 1)
        );
    }

    #[test]
    fn pvh_start_info_lists_memmap_and_module() {
        let m = mem(64 * MIB);
        let kernel = LoadedKernel {
            mode: EntryMode::Pvh,
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let cmdline = cmdline::build("quiet", &Default::default()).unwrap();
        configure(&m, &kernel, &cmdline, Some((0x300_0000, 0x1000)), 64 * MIB).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1000));
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (HIMEM_START, 64 * MIB - HIMEM_START, 1)
        );
        let mut cmd = [0u8; 15];
        m.read_slice(&mut cmd, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&cmd[..], b"quiet 8250.nr_u");
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let e = load_kernel(
            &mem(64 * MIB),
            Path::new("/nonexistent/vmlinux"),
            BootProtocol::Auto,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("kernel: cannot open /nonexistent/vmlinux"),
            "{e}"
        );
    }

    #[test]
    fn file_that_is_not_a_kernel_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notakernel");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let e = load_kernel(&mem(64 * MIB), &path, BootProtocol::Auto).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
        std::fs::write(&path, b"").unwrap();
        let e = load_kernel(&mem(64 * MIB), &path, BootProtocol::Auto).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let m = mem(64 * MIB);
        let (addr, size) = load_initramfs(&m, &path, 0x200_0000, 64 * MIB).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 * MIB && addr + size + 4096 > 64 * MIB);
        let mut b = [0u8; 1];
        m.read_slice(&mut b, GuestAddress(addr + 4999)).unwrap();
        assert_eq!(b[0], 7);
    }

    #[test]
    fn initramfs_overlapping_the_kernel_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let m = mem(32 * MIB);
        let e = load_initramfs(&m, &path, 32 * MIB - 4096, 32 * MIB).unwrap_err();
        assert!(matches!(e, BootError::InitramfsTooLarge { .. }), "{e}");
    }
}
