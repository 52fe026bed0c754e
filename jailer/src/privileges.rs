//! Dropping root: the capability bounding and ambient sets emptied,
//! supplementary groups cleared, then gid, then uid (real, effective and
//! saved alike, so that nothing can switch back), then
//! `PR_SET_NO_NEW_PRIVS` (also set by the seccomp installation).

use anyhow::{bail, Context, Result};
use nix::unistd::{getegid, geteuid, getgid, getuid, setgroups, setresgid, setresuid, Gid, Uid};

/// Drops to `uid`:`gid` with no supplementary groups; all capabilities
/// are lost with the uid change (capabilities(7), "Effect of user ID
/// changes on capabilities").
pub fn drop_to(uid: u32, gid: u32) -> Result<()> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    drop_capability_sets()?;
    setgroups(&[]).context("setgroups([])")?;
    setresgid(g, g, g).with_context(|| format!("--gid {gid}: setresgid"))?;
    setresuid(u, u, u).with_context(|| format!("--uid {uid}: setresuid"))?;
    if getuid() != u || geteuid() != u || getgid() != g || getegid() != g {
        bail!("the uid/gid did not change to {uid}:{gid}");
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    Ok(())
}

/// Empties the bounding set (no capability can be gained again, even
/// through a file's capabilities) and the ambient set.
fn drop_capability_sets() -> Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(e).with_context(|| format!("prctl(PR_CAPBSET_DROP, {cap})"));
        }
    }
    // SAFETY: as above.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("clearing the ambient capabilities");
    }
    Ok(())
}
