//! The jail's file system.
//!
//! On the host, before the VMM's process exists ([`prepare`]):
//! `<chroot-base>/<exec-file name>/<id>/root` is created, the exec file is
//! hard-linked into it (or, on another file system, an empty file is made
//! that [`enter`] bind-mounts the exec file on, read-only), the mount points are made, and the
//! root directory is given to the VMM's uid/gid (so that the VMM can
//! create its sockets there).
//!
//! In the VMM's own mount namespace ([`enter`]): the root is bind-mounted
//! onto itself (nosuid, nodev), a small tmpfs is mounted on `/dev` with
//! only the device nodes a VMM needs, the `--bind` mounts are made, and the
//! process `pivot_root`s into the jail and detaches the old root. There is
//! no `chroot(2)` fallback: when `pivot_root` fails the jailer fails.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chown, Gid, Uid};

use crate::cli::BindMount;
use crate::elf;
use crate::rollback::Rollback;

/// The paths of one jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    /// `<chroot-base>/<exec-file name>/<id>`: the jail's own directory.
    pub jail_dir: PathBuf,
    /// `<jail_dir>/root`: the VMM's `/`.
    pub root: PathBuf,
    /// The exec file's name; inside the jail it is `/<exec_name>`.
    pub exec_name: OsString,
    /// `<jail_dir>/<exec_name>.pid`: the VMM's pid (host pid namespace),
    /// written once it runs; outside the root, so the VMM cannot change it.
    pub pid_file: PathBuf,
}

impl JailPaths {
    /// The paths for `exec_file` (only its file name is used) and `id`
    /// under `base`.
    pub fn new(base: &Path, exec_file: &Path, id: &str) -> Result<Self> {
        let exec_name = exec_file
            .file_name()
            .with_context(|| format!("--exec-file {}: no file name", exec_file.display()))?
            .to_owned();
        let jail_dir = base.join(&exec_name).join(id);
        let mut pid_name = exec_name.clone();
        pid_name.push(".pid");
        Ok(Self {
            root: jail_dir.join("root"),
            pid_file: jail_dir.join(pid_name),
            jail_dir,
            exec_name,
        })
    }

    /// The exec file's path inside the jail (`/<exec_name>`).
    pub fn exec_in_jail(&self) -> PathBuf {
        Path::new("/").join(&self.exec_name)
    }

    /// The host path of `inside` (an absolute path inside the jail).
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }
}

/// A character device node made in the jail's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the jail (`/dev/kvm`).
    pub path: &'static str,
    /// Major number (the host's).
    pub major: u64,
    /// Minor number (the host's).
    pub minor: u64,
}

/// The device nodes of the jail, with the host's major/minor numbers:
/// `/dev/kvm` (required), `/dev/urandom`, and `/dev/net/tun` when `tun`.
pub fn device_nodes(tun: bool) -> Result<Vec<DeviceNode>> {
    let mut wanted = vec!["/dev/kvm", "/dev/urandom"];
    if tun {
        wanted.push("/dev/net/tun");
    }
    wanted
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(path).with_context(|| {
                format!("{path}: not usable on this host (the VMM needs it in its jail)")
            })?;
            if !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
                bail!("{path} on this host is not a character device");
            }
            let rdev = meta.rdev();
            Ok(DeviceNode {
                path,
                major: libc::major(rdev) as u64,
                minor: libc::minor(rdev) as u64,
            })
        })
        .collect()
}

/// Checks, before anything is created, that the exec file can start in
/// the jail: a dynamically linked binary needs its interpreter reachable
/// through a `--bind` (the jail's root itself is mounted `noexec`, so an
/// interpreter placed there could not be mapped).
pub fn check_exec_file(exec_file: &Path, _paths: &JailPaths, binds: &[BindMount]) -> Result<()> {
    let interp = elf::interpreter(exec_file)
        .with_context(|| format!("--exec-file {}: cannot read", exec_file.display()))?;
    if let Some(interp) = interp {
        let bound = binds.iter().any(|b| interp.starts_with(&b.target));
        if !bound {
            bail!(
                "--exec-file {}: is dynamically linked (interpreter {}), and the jail holds no \
                 interpreter or libraries (its root is noexec); use a statically linked binary \
                 (e.g. built with RUSTFLAGS='-C target-feature=+crt-static' --target \
                 x86_64-unknown-linux-gnu) or --bind the library directories",
                exec_file.display(),
                interp.display()
            );
        }
    }
    Ok(())
}

