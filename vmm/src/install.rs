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
