//! The container's root directory as a virtio-blk disk (the `block`
//! rootfs transport, annotation `io.capsa.rootfs=block`; by default the
//! directory is shared through virtio-fs instead, see [`super::virtiofsd`]).
//!
//! The bundle's root directory becomes an ext4 image made by the real tool
//! (`mkfs.ext4 -d`), cached under `<cache>/rootfs/<key>.ext4`. The key
//! hashes, for every entry of the tree (not following symlinks), its
//! relative path, type, mode, owner, size, modification time and symlink
//! target — the quick check of rsync and make — so an unchanged tree is not
//! rebuilt, and any change (even of one byte, through the mtime) is. The
//! disk is offered read-only and shared by every container of the same
//! tree; the guest writes into a tmpfs overlay (see docs/runtime.md).

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Result, RuntimeError};

/// What a walk of a tree found.
#[derive(Debug, Default)]
struct TreeSummary {
    key: u64,
    data_bytes: u64,
    entries: u64,
}

fn walk(root: &Path) -> Result<TreeSummary> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut sum = TreeSummary::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path)
            .map_err(|e| RuntimeError::io(format!("rootfs: stat {}", path.display()), e))?;
        rel.hash(&mut h);
        (md.mode(), md.uid(), md.gid(), md.size(), md.rdev()).hash(&mut h);
        (md.mtime(), md.mtime_nsec()).hash(&mut h);
        sum.entries += 1;
        sum.data_bytes += md.size().div_ceil(4096) * 4096;
        if md.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&path) {
                t.hash(&mut h);
            }
        } else if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(|e| RuntimeError::io(format!("rootfs: read {}", path.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            // Reverse, so that the stack pops them in order.
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        }
    }
    sum.key = h.finish();
    Ok(sum)
}

/// Runs `mkfs.ext4 -d dir out` with a size that fits the tree.
pub fn build_ext4(dir: &Path, out: &Path) -> Result<()> {
    let sum = walk(dir)?;
    build_ext4_sized(dir, out, &sum)
}

fn build_ext4_sized(dir: &Path, out: &Path, sum: &TreeSummary) -> Result<()> {
    // Data plus a block per entry (directories, inline data, extents) plus
    // a fifth for ext4's own metadata, at least 16 MiB. The file is sparse.
    let bytes = (sum.data_bytes + sum.entries * 4096) * 6 / 5 + (16 << 20);
    let size_kib = bytes.div_ceil(1024);
    let inodes = sum.entries + 1024;
    let _ = std::fs::remove_file(out);
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-N",
        ])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(dir)
        .arg(out)
        .arg(format!("{size_kib}k"))
        .output()
        .map_err(|e| {
            RuntimeError::Image(format!(
                "cannot run mkfs.ext4 ({e}); install e2fsprogs (scripts/setup.sh)"
            ))
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        return Err(RuntimeError::Image(format!(
            "mkfs.ext4 -d {} failed ({}): {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// The cached ext4 image of the tree at `rootfs`, built when missing.
pub fn rootfs_image(rootfs: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let sum = walk(rootfs)?;
    let dir = cache_dir.join("rootfs");
    let image = dir.join(format!("{:016x}.ext4", sum.key));
    if image.is_file() {
        tracing::debug!(image = %image.display(), "rootfs image cached");
        return Ok(image);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| RuntimeError::io(format!("mkdir {}", dir.display()), e))?;
    let tmp = image.with_extension(format!("tmp{}", std::process::id()));
    build_ext4_sized(rootfs, &tmp, &sum)?;
    std::fs::rename(&tmp, &image)
        .map_err(|e| RuntimeError::io(format!("rename to {}", image.display()), e))?;
    tracing::info!(image = %image.display(), "rootfs image built");
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/a"), "1").unwrap();
        let k1 = walk(d.path()).unwrap().key;
        assert_eq!(k1, walk(d.path()).unwrap().key);
        std::fs::write(d.path().join("etc/a"), "22").unwrap();
        assert_ne!(k1, walk(d.path()).unwrap().key);
    }

    #[test]
    fn image_is_built_once() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/x"), "x").unwrap();
        let cache = d.path().join("cache");
        let a = rootfs_image(&tree, &cache).unwrap();
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = rootfs_image(&tree, &cache).unwrap();
        assert_eq!(a, b);
        assert_eq!(mtime, std::fs::metadata(&b).unwrap().modified().unwrap());
    }
}