/// Creates `path` and its missing parents as directories; records the
/// topmost created one in `rollback`.
fn create_dirs(path: &Path, rollback: &mut Rollback) -> Result<()> {
    let mut first_missing = None;
    for p in path.ancestors() {
        if std::fs::symlink_metadata(p).is_ok() {
            break;
        }
        first_missing = Some(p.to_owned());
    }
    if let Some(top) = first_missing {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        rollback.tree(top);
    }
    Ok(())
}

/// Refuses a symbolic link on the way from the jail's root to `target`:
/// a mount point must not lead outside the jail.
fn check_no_symlinks(root: &Path, target: &Path) -> Result<()> {
    let mut p = root.to_owned();
    for c in target.strip_prefix(root).unwrap_or(target).components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                bail!("{} is a symbolic link", p.display())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Makes the mount point `target` (a directory, or an empty file when
/// `is_file`), recording what it created.
fn mount_point(root: &Path, target: &Path, is_file: bool, rollback: &mut Rollback) -> Result<()> {
    check_no_symlinks(root, target)?;
    if let Ok(m) = std::fs::symlink_metadata(target) {
        if m.is_dir() == is_file {
            bail!(
                "{} exists and is {}",
                target.display(),
                if is_file {
                    "a directory"
                } else {
                    "not a directory"
                }
            );
        }
        return Ok(());
    }
    let parent = target.parent().expect("inside the root");
    create_dirs(parent, rollback)?;
    if is_file {
        std::fs::File::create(target)
            .with_context(|| format!("cannot create {}", target.display()))?;
    } else {
        std::fs::create_dir(target)
            .with_context(|| format!("cannot create {}", target.display()))?;
    }
    rollback.entry(target.to_owned());
    Ok(())
}

/// What [`prepare`] needs.
#[derive(Debug)]
pub struct Prepare<'a> {
    /// The jail's paths.
    pub paths: &'a JailPaths,
    /// The host's exec file.
    pub exec_file: &'a Path,
    /// The VMM's uid.
    pub uid: u32,
    /// The VMM's gid.
    pub gid: u32,
    /// `--bind` mounts.
    pub binds: &'a [BindMount],
    /// Whether `/proc` is mounted.
    pub proc: bool,
}

/// Builds the jail on the host (see the module docs); everything created
/// is recorded in `rollback`. Returns whether the exec file must be
/// bind-mounted (it could not be hard-linked).
pub fn prepare(p: &Prepare<'_>, rollback: &mut Rollback) -> Result<bool> {
    let root = &p.paths.root;
    create_dirs(root, rollback)?;
    let meta = std::fs::symlink_metadata(root)
        .with_context(|| format!("cannot stat {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }

    let exec = p.paths.host_path(&p.paths.exec_in_jail());
    if std::fs::symlink_metadata(&exec).is_ok() {
        bail!(
            "{} already exists: this jail was used before; remove it with `capsa-jailer cleanup` \
             or pick another --id",
            exec.display()
        );
    }
    // A hard link shares the inode (root's, not writable by the VMM's
    // uid) and costs nothing. On another file system (a tmpfs /run) the
    // exec file is bind-mounted read-only instead of copied: no tens of
    // MiB per VM in RAM.
    let exec_bound = if std::fs::hard_link(p.exec_file, &exec).is_ok() {
        rollback.entry(exec.clone());
        false
    } else {
        mount_point(root, &exec, true, rollback).with_context(|| {
            format!(
                "--exec-file {}: cannot make its mount point {}",
                p.exec_file.display(),
                exec.display()
            )
        })?;
        true
    };

    mount_point(root, &root.join("dev"), false, rollback)?;
    if p.proc {
        mount_point(root, &root.join("proc"), false, rollback)?;
    }
    for b in p.binds {
        let target = p.paths.host_path(&b.target);
        mount_point(root, &target, !b.source.is_dir(), rollback)
            .with_context(|| format!("--bind {}:{}", b.source.display(), b.target.display()))?;
    }

    chown(root, Some(Uid::from_raw(p.uid)), Some(Gid::from_raw(p.gid)))
        .with_context(|| format!("cannot chown {} to {}:{}", root.display(), p.uid, p.gid))?;
    rollback.owner(root.clone(), meta.uid(), meta.gid());
    Ok(exec_bound)
}

/// Mount flags of `path`'s mount that a bind remount must keep.
fn kept_flags(path: &Path) -> Result<MsFlags> {
    let f = statvfs(path)
        .with_context(|| format!("statvfs {}", path.display()))?
        .flags();
    let mut out = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st) {
            out |= ms;
        }
    }
    Ok(out)
}

/// Bind-mounts `source` on `target`, then remounts it with `extra` flags
/// (plus the flags it already had).
fn bind(source: &Path, target: &Path, extra: MsFlags) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "cannot bind-mount {} on {}",
            source.display(),
            target.display()
        )
    })?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | kept_flags(target)? | extra;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("cannot remount {} ({flags:?})", target.display()))
}

