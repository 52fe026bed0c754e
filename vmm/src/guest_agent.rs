//! The guest agent on the host side: finding its binary and packing it as
//! the `/init` of an uncompressed initramfs, cached by content.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use crate::boot::initramfs::CpioWriter;

/// Environment variable naming the agent binary.
pub const AGENT_ENV: &str = "CAPSA_AGENT";

/// Where the agent is looked for, in order: `$CAPSA_AGENT`; `capsa-agent`
/// next to the running `capsa` (unless that is a debug build); the static
/// build of a development
/// checkout (`target/x86_64-unknown-linux-gnu/release/capsa-agent`, as
/// `guest-agent/build.sh` makes it); `/usr/local/lib/capsa` and
/// `/usr/lib/capsa`. Only a statically linked binary qualifies: the
/// initramfs has no dynamic loader, so a dynamically linked agent would
/// fail as `/init` with ENOENT.
pub fn locate() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV) {
        let p = PathBuf::from(p);
        return match is_static_elf(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{AGENT_ENV}={} is dynamically linked; build it with guest-agent/build.sh",
                    p.display()
                ),
            )),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{AGENT_ENV}={}: {e}", p.display()),
            )),
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = crate::install::exe_dir() {
        // Not the debug build next to a debug `capsa`: the guest's init
        // should not be an unoptimised binary.
        if !dir.ends_with("debug") {
            candidates.push(dir.join("capsa-agent"));
        }
        // target/x86_64-unknown-linux-gnu/debug/capsa -> .../release/
        // (guest-agent/build.sh always builds the release profile).
        if let Some(target) = dir.parent() {
            candidates.push(target.join("release/capsa-agent"));
        }
    }
    candidates.extend(crate::install::in_lib_dirs("capsa-agent"));
    candidates
        .into_iter()
        .find(|p| matches!(is_static_elf(p), Ok(true)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                "cannot find the guest agent (capsa-agent): build it with guest-agent/build.sh \
                 or set {AGENT_ENV}"
            ),
            )
        })
}

/// Whether `path` is an x86_64 ELF executable without a program
/// interpreter (`PT_INTERP`), i.e. one that runs without a dynamic loader.
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_INTERP: u32 = 3;
    let mut f = std::fs::File::open(path)?;
    let mut ehdr = [0u8; 64];
    if f.read_exact(&mut ehdr).is_err() || &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 {
        return Ok(false);
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([ehdr[54], ehdr[55]]));
    let phnum = u16::from_le_bytes([ehdr[56], ehdr[57]]);
    if phentsize < 56 {
        return Ok(false);
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 4];
        f.seek(SeekFrom::Start(phoff.saturating_add(i * phentsize)))?;
        f.read_exact(&mut ph)?;
        if u32::from_le_bytes(ph) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes an initramfs whose `/init` is `agent` (plus the directories and
/// device nodes the agent needs before devtmpfs is mounted) to `out`.
pub fn write_initramfs(agent: &[u8], out: &Path) -> io::Result<()> {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    let mut w = CpioWriter::new(io::BufWriter::new(file));
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        w.dir(dir, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("init", 0o755, agent)?;
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, out)
}

/// The initramfs for `agent`, built once into `cache_dir` and reused while
/// the agent binary's content is the same.
pub fn initramfs(agent: &Path, cache_dir: &Path) -> io::Result<PathBuf> {
    let bytes = std::fs::read(agent)
        .map_err(|e| io::Error::new(e.kind(), format!("guest agent {}: {e}", agent.display())))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let out = cache_dir.join(format!("agent-{:016x}.cpio", h.finish()));
    if !out.is_file() {
        std::fs::create_dir_all(cache_dir)?;
        write_initramfs(&bytes, &out)?;
    }
    Ok(out)
}

/// capsa's cache directory: `$CAPSA_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/capsa`, else `~/.cache/capsa`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAPSA_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("capsa");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/capsa")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_static_executables_qualify_as_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&text).unwrap());
        // The test binary is static, as every binary of the workspace
        // (.cargo/config.toml); Debian's /bin/sh (dash) is not.
        let me = std::env::current_exe().unwrap();
        assert!(is_static_elf(&me).unwrap());
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        if Path::new("/bin/busybox").is_file() {
            assert!(is_static_elf(Path::new("/bin/busybox")).unwrap());
        }
    }

    #[test]
    fn initramfs_is_cached_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF fake agent").unwrap();
        let a = initramfs(&agent, dir.path()).unwrap();
        let b = initramfs(&agent, dir.path()).unwrap();
        assert_eq!(a, b);
        let data = std::fs::read(&a).unwrap();
        assert!(data.windows(5).any(|w| w == b"init\0"));
        std::fs::write(&agent, b"\x7fELF another agent").unwrap();
        assert_ne!(initramfs(&agent, dir.path()).unwrap(), a);
    }
}
