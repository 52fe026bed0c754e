//! Cgroups of capsa's host processes, the mechanism that both of their
//! makers share: `capsa create` (the VM's cgroup at `linux.cgroupsPath`,
//! `vmm/src/runtime/cgroup.rs`) and `capsa-jailer --cgroup`
//! (`jailer/src/cgroup.rs`). Each caller keeps its own policy — which
//! hierarchies, which path, which values — and uses this crate for:
//!
//! - [`Mounts`]: the mounted hierarchies, read from
//!   `/proc/self/mountinfo` (proc(5)); v1 controller hierarchies and named
//!   ones (`name=systemd`), the unified (v2) one, and the [`Version`] in
//!   use (v1 also on "hybrid" hosts, whose v2 mount holds no controllers);
//! - [`Hierarchy::dir`] and [`Hierarchy::own_cgroup`]: where a cgroup's
//!   directory is (`/proc/self/cgroup`, cgroups(7), for relative paths);
//! - [`create`]: a directory and the missing levels above it, with the
//!   v2 controllers enabled in `cgroup.subtree_control` on the way down
//!   (Documentation/admin-guide/cgroup-v2.rst) and a new v1 cpuset level
//!   given its parent's CPUs and memory nodes
//!   (Documentation/admin-guide/cgroup-v1/cpusets.rst);
//! - [`set`] (a limit), [`join`] and [`open_procs`]/[`join_in_child`]
//!   (`0` into `cgroup.procs`), [`remove`] (retrying the `EBUSY` of a
//!   cgroup whose last task is still exiting) and [`has_processes`].
//!
//! Why not a crate of the registry: `procfs` parses mountinfo but keeps
//! the mount point escaped (`\040`) and the options in a `HashMap` (the
//! controllers' order is lost), so it would not remove the parsing here;
//! `cgroups-rs` decides paths and hierarchies itself, which is the
//! callers' policy.
#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

mod dir;
mod mounts;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use dir::{create, has_processes, join, join_in_child, open_procs, remove, set};
pub use mounts::{Hierarchy, Mounts, Version, MOUNTINFO, OWN_CGROUP};

use std::path::PathBuf;

/// What went wrong; the caller adds which of its inputs asked for it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation on a cgroup file or directory failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create`, …).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// v2: a controller to enable is not in the parent's
    /// `cgroup.controllers`.
    #[error(
        "the cgroup v2 controller {controller:?} is not available in {} (it lists: {available})",
        dir.display()
    )]
    Unavailable {
        /// The controller.
        controller: String,
        /// The directory whose `cgroup.controllers` lacks it.
        dir: PathBuf,
        /// What that file lists.
        available: String,
    },
}

impl Error {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