/// What [`enter`] needs.
#[derive(Debug)]
pub struct Enter<'a> {
    /// The jail's paths.
    pub paths: &'a JailPaths,
    /// Device nodes to make in `/dev`.
    pub devices: &'a [DeviceNode],
    /// `--bind` mounts.
    pub binds: &'a [BindMount],
    /// The exec file, when [`prepare`] could not hard-link it: it is
    /// bind-mounted read-only on `/<exec_name>`.
    pub exec_bind: Option<&'a Path>,
    /// The VMM's uid (owner of the device nodes).
    pub uid: u32,
    /// The VMM's gid.
    pub gid: u32,
}

/// In a new, private mount namespace: builds the jail's mounts and
/// `pivot_root`s into it; the old root is detached. On return the
/// process's `/` and working directory are the jail's root.
pub fn enter(e: &Enter<'_>) -> Result<()> {
    let root = &e.paths.root;
    // pivot_root(2) needs the new root to be a mount point. noexec: no
    // file in the jail can be executed or mapped executable (the VMM's
    // binary is exec'd from a descriptor opened on the host, see
    // `ExecFile`).
    bind(
        root,
        root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .context("the jail's root")?;

    let dev = root.join("dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )
    .with_context(|| format!("cannot mount a tmpfs on {}", dev.display()))?;
    let (uid, gid) = (Uid::from_raw(e.uid), Gid::from_raw(e.gid));
    for d in e.devices {
        let path = e.paths.host_path(Path::new(d.path));
        let parent = path.parent().expect("under /dev");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(d.major, d.minor),
        )
        .with_context(|| format!("mknod {} ({}:{})", d.path, d.major, d.minor))?;
        // mknod's mode is reduced by the umask; set it exactly.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", d.path))?;
        chown(&path, Some(uid), Some(gid)).with_context(|| format!("chown {}", d.path))?;
    }
    // Read-only from here: the VMM cannot add nodes (it could not make
    // device nodes anyway, without CAP_MKNOD).
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("cannot remount {} read-only", dev.display()))?;

    for b in e.binds {
        let target = e.paths.host_path(&b.target);
        let mut extra = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if b.read_only {
            extra |= MsFlags::MS_RDONLY;
        }
        bind(&b.source, &target, extra)
            .with_context(|| format!("--bind {}:{}", b.source.display(), b.target.display()))?;
    }
    if let Some(source) = e.exec_bind {
        let target = e.paths.host_path(&e.paths.exec_in_jail());
        bind(
            source,
            &target,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )
        .with_context(|| format!("--exec-file {}", source.display()))?;
    }

    // pivot_root(".", "."): the old root ends up on top of the new one and
    // is detached right away (pivot_root(2), NOTES); no `old_root`
    // directory is needed.
    std::env::set_current_dir(root).with_context(|| format!("chdir {}", root.display()))?;
    nix::unistd::pivot_root(".", ".")
        .with_context(|| format!("pivot_root into {}", root.display()))?;
    umount2(".", MntFlags::MNT_DETACH).context("cannot detach the old root")?;
    std::env::set_current_dir("/").context("chdir / in the jail")?;
    Ok(())
}

