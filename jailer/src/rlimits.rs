//! Resource limits of the VMM (`--resource-limit`, setrlimit(2)); soft and
//! hard limit get the same value, so that the VMM cannot raise them.

use std::str::FromStr;

use anyhow::{Context, Result};
use nix::sys::resource::{setrlimit, Resource};

/// `no-file` when no `--resource-limit no-file=N` is given (Firecracker's
/// default too).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// A resource the jailer can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// `fsize`: largest file the process may create, in bytes
    /// (`RLIMIT_FSIZE`).
    FileSize,
    /// `no-file`: one more than the largest file descriptor number
    /// (`RLIMIT_NOFILE`).
    NoFile,
}

/// One `--resource-limit RESOURCE=VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    /// Which resource.
    pub kind: LimitKind,
    /// The limit (bytes for `fsize`, a count for `no-file`).
    pub value: u64,
}

impl FromStr for ResourceLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not RESOURCE=VALUE"))?;
        let kind = match name {
            "fsize" => LimitKind::FileSize,
            "no-file" => LimitKind::NoFile,
            _ => return Err(format!("unknown resource {name:?} (fsize or no-file)")),
        };
        let value = value
            .parse()
            .map_err(|e| format!("{name}: {value:?} is not a number: {e}"))?;
        Ok(Self { kind, value })
    }
}

/// The limits to apply: `limits`, plus the default `no-file` when absent.
/// A resource given twice keeps its last value.
pub fn effective(limits: &[ResourceLimit]) -> Vec<ResourceLimit> {
    let mut out: Vec<ResourceLimit> = Vec::new();
    for l in limits {
        out.retain(|o| o.kind != l.kind);
        out.push(*l);
    }
    if !out.iter().any(|l| l.kind == LimitKind::NoFile) {
        out.push(ResourceLimit {
            kind: LimitKind::NoFile,
            value: DEFAULT_NO_FILE,
        });
    }
    out
}

/// Applies `limits` to the calling process.
pub fn apply(limits: &[ResourceLimit]) -> Result<()> {
    for l in limits {
        let (resource, name) = match l.kind {
            LimitKind::FileSize => (Resource::RLIMIT_FSIZE, "fsize"),
            LimitKind::NoFile => (Resource::RLIMIT_NOFILE, "no-file"),
        };
        setrlimit(resource, l.value, l.value)
            .with_context(|| format!("--resource-limit {name}={}: setrlimit", l.value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let f: ResourceLimit = "fsize=1000".parse().unwrap();
        assert_eq!(f.kind, LimitKind::FileSize);
        assert_eq!(f.value, 1000);
        assert!("nproc=1".parse::<ResourceLimit>().is_err());
        assert!("no-file=x".parse::<ResourceLimit>().is_err());
        assert!("no-file".parse::<ResourceLimit>().is_err());
        let e = effective(&[f]);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].value, DEFAULT_NO_FILE);
        let n: ResourceLimit = "no-file=10".parse().unwrap();
        let m: ResourceLimit = "no-file=20".parse().unwrap();
        assert_eq!(effective(&[n, m]), [m]);
    }
}
