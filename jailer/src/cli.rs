//! The command line: flags named after Firecracker's jailer
//! (`docs/jailer.md` of Firecracker) where they mean the same thing, parsed
//! and validated by clap so that every bad value is an error naming its
//! flag (exit status 2).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use capsa_cgroup::Version;

use crate::cgroup::CgroupSetting;
use crate::rlimits::ResourceLimit;
use crate::seccomp::DenyAction;

/// Default base directory of the jails (Firecracker: `/srv/jailer`).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/capsa-jailer";
/// Default parent cgroup, relative to each hierarchy's root.
pub const DEFAULT_PARENT_CGROUP: &str = "capsa";
/// Longest accepted `--id`, in bytes (as Firecracker).
pub const MAX_ID_LEN: usize = 64;

/// `capsa-jailer`: runs one VMM process jailed (see docs/jailer.md).
#[derive(Debug, Parser)]
#[command(
    name = "capsa-jailer",
    version,
    about = "Sandbox one capsa VMM process (chroot, namespaces, cgroups, seccomp, \
             uid/gid drop, rlimits), then exec it",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// `cleanup` instead of starting a VMM.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The flags of a jailed start.
    #[command(flatten)]
    pub jail: JailArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Remove the jail directory and the cgroups of a VMM that has exited.
    Cleanup(CleanupArgs),
}

/// Flags of a jailed start: `capsa-jailer --id ID --exec-file PATH --uid
/// UID --gid GID [...] -- ARGS...`.
#[derive(Debug, Args)]
pub struct JailArgs {
    /// Unique id of the VM: ASCII letters, digits and `-`, 1 to 64 bytes.
    #[arg(long, value_name = "ID", value_parser = parse_id, required = true)]
    pub id: Option<String>,

    /// Absolute path of the binary to run jailed (the `capsa` binary, run
    /// as `capsa vmm ...`); it is hard-linked or copied into the jail.
    #[arg(long, value_name = "PATH", value_parser = parse_exec_file, required = true)]
    pub exec_file: Option<PathBuf>,

    /// User id the VMM runs as (not 0).
    #[arg(long, value_name = "UID", value_parser = parse_non_root, required = true)]
    pub uid: Option<u32>,

    /// Group id the VMM runs as (not 0); supplementary groups are cleared.
    #[arg(long, value_name = "GID", value_parser = parse_non_root, required = true)]
    pub gid: Option<u32>,

