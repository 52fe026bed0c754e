//! The OCI bundle: `config.json` read with `oci-spec` (runtime spec
//! `bundle.md`, `config.md`) and validated before anything is created.
//! Every error names the bundle and the field.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::state::RuntimeType;
use super::{Result, RuntimeError, BOOT_ANNOTATION, ROOTFS_ANNOTATION, RUNTIME_ANNOTATION};

/// A bundle whose `config.json` parsed and validated.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// The runtime spec.
    pub spec: Spec,
    /// Absolute root filesystem directory (`root.path`, relative to the
    /// bundle when relative, as containerd passes it).
    pub rootfs: PathBuf,
    /// The runtime type from the annotation `io.capsa.runtime`.
    pub runtime: RuntimeType,
    /// How a VM container's rootfs reaches the guest, from the annotation
    /// `io.capsa.rootfs`.
    pub rootfs_transport: RootfsTransport,
    /// How a VM container's guest starts, from the annotation
    /// `io.capsa.boot`.
    pub boot: BootMode,
}

/// How a VM container's guest starts (annotation `io.capsa.boot`;
/// docs/runtime.md § "Warm starts").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BootMode {
    /// `warm` (default): restored from the template of its shape when
    /// one is ready, else booted cold (the log says why).
    #[default]
    Warm,
    /// `cold`: always boots its kernel.
    Cold,
}

/// Reads the boot mode of a bundle.
pub fn boot_mode(spec: &Spec, dir: &Path) -> Result<BootMode> {
    annotation_choice(
        spec,
        dir,
        BOOT_ANNOTATION,
        "boot mode",
        &[("warm", BootMode::Warm), ("cold", BootMode::Cold)],
    )
}

/// How the rootfs directory reaches the guest (annotation
/// `io.capsa.rootfs`; docs/runtime.md § Rootfs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootfsTransport {
    /// `virtiofs` (default): the directory itself, shared by virtiofsd;
    /// the container's writes reach it at once (as with runc).
    #[default]
    Virtiofs,
    /// `block`: a cached ext4 image of the directory on a read-only
    /// virtio-blk disk under a RAM overlay; faster on many small files,
    /// writes lost.
    Block,
}

/// Reads the rootfs transport of a bundle.
pub fn rootfs_transport(spec: &Spec, dir: &Path) -> Result<RootfsTransport> {
    annotation_choice(
        spec,
        dir,
        ROOTFS_ANNOTATION,
        "rootfs transport",
        &[
            ("virtiofs", RootfsTransport::Virtiofs),
            ("block", RootfsTransport::Block),
        ],
    )
}

/// The value of annotation `key` among `choices` (value, meaning); the
/// first is the default when the annotation is absent. Any other value
/// is an error naming the annotation, the value and the choices.
fn annotation_choice<T: Copy>(
    spec: &Spec,
    dir: &Path,
    key: &str,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T> {
    let value = spec.annotations().as_ref().and_then(|a| a.get(key));
    let Some(value) = value else {
        return Ok(choices[0].1);
    };
    if let Some((_, t)) = choices.iter().find(|(v, _)| v == value) {
        return Ok(*t);
    }
    let expected: Vec<String> = choices.iter().map(|(v, _)| format!("{v:?}")).collect();
    Err(err(
        dir,
        format!(
            "annotations.\"{key}\": unknown {what} {value:?} (expected {})",
            expected.join(" or ")
        ),
    ))
}

fn err(dir: &Path, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Bundle {
        bundle: dir.to_owned(),
        message: message.into(),
    }
}

/// Reads only the runtime type of a bundle (for the `process` hand-off,
/// which leaves the rest of the validation to runc).
pub fn runtime_type(spec: &Spec, dir: &Path) -> Result<RuntimeType> {
    annotation_choice(
        spec,
        dir,
        RUNTIME_ANNOTATION,
        "runtime type",
        &[("vm", RuntimeType::Vm), ("process", RuntimeType::Process)],
    )
}

/// Parses `dir/config.json`; errors name the JSON path of the bad field.
pub fn load_spec(dir: &Path) -> Result<Spec> {
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(dir, "config.json: no such file"))
        }
        Err(e) => return Err(err(dir, format!("config.json: {e}"))),
    };
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." {
            err(dir, format!("config.json: {inner}"))
        } else {
            err(dir, format!("config.json: {field}: {inner}"))
        }
    })
}