/// Mounts a procfs on the jail's `/proc` (after [`enter`]; in the new pid
/// namespace when there is one). `hidepid=2`: the VMM sees only its own
/// processes, nosuid, nodev, noexec.
pub fn mount_proc() -> Result<()> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("hidepid=2"),
    )
    .context("cannot mount proc on /proc in the jail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_paths() {
        let p = JailPaths::new(
            Path::new("/srv/capsa-jailer"),
            Path::new("/usr/bin/capsa"),
            "vm-1",
        )
        .unwrap();
        assert_eq!(p.jail_dir, Path::new("/srv/capsa-jailer/capsa/vm-1"));
        assert_eq!(p.root, Path::new("/srv/capsa-jailer/capsa/vm-1/root"));
        assert_eq!(
            p.pid_file,
            Path::new("/srv/capsa-jailer/capsa/vm-1/capsa.pid")
        );
        assert_eq!(p.exec_in_jail(), Path::new("/capsa"));
        assert_eq!(
            p.host_path(Path::new("/dev/kvm")),
            Path::new("/srv/capsa-jailer/capsa/vm-1/root/dev/kvm")
        );
    }

    #[test]
    fn prepare_then_rollback_leaves_nothing() {
        let base = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let paths = JailPaths::new(&base.path().join("jails"), &exe, "t-1").unwrap();
        let src = tempfile::tempdir().unwrap();
        let binds = [BindMount {
            source: src.path().to_owned(),
            target: "/run/vsock".into(),
            read_only: false,
        }];
        let mut rollback = Rollback::default();
        prepare(
            &Prepare {
                paths: &paths,
                exec_file: &exe,
                uid: 65534,
                gid: 65534,
                binds: &binds,
                proc: true,
            },
            &mut rollback,
        )
        .unwrap();
        assert!(paths.host_path(&paths.exec_in_jail()).is_file());
        assert!(paths.root.join("dev").is_dir());
        assert!(paths.root.join("proc").is_dir());
        assert!(paths.root.join("run/vsock").is_dir());
        assert_eq!(std::fs::metadata(&paths.root).unwrap().uid(), 65534);
        rollback.undo();
        assert!(!base.path().join("jails").exists());
    }

    /// A jail for uid/gid 65534 without binds or /proc.
    fn as_nobody<'a>(paths: &'a JailPaths, exe: &'a Path) -> Prepare<'a> {
        Prepare {
            paths,
            exec_file: exe,
            uid: 65534,
            gid: 65534,
            binds: &[],
            proc: false,
        }
    }

    #[test]
    fn exec_file_on_another_file_system_gets_a_mount_point_not_a_copy() {
        // /dev/shm is a tmpfs; the test binary is on the build's disk.
        let Ok(base) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let exe = std::env::current_exe().unwrap();
        let paths = JailPaths::new(base.path(), &exe, "t-4").unwrap();
        let prep = as_nobody(&paths, &exe);
        let mut rollback = Rollback::default();
        let bound = prepare(&prep, &mut rollback).unwrap();
        let placed = paths.host_path(&paths.exec_in_jail());
        if bound {
            assert_eq!(std::fs::metadata(&placed).unwrap().len(), 0);
        } else {
            // Same file system after all (a /dev/shm on disk): a link.
            assert_eq!(
                std::fs::metadata(&placed).unwrap().ino(),
                std::fs::metadata(&exe).unwrap().ino()
            );
        }
        rollback.undo();
        assert!(!placed.exists());
    }

    #[test]
    fn prepare_keeps_what_the_caller_placed() {
        let base = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let paths = JailPaths::new(base.path(), &exe, "t-2").unwrap();
        std::fs::create_dir_all(&paths.root).unwrap();
        std::fs::write(paths.root.join("vmlinux"), "k").unwrap();
        let mut rollback = Rollback::default();
        let prep = as_nobody(&paths, &exe);
        prepare(&prep, &mut rollback).unwrap();
        assert!(!paths.root.join("proc").exists());
        rollback.undo();
        assert!(paths.root.join("vmlinux").is_file());
        assert!(!paths.root.join("dev").exists());
        assert!(!paths.host_path(&paths.exec_in_jail()).exists());
        assert_eq!(std::fs::metadata(&paths.root).unwrap().uid(), 0);

        // Used twice: refused, and the first use's files stay.
        let mut r1 = Rollback::default();
        prepare(&prep, &mut r1).unwrap();
        r1.commit();
        let mut r2 = Rollback::default();
        let e = prepare(&prep, &mut r2).unwrap_err();
        assert!(format!("{e}").contains("already exists"), "{e}");
        drop(r2);
        assert!(paths.host_path(&paths.exec_in_jail()).exists());
    }

    #[test]
    fn dynamic_exec_file_needs_its_interpreter() {
        let exe = std::env::current_exe().unwrap();
        let base = tempfile::tempdir().unwrap();
        let paths = JailPaths::new(base.path(), &exe, "t-3").unwrap();
        if elf::interpreter(&exe).unwrap().is_some() {
            let e = check_exec_file(&exe, &paths, &[]).unwrap_err();
            assert!(format!("{e}").contains("dynamically linked"), "{e}");
            let lib = [BindMount {
                source: "/lib64".into(),
                target: "/lib64".into(),
                read_only: true,
            }];
            assert!(check_exec_file(&exe, &paths, &lib).is_ok());
        }
    }
}