    /// Base directory of the jails: the chroot is
    /// `<DIR>/<exec-file name>/<id>/root`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE,
          value_parser = parse_absolute_dir_path)]
    pub chroot_base_dir: PathBuf,

    /// Cgroup version; by default detected from the mounted hierarchies.
    #[arg(long, value_name = "1|2", value_parser = cgroup_version())]
    pub cgroup_version: Option<Version>,

    /// A cgroup file to write, `FILE=VALUE` (e.g. `pids.max=64`,
    /// `cpu.shares=512`, `memory.limit_in_bytes=256M` on v1, `memory.max`,
    /// `cpu.weight` on v2); repeatable. Each controller named here gets a
    /// cgroup for the VMM.
    #[arg(long = "cgroup", value_name = "FILE=VALUE", value_parser = parse_cgroup)]
    pub cgroups: Vec<CgroupSetting>,

    /// Parent of the VMM's cgroup, relative to each hierarchy's root.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PARENT_CGROUP,
          value_parser = parse_relative_cgroup)]
    pub parent_cgroup: String,

    /// A resource limit, `fsize=BYTES` or `no-file=N` (soft = hard);
    /// repeatable. Default: `no-file=2048`.
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE", value_parser = parse_rlimit)]
    pub resource_limits: Vec<ResourceLimit>,

    /// Network namespace to join (e.g. `/var/run/netns/NAME`).
    #[arg(long, value_name = "PATH", value_parser = parse_absolute_path)]
    pub netns: Option<PathBuf>,

    /// Run the VMM in a new, empty network namespace (only a loopback
    /// device, down): for a VMM without network devices.
    #[arg(long, conflicts_with = "netns")]
    pub new_net_ns: bool,

    /// Run the VMM as pid 1 of a new pid namespace.
    #[arg(long)]
    pub new_pid_ns: bool,

    /// Run the VMM in a new IPC namespace (no System V IPC objects or
    /// POSIX message queues shared with the host).
    #[arg(long)]
    pub new_ipc_ns: bool,

    /// Start the VMM in a new session with stdin/stdout/stderr on
    /// /dev/null, and exit 0 once it runs (its pid is in
    /// `<DIR>/<exec-file name>/<id>/<exec-file name>.pid`).
    #[arg(long)]
    pub daemonize: bool,

    /// Bind-mount a host path into the jail, `SRC:DST[:ro]` (DST is a path
    /// inside the jail); repeatable. The mounts exist only in the VMM's
    /// mount namespace, with nosuid and nodev.
    #[arg(long = "bind", value_name = "SRC:DST[:ro]", value_parser = parse_bind)]
    pub binds: Vec<BindMount>,

    /// Also create `/dev/net/tun` in the jail.
    #[arg(long)]
    pub tun: bool,

    /// Do not mount a procfs at `/proc` in the jail (`capsa vmm` reads
    /// `/proc/meminfo` and does not start without it).
    #[arg(long)]
    pub no_proc: bool,

    /// An environment variable of the VMM, `KEY=VALUE`; repeatable. The
    /// jailer's own environment is not passed on.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub envs: Vec<(String, String)>,

    /// An inherited file descriptor (3 or more) to leave open for the VMM;
    /// repeatable. All other descriptors above 2 are closed.
    #[arg(long = "keep-fd", value_name = "FD", value_parser = parse_keep_fd)]
    pub keep_fds: Vec<RawFd>,

    /// What a denied system call does.
    #[arg(long, value_name = "ACTION", default_value = "eperm")]
    pub seccomp_action: DenyAction,

    /// Also deny making processes (`fork`, `vfork`, `clone` without
    /// `CLONE_THREAD`); threads still work. For a VMM that runs no
    /// programs: whoever kills it then kills all it could have become.
    #[arg(long)]
    pub no_fork: bool,

    /// `NAME:PATH`: once the VMM has exited, if the jail's root holds a
    /// regular file NAME (the VMM made it; a symlink does not count),
    /// create an empty file at the host path PATH (mode 0644, never through
    /// a symlink, left as it is when it exists) before exiting; repeatable.
    /// For marks that a caller outside the jail reads once the jailer's pid
    /// has exited (capsa: the VMM's `oom` → an engine's `<bundle>/oom`).
    /// Nothing is read from the file.
    #[arg(long = "exit-marker", value_name = "NAME:PATH", value_parser = parse_exit_marker,
          conflicts_with = "daemonize")]
    pub exit_markers: Vec<ExitMarker>,

    /// Arguments of the exec'd binary (after `--`), e.g. `vmm --kernel
    /// /vmlinux ...`.
    #[arg(last = true, value_name = "ARGS")]
    pub exec_args: Vec<OsString>,
}

/// Flags of `capsa-jailer cleanup`: the same values as the start.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Id of the VM, as given to the start.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub id: String,

    /// `--exec-file` of the start (only its file name is used; the file
    /// need not exist any more).
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,

    /// `--chroot-base-dir` of the start.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE,
          value_parser = parse_absolute_dir_path)]
    pub chroot_base_dir: PathBuf,

    /// `--parent-cgroup` of the start.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PARENT_CGROUP,
          value_parser = parse_relative_cgroup)]
    pub parent_cgroup: String,

    /// `--cgroup-version` of the start; by default detected.
    #[arg(long, value_name = "1|2", value_parser = cgroup_version())]
    pub cgroup_version: Option<Version>,
}

/// An `--exit-marker NAME:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitMarker {
    /// A file name in the jail's root (no `/`, not `.` or `..`).
    pub name: String,
    /// Absolute host path to create.
    pub path: PathBuf,
}

/// A `--bind SRC:DST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the jail, without `..`.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// `--cgroup-version 1|2`.
fn cgroup_version() -> impl clap::builder::TypedValueParser<Value = Version> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["1", "2"]).map(|v| match v.as_str() {
        "1" => Version::V1,
        _ => Version::V2,
    })
}

impl ValueEnum for DenyAction {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            DenyAction::Eperm,
            DenyAction::Kill,
            DenyAction::Trap,
            DenyAction::Log,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let (name, help) = match self {
            DenyAction::Eperm => ("eperm", "the call fails with EPERM"),
            DenyAction::Kill => ("kill", "the process is killed (SIGSYS)"),
            DenyAction::Trap => ("trap", "SIGSYS is sent to the thread"),
            DenyAction::Log => ("log", "allowed, but logged by the kernel (audit)"),
        };
        Some(clap::builder::PossibleValue::new(name).help(help))
    }
}

/// `--id`: ASCII alphanumerics and `-`, 1 to [`MAX_ID_LEN`] bytes.
pub fn parse_id(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_ID_LEN {
        return Err(format!("is {} bytes long, more than {MAX_ID_LEN}", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "contains {c:?}: only ASCII letters, digits and '-' are allowed"
        ));
    }
    Ok(s.to_owned())
}

