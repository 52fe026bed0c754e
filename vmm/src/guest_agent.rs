//! The guest agent on the host side: finding its binary and packing it as
//! the `/init` of an uncompressed initramfs, cached by content.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use crate::boot::initramfs::CpioWriter;

/// Environment variable naming the agent binary.
pub const AGENT_ENV: &str = "CAPSA_AGENT";

/// Where the agent is looked for, in order: `$CAPSA_AGENT`; `capsa-agent`
/// next to the running `capsa`; the static build of a development
/// checkout (`target/x86_64-unknown-linux-gnu/release/capsa-agent`, as
/// `guest-agent/build.sh` makes it); `/usr/local/lib/capsa` and
/// `/usr/lib/capsa`.
pub fn locate() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{AGENT_ENV}={} is not a file", p.display()),
            ))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("capsa-agent"));
            // target/{debug,release}/capsa -> target/x86_64-unknown-linux-gnu/release/
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/capsa-agent"));
            }
        }
    }
    candidates.push("/usr/local/lib/capsa/capsa-agent".into());
    candidates.push("/usr/lib/capsa/capsa-agent".into());
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cannot find the guest agent (capsa-agent): build it with guest-agent/build.sh \
                 or set {AGENT_ENV}"
            ),
        )
    })
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
