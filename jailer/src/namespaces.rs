//! Namespaces of the VMM: a new private mount namespace (always), the
//! network namespace given by `--netns` or a new one with `--new-net-ns`,
//! a new pid namespace with `--new-pid-ns` and a new IPC namespace with
//! `--new-ipc-ns` (namespaces(7)).

use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;

/// Opens the `--netns` handle (e.g. `/var/run/netns/NAME`), before any
/// work is done, so that a bad path fails early.
pub fn open_netns(path: &Path) -> Result<OwnedFd> {
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("--netns {}: cannot open", path.display()))
}

/// Joins the network namespace `fd` (from [`open_netns`]).
pub fn join_netns(fd: &OwnedFd, path: &Path) -> Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET).with_context(|| {
        format!(
            "--netns {}: setns (is it a network namespace?)",
            path.display()
        )
    })
}

/// Enters a new network namespace (`--new-net-ns`): no device but a
/// loopback that is down, so the VMM reaches no network.
pub fn new_net_ns() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).context("--new-net-ns: unshare(CLONE_NEWNET)")
}

/// Enters a new IPC namespace (`--new-ipc-ns`): System V IPC objects and
/// POSIX message queues of its own, none of the host's.
pub fn new_ipc_ns() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWIPC).context("--new-ipc-ns: unshare(CLONE_NEWIPC)")
}

/// Enters a new mount namespace and makes every mount in it private, so
/// that nothing mounted from here on propagates back to the host.
pub fn new_private_mount_ns() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making all mounts private (mount --make-rprivate /)")
}

/// Makes the next child of the calling process pid 1 of a new pid
/// namespace (the caller itself stays where it is).
pub fn new_pid_ns_for_children() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWPID).context("--new-pid-ns: unshare(CLONE_NEWPID)")
}
