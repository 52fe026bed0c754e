//! The VMM's seccomp filter: a deny list, compiled with `seccompiler`.
//!
//! A deny list (rather than Firecracker's allow list) because the VMM's set
//! of system calls is still changing; what it denies are calls that a VMM
//! never needs and that widen the kernel's attack surface or let a
//! compromised VMM leave its jail: mounting and namespaces (also through
//! `clone` with `CLONE_NEW*` flags), tracing and reading other processes'
//! memory, kernel modules and kexec, BPF, perf, keyrings, userfaultfd,
//! io_uring (whose operations seccomp cannot see), the clock, swap,
//! reboot, raw I/O ports. See docs/jailer.md.
//!
//! Two details that a naive deny list gets wrong:
//! - x32 system calls (`nr | 0x4000_0000`) carry the x86_64 audit arch but
//!   other numbers, and would slip past the list: every number with that
//!   bit is denied ([`X32_SYSCALL_BIT`]).
//! - `clone3` takes its flags in memory, which a seccomp filter cannot
//!   read: it fails with `ENOSYS` (a second filter), so that the C library
//!   falls back to `clone`, whose flags are checked.
//!
//! The filter stays across `execve`; `PR_SET_NO_NEW_PRIVS` is set when it
//! is installed (`seccompiler::apply_filter`).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a denied call does (`--seccomp-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyAction {
    /// Fails with `EPERM` (the default: a VMM that probes an optional
    /// feature keeps running).
    Eperm,
    /// Kills the process (`SECCOMP_RET_KILL_PROCESS`, seen as SIGSYS).
    Kill,
    /// Sends SIGSYS to the calling thread (`SECCOMP_RET_TRAP`).
    Trap,
    /// Allows the call and logs it (`SECCOMP_RET_LOG`), to find what a
    /// VMM would need.
    Log,
}

impl DenyAction {
    fn action(self) -> SeccompAction {
        match self {
            DenyAction::Eperm => SeccompAction::Errno(libc::EPERM as u32),
            DenyAction::Kill => SeccompAction::KillProcess,
            DenyAction::Trap => SeccompAction::Trap,
            DenyAction::Log => SeccompAction::Log,
        }
    }
}

/// The x32 ABI's bit in the system call number (`__X32_SYSCALL_BIT`,
/// arch/x86/include/uapi/asm/unistd.h).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// System calls denied outright: name (as in `man 2`) and x86_64 number.
pub const DENIED: &[(&str, libc::c_long)] = &[
    // Mounts and the root directory.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    // Namespaces (clone with CLONE_NEW* flags: see `clone_rules`).
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    // Other processes.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("migrate_pages", libc::SYS_migrate_pages),
    // The kernel itself.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("syslog", libc::SYS_syslog),
    ("uselib", libc::SYS_uselib),
    ("personality", libc::SYS_personality),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    // The machine.
    ("reboot", libc::SYS_reboot),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("modify_ldt", libc::SYS_modify_ldt),
    ("vhangup", libc::SYS_vhangup),
];

/// `clone` flags that create namespaces; `clone` with any of them is
/// denied (`CLONE_NEWTIME` is only accepted by `unshare` and `clone3`).
pub const CLONE_NAMESPACE_FLAGS: &[(&str, libc::c_int)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
];

/// The compiled filters, installed in this order.
#[derive(Debug, Clone)]
pub struct Filters {
    /// The deny list (with the x32 check in front).
    pub deny: BpfProgram,
    /// `clone3` → `ENOSYS`; absent with [`DenyAction::Log`].
    pub clone3: Option<BpfProgram>,
}

/// One rule per namespace flag: `clone` matches when `flags & F == F`
/// (the flags are argument 0 on x86_64).
fn clone_rules() -> Result<Vec<SeccompRule>> {
    CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&(_, flag)| {
            let flag = flag as u64;
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            Ok(SeccompRule::new(vec![cond])?)
        })
        .collect()
}