impl Bundle {
    /// Loads and validates the bundle at `dir` (relative to the current
    /// directory when relative).
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::path::absolute(dir).map_err(|e| err(dir, e.to_string()))?;
        if !dir.is_dir() {
            return Err(err(&dir, "not a directory"));
        }
        let spec = load_spec(&dir)?;
        let runtime = runtime_type(&spec, &dir)?;
        let (rootfs_transport, boot) = match runtime {
            RuntimeType::Vm => (rootfs_transport(&spec, &dir)?, boot_mode(&spec, &dir)?),
            RuntimeType::Process => Default::default(),
        };
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| err(&dir, "config.json: root: missing (root.path is required)"))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(err(
                &dir,
                format!(
                    "config.json: root.path: {} is not a directory",
                    rootfs.display()
                ),
            ));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| err(&dir, "config.json: process: missing"))?;
        match process.args() {
            Some(args) if !args.is_empty() && !args[0].is_empty() => {}
            _ => return Err(err(&dir, "config.json: process.args: must not be empty")),
        }
        if !process.cwd().is_absolute() {
            return Err(err(
                &dir,
                format!(
                    "config.json: process.cwd: {:?} is not absolute",
                    process.cwd()
                ),
            ));
        }
        let bundle = Bundle {
            dir,
            spec,
            rootfs,
            runtime,
            rootfs_transport,
            boot,
        };
        bundle.resolve_user()?;
        Ok(bundle)
    }

    /// The process's `(uid, gid)`: `process.user.username`, when set, is
    /// looked up in the rootfs's `/etc/passwd` (a capsa extension; on Linux
    /// the engine normally resolves names itself), else `uid`/`gid`.
    pub fn resolve_user(&self) -> Result<(u32, u32)> {
        let Some(process) = self.spec.process().as_ref() else {
            return Ok((0, 0));
        };
        let user = process.user();
        let Some(name) = user.username().as_deref().filter(|n| !n.is_empty()) else {
            return Ok((user.uid(), user.gid()));
        };
        let text = read_rootfs_passwd(&self.rootfs).map_err(|e| {
            err(
                &self.dir,
                format!(
                    "config.json: process.user.username: cannot read the rootfs's \
                     /etc/passwd: {e}"
                ),
            )
        })?;
        lookup_passwd(&text.unwrap_or_default(), name).ok_or_else(|| {
            err(
                &self.dir,
                format!(
                    "config.json: process.user.username: unknown user {name:?} \
                     (not in the rootfs's /etc/passwd)"
                ),
            )
        })
    }
}

/// Most bytes of the rootfs's `/etc/passwd` that capsa reads.
pub const MAX_PASSWD_BYTES: u64 = 4 << 20;

