//! Embeds the cache key of the guest kernel that this checkout's
//! `kernel-config/` describes (`kernel-config/build.sh --key`) as
//! `CAPSA_KERNEL_KEY`, so that `capsa` boots the kernel built from the same
//! sources as itself rather than whichever cached kernel is newest. Without
//! Debian's `linux-source-6.1` there is no key, and `capsa` falls back to
//! the newest cached kernel (`install::kernel`).

use std::path::Path;
use std::process::Command;

fn main() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config");
    println!("cargo:rerun-if-changed={}", config.display());
    let key = Command::new("bash")
        .arg(config.join("build.sh"))
        .arg("--key")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(key) = key {
        println!("cargo:rustc-env=CAPSA_KERNEL_KEY={key}");
    }
}