/// With `--no-fork`: `clone` without `CLONE_THREAD` makes a process, not
/// a thread.
fn clone_process_rule() -> Result<SeccompRule> {
    let thread = libc::CLONE_THREAD as u64;
    let cond = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        0,
    )?;
    Ok(SeccompRule::new(vec![cond])?)
}

/// Compiles the filters for this machine's architecture (x86_64 only);
/// `no_fork` also denies making processes (`fork`, `vfork`, `clone`
/// without `CLONE_THREAD`).
pub fn compile(action: DenyAction, no_fork: bool) -> Result<Filters> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .context("seccomp: unsupported architecture")?;
    if std::env::consts::ARCH != "x86_64" {
        bail!("seccomp: the deny list is written for x86_64 only");
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let mut clone = clone_rules()?;
    if no_fork {
        clone.push(clone_process_rule()?);
        rules.insert(libc::SYS_fork, Vec::new());
        rules.insert(libc::SYS_vfork, Vec::new());
    }
    rules.insert(libc::SYS_clone, clone);
    let deny_action = action.action();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, deny_action.clone(), arch)
        .context("seccomp: building the deny list")?;
    let mut deny: BpfProgram = filter
        .try_into()
        .context("seccomp: compiling the deny list")?;
    insert_x32_check(&mut deny, deny_action)?;

    let clone3 = match action {
        DenyAction::Log => None,
        _ => {
            let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
            let f = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch,
            )
            .context("seccomp: building the clone3 filter")?;
            Some(
                f.try_into()
                    .context("seccomp: compiling the clone3 filter")?,
            )
        }
    };
    Ok(Filters { deny, clone3 })
}

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
/// Offset of `nr` in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;

/// Inserts, right after seccompiler's architecture check (load arch; jump
/// if x86_64; kill), `load nr; if nr >= X32_SYSCALL_BIT: return deny`.
/// The check's only jump lands on the instruction after it, which is now
/// the inserted load, so no jump offset changes.
fn insert_x32_check(prog: &mut BpfProgram, deny: SeccompAction) -> Result<()> {
    let looks_right = prog.len() > 3
        && prog[0].code == BPF_LD_W_ABS
        && prog[1].code == BPF_JMP_JEQ_K
        && prog[1].jt == 1
        && prog[1].jf == 0
        && prog[2].code == BPF_RET_K;
    if !looks_right {
        bail!("seccomp: unexpected program layout from seccompiler (arch check not found)");
    }
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    let check = [
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, u32::from(deny)),
    ];
    prog.splice(3..3, check);
    Ok(())
}