/// The rootfs's `/etc/passwd` as the container would see it, read on the
/// host without trusting the rootfs (issue 14 item 7): resolved with
/// `openat2(2)` `RESOLVE_IN_ROOT`, so that a symlink (`../../etc/shadow`,
/// `/etc/passwd` of the host) resolves inside the rootfs as it would in
/// the guest, never to a host file; no magic links (`/proc/self/…`);
/// opened non-blocking and read only if it is a regular file (not a FIFO
/// or a device such as `/dev/zero`) of at most [`MAX_PASSWD_BYTES`].
/// `Ok(None)`: there is none.
pub fn read_rootfs_passwd(rootfs: &Path) -> std::io::Result<Option<String>> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(rootfs)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&root, "etc/passwd", how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = std::fs::File::from(fd);
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PASSWD_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PASSWD_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_PASSWD_BYTES} bytes"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `(uid, gid)` of `name` in the text of an `/etc/passwd`.
pub fn lookup_passwd(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (tempfile::TempDir, Result<Bundle>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
        std::fs::write(
            d.path().join("rootfs/etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        if !config.is_empty() {
            std::fs::write(d.path().join("config.json"), config).unwrap();
        }
        let b = Bundle::load(d.path());
        (d, b)
    }

    const OK: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#;

    #[test]
    fn good_bundle() {
        let (d, b) = bundle_with(OK);
        let b = b.unwrap();
        assert_eq!(b.rootfs, d.path().join("rootfs"));
        assert_eq!(b.runtime, RuntimeType::Vm);
        assert_eq!(b.rootfs_transport, RootfsTransport::Virtiofs);
    }

    #[test]
    fn rootfs_transport_annotation() {
        let with = |v: &str| {
            OK.replace(
                r#""ociVersion""#,
                &format!(r#""annotations":{{"io.capsa.rootfs":"{v}"}},"ociVersion""#),
            )
        };
        let (_d, b) = bundle_with(&with("block"));
        assert_eq!(b.unwrap().rootfs_transport, RootfsTransport::Block);
        let (_d, b) = bundle_with(&with("virtiofs"));
        assert_eq!(b.unwrap().rootfs_transport, RootfsTransport::Virtiofs);
        let (_d, b) = bundle_with(&with("nfs"));
        let e = b.unwrap_err().to_string();
        assert!(
            e.contains("annotations.\"io.capsa.rootfs\"") && e.contains("\"nfs\""),
            "{e}"
        );
    }

    #[test]
    fn boot_annotation() {
        let with = |v: &str| {
            OK.replace(
                r#""ociVersion""#,
                &format!(r#""annotations":{{"io.capsa.boot":"{v}"}},"ociVersion""#),
            )
        };
        let (_d, b) = bundle_with(OK);
        assert_eq!(b.unwrap().boot, BootMode::Warm);
        let (_d, b) = bundle_with(&with("cold"));
        assert_eq!(b.unwrap().boot, BootMode::Cold);
        let (_d, b) = bundle_with(&with("warm"));
        assert_eq!(b.unwrap().boot, BootMode::Warm);
        let (_d, b) = bundle_with(&with("fast"));
        let e = b.unwrap_err().to_string();
        assert!(
            e.contains("annotations.\"io.capsa.boot\"") && e.contains("\"fast\""),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let (_d, b) = bundle_with("");
        assert!(b
            .unwrap_err()
            .to_string()
            .contains("config.json: no such file"));
        let (_d, b) = bundle_with("{");
        assert!(b.unwrap_err().to_string().contains("config.json"));
        let (_d, b) = bundle_with(&OK.replace(r#""sh""#, ""));
        assert!(b.unwrap_err().to_string().contains("process.args"));
        let (_d, b) = bundle_with(&OK.replace("rootfs", "nope"));
        assert!(b.unwrap_err().to_string().contains("root.path"));
        let (_d, b) = bundle_with(&OK.replace(r#""uid":0"#, r#""uid":"x""#));
        assert!(b.unwrap_err().to_string().contains("process.user.uid"));
        let (_d, b) = bundle_with(&OK.replace(r#""gid":0"#, r#""gid":0,"username":"bob""#));
        assert!(b.unwrap_err().to_string().contains("unknown user \"bob\""));
        let (_d, b) = bundle_with(&OK.replace(
            r#""ociVersion""#,
            r#""annotations":{"io.capsa.runtime":"xen"},"ociVersion""#,
        ));
        assert!(b.unwrap_err().to_string().contains("io.capsa.runtime"));
    }

    const BOB: &str = r#""gid":0,"username":"bob""#;

    /// Issue 14 item 7: `/etc/passwd` of the rootfs is a symlink out of
    /// it (relative or absolute). It resolves inside the rootfs, as in the
    /// guest, and the host file is never read (it used to be).
    #[test]
    fn passwd_symlink_out_of_the_rootfs_is_resolved_inside_it() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host-passwd");
        std::fs::write(&host, "bob:x:4242:4242::/:/bin/sh\n").unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
        let link = d.path().join("rootfs/etc/passwd");
        std::fs::write(d.path().join("config.json"), OK.replace(r#""gid":0"#, BOB)).unwrap();
        for target in [Path::new("../../host-passwd"), host.as_path()] {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let e = Bundle::load(d.path()).unwrap_err().to_string();
            assert!(e.contains("unknown user \"bob\""), "{target:?}: {e}");
        }
        // A link that stays inside resolves as the guest would resolve it.
        std::fs::create_dir_all(d.path().join("rootfs/usr/lib")).unwrap();
        std::fs::write(
            d.path().join("rootfs/usr/lib/passwd"),
            "bob:x:1000:100::/:/bin/sh\n",
        )
        .unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/usr/lib/passwd", &link).unwrap();
        assert_eq!(
            Bundle::load(d.path()).unwrap().resolve_user().unwrap(),
            (1000, 100)
        );
    }

    /// Issue 14 item 7: a FIFO (which used to hang `create` in `read`) or
    /// a file over the size bound is refused with an error naming the
    /// field.
    #[test]
    fn passwd_fifo_or_huge_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
        std::fs::write(d.path().join("config.json"), OK.replace(r#""gid":0"#, BOB)).unwrap();
        let passwd = d.path().join("rootfs/etc/passwd");
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = d.path().to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(Bundle::load(&dir).map(|_| ()).map_err(|e| e.to_string()));
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a FIFO does not hang create")
            .unwrap_err();
        assert!(e.contains("process.user.username"), "{e}");
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&passwd).unwrap();
        let f = std::fs::File::create(&passwd).unwrap();
        f.set_len(MAX_PASSWD_BYTES + 1).unwrap();
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn passwd_lookup() {
        let t = "root:x:0:0::/root:/bin/sh\nbob:x:1000:100::/home/bob:/bin/sh\n";
        assert_eq!(lookup_passwd(t, "bob"), Some((1000, 100)));
        assert_eq!(lookup_passwd(t, "alice"), None);
    }
}