/// `--exec-file`: an absolute path to an existing regular file (symbolic
/// links are followed).
pub fn parse_exec_file(s: &str) -> Result<PathBuf, String> {
    let path = parse_absolute_path(s)?;
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot stat {s}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{s} is not a regular file"));
    }
    if path.file_name().is_none() {
        return Err(format!("{s} has no file name"));
    }
    Ok(path)
}

/// `--uid`, `--gid`: a number other than 0.
pub fn parse_non_root(s: &str) -> Result<u32, String> {
    let id: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if id == 0 {
        return Err("must not be 0: the jailer runs the VMM unprivileged, never as root".into());
    }
    Ok(id)
}

/// An absolute path without `..`.
pub fn parse_absolute_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{s:?} must not contain '..'"));
    }
    Ok(path)
}

fn parse_absolute_dir_path(s: &str) -> Result<PathBuf, String> {
    let path = parse_absolute_path(s)?;
    if path == Path::new("/") {
        return Err("must not be /".into());
    }
    Ok(path)
}

/// `--parent-cgroup`: a relative path of plain components.
pub fn parse_relative_cgroup(s: &str) -> Result<String, String> {
    let path = Path::new(s);
    if s.is_empty() || path.is_absolute() {
        return Err(format!("{s:?} must be a non-empty relative path"));
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{s:?} must not contain '.' or '..'"));
    }
    if s.contains(['\n', '\0']) {
        return Err("must not contain newlines".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// `--cgroup FILE=VALUE`.
pub fn parse_cgroup(s: &str) -> Result<CgroupSetting, String> {
    let (file, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not FILE=VALUE"))?;
    CgroupSetting::new(file, value)
}

/// `--resource-limit RESOURCE=VALUE`.
pub fn parse_rlimit(s: &str) -> Result<ResourceLimit, String> {
    s.parse()
}

/// `--bind SRC:DST[:ro]`.
pub fn parse_bind(s: &str) -> Result<BindMount, String> {
    let mut parts = s.split(':');
    let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
        return Err(format!("{s:?} is not SRC:DST[:ro]"));
    };
    let read_only = match parts.next() {
        None => false,
        Some("ro") => true,
        Some("rw") => false,
        Some(other) => return Err(format!("unknown option {other:?} (ro or rw)")),
    };
    if parts.next().is_some() {
        return Err(format!("{s:?} is not SRC:DST[:ro]"));
    }
    let source = parse_absolute_path(src).map_err(|e| format!("SRC: {e}"))?;
    let target = parse_absolute_path(dst).map_err(|e| format!("DST: {e}"))?;
    if target == Path::new("/") {
        return Err("DST must not be / (the jail's root)".into());
    }
    if !source.exists() {
        return Err(format!("SRC {src} does not exist"));
    }
    Ok(BindMount {
        source,
        target,
        read_only,
    })
}

/// `--exit-marker NAME:PATH` (split at the first `:`).
pub fn parse_exit_marker(s: &str) -> Result<ExitMarker, String> {
    let Some((name, path)) = s.split_once(':') else {
        return Err(format!("{s:?} is not NAME:PATH"));
    };
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "NAME {name:?} must be a file name in the jail's root"
        ));
    }
    let path = parse_absolute_path(path).map_err(|e| format!("PATH: {e}"))?;
    Ok(ExitMarker {
        name: name.to_owned(),
        path,
    })
}