/// Installs the filters on the calling thread (the jailer is single
/// threaded when it does so); they stay across `execve`.
pub fn install(filters: &Filters) -> Result<()> {
    seccompiler::apply_filter(&filters.deny).context("seccomp: installing the deny list")?;
    if let Some(clone3) = &filters.clone3 {
        seccompiler::apply_filter(clone3).context("seccomp: installing the clone3 filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deny_list_has_what_it_must() {
        let names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
        for must in [
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "unshare",
            "setns",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
            "open_by_handle_at",
            "name_to_handle_at",
            "io_uring_setup",
        ] {
            assert!(names.contains(&must), "{must} is not denied");
        }
        // What a VMM needs is not in it.
        for needed in [
            libc::SYS_ioctl,
            libc::SYS_eventfd2,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_ctl,
            libc::SYS_mmap,
            libc::SYS_memfd_create,
            libc::SYS_socket,
            libc::SYS_futex,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_seccomp,
        ] {
            assert!(!DENIED.iter().any(|(_, nr)| *nr == needed), "{needed}");
        }
        let mut nrs: Vec<_> = DENIED.iter().map(|(_, nr)| *nr).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), DENIED.len(), "duplicates");
    }

    #[test]
    fn compiles_with_every_action() {
        for a in [
            DenyAction::Eperm,
            DenyAction::Kill,
            DenyAction::Trap,
            DenyAction::Log,
        ] {
            let f = compile(a, false).unwrap();
            assert!(f.deny.len() > DENIED.len(), "{a:?}");
            assert_eq!(f.deny[3].code, BPF_LD_W_ABS);
            assert_eq!(f.deny[4].k, X32_SYSCALL_BIT);
            assert_eq!(f.clone3.is_some(), a != DenyAction::Log);
        }
    }

    /// Runs `f` in a forked child that installs the filters first; returns
    /// the child's wait status. The child only makes raw system calls.
    fn in_filtered_child(action: DenyAction, f: fn() -> i32) -> nix::sys::wait::WaitStatus {
        in_filtered_child_with(action, false, f)
    }

    fn in_filtered_child_with(
        action: DenyAction,
        no_fork: bool,
        f: fn() -> i32,
    ) -> nix::sys::wait::WaitStatus {
        let filters = compile(action, no_fork).unwrap();
        // SAFETY: the child makes only system calls and exits with
        // `_exit`, which is safe after fork in a multi-threaded process.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match install(&filters) {
                    Ok(()) => f(),
                    Err(_) => 100,
                };
                // SAFETY: ends the child without running the parent's
                // destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Exit codes: 0 when every denied call failed as expected, else the
    /// number of the failed check.
    fn denied_calls() -> i32 {
        // SAFETY: raw system calls with valid (or null) arguments; none of
        // them touches this process's memory.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUTS) != -1 || errno() != libc::EPERM {
                return 1;
            }
            let fs = c"tmpfs";
            let target = c"/tmp";
            if libc::mount(
                fs.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            ) != -1
                || errno() != libc::EPERM
            {
                return 2;
            }
            if libc::syscall(libc::SYS_bpf, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 3;
            }
            // clone(CLONE_NEWUSER | SIGCHLD): denied, no child is made.
            let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
            if libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 4;
            }
            if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                return 5;
            }
            // x32 getpid.
            let x32_getpid = libc::SYS_getpid | X32_SYSCALL_BIT as libc::c_long;
            if libc::syscall(x32_getpid) != -1 || errno() != libc::EPERM {
                return 6;
            }
            // Allowed calls still work.
            if libc::getpid() <= 0 || libc::eventfd(0, 0) < 0 {
                return 7;
            }
        }
        0
    }

    #[test]
    fn denied_calls_fail_with_eperm_in_a_filtered_process() {
        // As root, unshare and mount would succeed without the filter.
        let status = in_filtered_child(DenyAction::Eperm, denied_calls);
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(status.pid().unwrap(), 0),
            "exit code = the failed check's number"
        );
    }

    /// With `no_fork`: no process can be made, a thread can.
    fn no_new_processes() -> i32 {
        // SAFETY: raw system calls; the only one that would make a child
        // (if the filter failed) is followed by `_exit` in that child.
        unsafe {
            let pid = libc::syscall(libc::SYS_fork);
            if pid == 0 {
                libc::_exit(0);
            }
            if pid != -1 || errno() != libc::EPERM {
                return 1;
            }
            let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
            if pid == 0 {
                libc::_exit(0);
            }
            if pid != -1 || errno() != libc::EPERM {
                return 2;
            }
        }
        // pthread_create: clone3 fails with ENOSYS, glibc falls back to
        // clone with CLONE_THREAD, which is allowed.
        match std::thread::Builder::new().spawn(|| 7).map(|t| t.join()) {
            Ok(Ok(7)) => 0,
            _ => 3,
        }
    }

    #[test]
    fn no_fork_denies_processes_not_threads() {
        let status = in_filtered_child_with(DenyAction::Eperm, true, no_new_processes);
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(status.pid().unwrap(), 0),
            "exit code = the failed check's number"
        );
        // Without it, fork works.
        let status = in_filtered_child(DenyAction::Eperm, no_new_processes);
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(status.pid().unwrap(), 1)
        );
    }

    #[test]
    fn kill_action_kills_with_sigsys() {
        let status = in_filtered_child(DenyAction::Kill, || {
            // SAFETY: a raw system call without pointers.
            unsafe { libc::unshare(libc::CLONE_NEWUTS) };
            0
        });
        assert!(
            matches!(
                status,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{status:?}"
        );
    }
}
