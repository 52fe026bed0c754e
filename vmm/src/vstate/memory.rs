//! Guest memory: one memfd, mapped shared, split into the RAM ranges of the
//! layout. memfd-backed so that a vhost-user backend (virtiofsd) can map
//! the same pages.

use std::fs::File;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::x86_64::layout::ram_ranges;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The memfd cannot be created or sized.
    #[error("cannot create {} MiB of guest memory: {source}", size >> 20)]
    Memfd {
        /// Requested size in bytes.
        size: u64,
        /// Why.
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("cannot map {} MiB of guest memory: {message}", size >> 20)]
    Map {
        /// Requested size in bytes.
        size: u64,
        /// Why.
        message: String,
    },
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("cannot register guest memory with KVM: {0}")]
    Register(kvm_ioctls::Error),
}

/// Creates `mem_bytes` of guest memory laid out by [`ram_ranges`].
pub fn create(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let memfd_err = |source| MemoryError::Memfd {
        size: mem_bytes,
        source,
    };
    let map_err = |message| MemoryError::Map {
        size: mem_bytes,
        message,
    };
    let fd = nix::sys::memfd::memfd_create(
        c"capsa-guest-memory",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| memfd_err(e.into()))?;
    let file = File::from(fd);
    file.set_len(mem_bytes).map_err(memfd_err)?;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, size) in ram_ranges(mem_bytes) {
        let file = file.try_clone().map_err(memfd_err)?;
        let len = usize::try_from(size).map_err(|e| map_err(e.to_string()))?;
        regions.push((
            GuestAddress(start),
            len,
            Some(FileOffset::new(file, offset)),
        ));
        offset += size;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(|e| map_err(e.to_string()))
}

/// Registers every region of `mem` as a KVM memory slot (slot = index).
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr =
            mem.get_host_address(region.start_addr())
                .map_err(|e| MemoryError::Map {
                    size: region.len(),
                    message: e.to_string(),
                })?;
        let kvm_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // VMM keeps alive for as long as the VM exists; its size is exactly
        // `memory_size` and it does not overlap any other slot.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_is_memfd_backed_and_writable() {
        let mem = create(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert!(region.file_offset().is_some());
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }
}
