//! Where capsa looks for the files it ships with (the guest kernel, the
//! guest agent, `capsa-jailer`): next to the running `capsa`, then in the
//! library directories of an installation.

use std::path::{Path, PathBuf};

/// Library directories of an installation, in the order they are searched.
pub const LIB_DIRS: [&str; 2] = ["/usr/local/lib/capsa", "/usr/lib/capsa"];

/// The directory of the running `capsa` binary.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
}

/// `name` in each of [`LIB_DIRS`].
pub fn in_lib_dirs(name: &str) -> impl Iterator<Item = PathBuf> + '_ {
    LIB_DIRS.iter().map(move |d| Path::new(d).join(name))
}

/// The cache key of the guest kernel this build of capsa belongs to
/// (`kernel-config/build.sh --key` at build time, `vmm/build.rs`).
pub const KERNEL_KEY: Option<&str> = option_env!("CAPSA_KERNEL_KEY");

/// The guest kernel: `$CAPSA_KERNEL`; `vmlinux` next to `capsa`;
/// `<cache>/kernel/<KERNEL_KEY>/vmlinux`, what `kernel-config/build.sh`
/// makes from the sources capsa was built with (only when capsa was built
/// without a key: the newest `<cache>/kernel/*/vmlinux`);
/// `/usr/local/lib/capsa/vmlinux`, `/usr/lib/capsa/vmlinux`.
///
/// Errors: none of them exists (`NotFound`, saying how to build it).
pub fn kernel() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSA_KERNEL") {
        return Ok(p.into());
    }
    let mut candidates: Vec<PathBuf> = exe_dir().map(|d| d.join("vmlinux")).into_iter().collect();
    let cached = crate::guest_agent::cache_dir().join("kernel");
    match KERNEL_KEY {
        Some(key) => candidates.push(cached.join(key).join("vmlinux")),
        None => {
            if let Ok(entries) = std::fs::read_dir(&cached) {
                let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
                    .filter_map(|e| {
                        let p = e.ok()?.path().join("vmlinux");
                        Some((std::fs::metadata(&p).ok()?.modified().ok()?, p))
                    })
                    .collect();
                found.sort();
                candidates.extend(found.into_iter().rev().map(|(_, p)| p));
            }
        }
    }
    candidates.extend(in_lib_dirs("vmlinux"));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        let which = KERNEL_KEY.map_or(String::new(), |k| format!(" {k}"));
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "cannot find the guest kernel{which}: run kernel-config/build.sh \
                 (scripts/setup.sh) or set CAPSA_KERNEL"
            ),
        )
    })
}
