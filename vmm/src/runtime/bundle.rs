//! The OCI bundle: `config.json` read with `oci-spec` (runtime spec
//! `bundle.md`, `config.md`) and validated before anything is created.
//! Every error names the bundle and the field.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::state::RuntimeType;
use super::{Result, RuntimeError, ROOTFS_ANNOTATION, RUNTIME_ANNOTATION};

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
    let value = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ROOTFS_ANNOTATION));
    match value.map(String::as_str) {
        None | Some("virtiofs") => Ok(RootfsTransport::Virtiofs),
        Some("block") => Ok(RootfsTransport::Block),
        Some(other) => Err(err(
            dir,
            format!(
                "annotations.\"{ROOTFS_ANNOTATION}\": unknown rootfs transport {other:?} \
                 (expected \"virtiofs\" or \"block\")"
            ),
        )),
    }
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
    let value = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(RUNTIME_ANNOTATION));
    match value.map(String::as_str) {
        None | Some("vm") => Ok(RuntimeType::Vm),
        Some("process") => Ok(RuntimeType::Process),
        Some(other) => Err(err(
            dir,
            format!(
                "annotations.\"{RUNTIME_ANNOTATION}\": unknown runtime type {other:?} \
                 (expected \"vm\" or \"process\")"
            ),
        )),
    }
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
        let rootfs_transport = match runtime {
            RuntimeType::Vm => rootfs_transport(&spec, &dir)?,
            RuntimeType::Process => RootfsTransport::default(),
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
        let passwd = self.rootfs.join("etc/passwd");
        let text = std::fs::read_to_string(&passwd).unwrap_or_default();
        lookup_passwd(&text, name).ok_or_else(|| {
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

    #[test]
    fn passwd_lookup() {
        let t = "root:x:0:0::/root:/bin/sh\nbob:x:1000:100::/home/bob:/bin/sh\n";
        assert_eq!(lookup_passwd(t, "bob"), Some((1000, 100)));
        assert_eq!(lookup_passwd(t, "alice"), None);
    }
}
