//! The VMM's command line and environment: `argv[0]` is the exec file's
//! path inside the jail, then the arguments after `--`; the environment
//! holds only the `--env` variables (the jailer's own is not passed on).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

/// `argv` for `execve`: `exec_in_jail`, then `args`.
pub fn argv(exec_in_jail: &Path, args: &[OsString]) -> Result<Vec<CString>> {
    std::iter::once(exec_in_jail.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| {
            CString::new(a.as_bytes())
                .with_context(|| format!("argument {a:?} contains a NUL byte"))
        })
        .collect()
}

/// `envp` for `execve`: `KEY=VALUE` of each `--env`.
pub fn envp(vars: &[(String, String)]) -> Result<Vec<CString>> {
    vars.iter()
        .map(|(k, v)| {
            CString::new(format!("{k}={v}")).with_context(|| format!("--env {k}: NUL byte"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_and_envp() {
        let a = argv(Path::new("/capsa"), &["vmm".into(), "--kernel".into()]).unwrap();
        assert_eq!(a, [c"/capsa", c"vmm", c"--kernel"]);
        let e = envp(&[("A".into(), "b=c".into())]).unwrap();
        assert_eq!(e, [c"A=b=c"]);
        assert!(envp(&[]).unwrap().is_empty());
    }
}