/// `--env KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() || s.contains('\0') {
        return Err(format!("{s:?}: empty key or NUL byte"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// `--keep-fd N`: 3 or more.
pub fn parse_keep_fd(s: &str) -> Result<RawFd, String> {
    let fd: RawFd = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if fd < 3 {
        return Err("0, 1 and 2 are always kept; give 3 or more".into());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("capsa-jailer").chain(args.iter().copied()))
    }

    fn base<'a>(exe: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "--id",
            "vm-1",
            "--exec-file",
            exe,
            "--uid",
            "1000",
            "--gid",
            "1000",
        ];
        v.extend_from_slice(extra);
        v
    }

    fn error_of(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn ids() {
        assert_eq!(parse_id("abc-DEF-123").unwrap(), "abc-DEF-123");
        assert!(parse_id(&"a".repeat(64)).is_ok());
        assert!(parse_id(&"a".repeat(65))
            .unwrap_err()
            .contains("more than 64"));
        assert!(parse_id("").is_err());
        for bad in ["a/b", "..", "a b", "a_b", "é", "a.b"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_markers() {
        let m = parse_exit_marker("oom:/var/b:c/oom").unwrap();
        assert_eq!(m.name, "oom");
        assert_eq!(m.path, PathBuf::from("/var/b:c/oom"));
        for bad in ["oom", ":/x", "a/b:/x", "..:/x", "oom:rel", "oom:/a/../b"] {
            assert!(parse_exit_marker(bad).is_err(), "{bad}");
        }
        assert!(error_of(&base(
            "/bin/sh",
            &["--daemonize", "--exit-marker", "oom:/x"]
        ))
        .contains("--exit-marker"));
    }

    #[test]
    fn a_full_command_line() {
        let cli = parse(&base(
            "/bin/sh",
            &[
                "--cgroup",
                "pids.max=64",
                "--cgroup",
                "cpu.shares=512",
                "--resource-limit",
                "no-file=1024",
                "--new-pid-ns",
                "--new-ipc-ns",
                "--bind",
                "/tmp:/run/vsock:ro",
                "--env",
                "CAPSA_LOG=info",
                "--cgroup-version",
                "2",
                "--",
                "vmm",
                "--kernel",
                "/vmlinux",
            ],
        ))
        .unwrap();
        assert!(cli.command.is_none());
        let j = cli.jail;
        assert_eq!(j.id.as_deref(), Some("vm-1"));
        assert_eq!(j.uid, Some(1000));
        assert_eq!(j.chroot_base_dir, Path::new(DEFAULT_CHROOT_BASE));
        assert_eq!(j.parent_cgroup, "capsa");
        assert_eq!(j.cgroups.len(), 2);
        assert_eq!(j.cgroup_version, Some(Version::V2));
        assert!(j.new_pid_ns && j.new_ipc_ns && !j.daemonize);
        assert_eq!(
            j.binds,
            [BindMount {
                source: "/tmp".into(),
                target: "/run/vsock".into(),
                read_only: true
            }]
        );
        assert_eq!(j.exec_args, ["vmm", "--kernel", "/vmlinux"]);
        assert_eq!(j.envs, [("CAPSA_LOG".to_owned(), "info".to_owned())]);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        assert!(error_of(&base("bin/sh", &[])).contains("--exec-file"));
        assert!(error_of(&base("/nonexistent/capsa", &[])).contains("--exec-file"));
        assert!(error_of(&base("/tmp", &[])).contains("not a regular file"));
        let mut a = base("/bin/sh", &[]);
        a[1] = "bad/id";
        assert!(error_of(&a).contains("--id"));
        let mut a = base("/bin/sh", &[]);
        a[5] = "0";
        assert!(error_of(&a).contains("--uid"));
        let cases: [(&[&str], &str); 9] = [
            (&["--cgroup", "pids.max"], "--cgroup"),
            (&["--cgroup", "../x=1"], "--cgroup"),
            (&["--cgroup", "cgroup.procs=1"], "--cgroup"),
            (&["--resource-limit", "cpu=1"], "--resource-limit"),
            (&["--resource-limit", "fsize=-1"], "--resource-limit"),
            (&["--parent-cgroup", "/abs"], "--parent-cgroup"),
            (&["--parent-cgroup", "a/../b"], "--parent-cgroup"),
            (&["--chroot-base-dir", "rel"], "--chroot-base-dir"),
            (&["--cgroup-version", "3"], "--cgroup-version"),
        ];
        for (extra, flag) in cases {
            let e = error_of(&base("/bin/sh", extra));
            assert!(e.contains(flag), "{extra:?}: {e}");
        }
        assert!(error_of(&base("/bin/sh", &["--bind", "/tmp"])).contains("--bind"));
        assert!(error_of(&base("/bin/sh", &["--bind", "/nonexistent:/x"])).contains("--bind"));
        assert!(error_of(&base("/bin/sh", &["--bind", "/tmp:/"])).contains("--bind"));
        assert!(error_of(&base("/bin/sh", &["--keep-fd", "2"])).contains("--keep-fd"));
        assert!(error_of(&base("/bin/sh", &["--bogus"])).contains("--bogus"));
        let e = error_of(&base(
            "/bin/sh",
            &["--netns", "/run/netns/x", "--new-net-ns"],
        ));
        assert!(e.contains("--new-net-ns") && e.contains("--netns"), "{e}");
    }

    #[test]
    fn required_flags() {
        let e = error_of(&["--id", "x"]);
        assert!(e.contains("--exec-file"), "{e}");
        assert!(e.contains("--uid"), "{e}");
    }

    #[test]
    fn cleanup_subcommand() {
        let cli = parse(&["cleanup", "--id", "vm-1", "--exec-file", "/usr/bin/capsa"]).unwrap();
        let Some(Command::Cleanup(c)) = cli.command else {
            panic!("not cleanup")
        };
        assert_eq!(c.id, "vm-1");
        assert_eq!(c.chroot_base_dir, Path::new(DEFAULT_CHROOT_BASE));
        assert!(error_of(&["cleanup", "--id", "a b", "--exec-file", "/x"]).contains("--id"));
    }
}
