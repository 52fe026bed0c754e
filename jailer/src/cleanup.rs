//! `capsa-jailer cleanup`: removes what a jailed start left on the host
//! once the VMM has exited: the jail directory
//! `<chroot-base>/<exec-file name>/<id>` and the cgroup directories
//! `<parent-cgroup>/<id>` of every mounted hierarchy. Bind mounts and the
//! `/dev` and `/proc` mounts need no cleanup: they live only in the VMM's
//! mount namespace, which ended with it.

use anyhow::{bail, Context, Result};

use capsa_cgroup::Mounts;

use crate::cgroup::{self, CgroupPlan};
use crate::chroot::JailPaths;
use crate::cli::CleanupArgs;

/// Removes the jail and cgroups of `--id`; refuses while the VMM runs
/// (its cgroups still hold processes, or the process of the pid file has
/// the jail as its root). What does not exist is skipped, so running it
/// twice is fine.
pub fn run(args: CleanupArgs) -> Result<()> {
    let paths = JailPaths::new(&args.chroot_base_dir, &args.exec_file, &args.id)?;
    if let Some(pid) = running_vmm(&paths) {
        bail!("the VMM of --id {} is still running (pid {pid})", args.id);
    }
    let mounts = Mounts::read()?;
    let dirs = match args.cgroup_version.or_else(|| mounts.version()) {
        Some(v) => CgroupPlan::all_dirs(v, &mounts, &args.parent_cgroup, &args.id),
        None => Vec::new(),
    };
    let existing: Vec<_> = dirs.into_iter().filter(|d| d.is_dir()).collect();
    if let Some(busy) = existing.iter().find(|d| capsa_cgroup::has_processes(d)) {
        bail!(
            "cgroup {} still has processes: the VMM of --id {} is still running",
            busy.display(),
            args.id
        );
    }
    for d in &existing {
        cgroup::remove_dir(d).with_context(|| format!("cannot remove cgroup {}", d.display()))?;
    }
    match std::fs::remove_dir_all(&paths.jail_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", paths.jail_dir.display()))
        }
        _ => Ok(()),
    }
}

/// The pid of the pid file when that process still runs in this jail:
/// the root mount of its mount namespace is the jail's root directory
/// (mountinfo's fields 4 and 5, proc(5)).
fn running_vmm(paths: &JailPaths) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(&paths.pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let root = paths.root.to_str()?;
    mountinfo
        .lines()
        .any(|l| {
            let mut f = l.split(' ').skip(3);
            f.next() == Some(root) && f.next() == Some("/")
        })
        .then_some(pid)
}
