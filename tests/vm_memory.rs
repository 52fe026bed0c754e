//! Issue 9 item 1: a memory limit through the engine (`podman run
//! --memory`) is what the guest gets — at any size the host can give —
//! compared with runc on the same image, and a size the host cannot give
//! fails at `create`, naming the size, leaving nothing behind.
//!
//! What each runtime shows the container differs by design
//! (docs/runtime.md, "The machine"): under runc the limit is a cgroup cap
//! on the host's shared memory (`/proc/meminfo` is the host's,
//! `memory.max`/`memory.limit_in_bytes` is the limit); in a VM it is the
//! guest's whole RAM (`MemTotal` is the limit plus room for the guest
//! kernel, and the guest has no cgroup limit of its own).

use capsa_tests::support::engines::*;

const MIB: u64 = 1 << 20;

fn podman(rt: Runtime) -> std::process::Command {
    let mut c = engines().command("podman");
    c.arg("--runtime").arg(rt.binary());
    c
}

/// `podman` for a guest of `mib` MiB of RAM: the guest kernel's boot work
/// grows with its RAM (+122% at 2 GiB on PVM hosts, docs/runtime.md), so
/// the engine's timeout grows with it.
fn podman_for_ram(rt: Runtime, mib: u64) -> std::process::Command {
    let seconds = TIMEOUT_S * (1 + mib / 512);
    let mut c = engines().command_with_timeout("podman", seconds);
    c.arg("--runtime").arg(rt.binary());
    c
}

/// What the container sees: `MemTotal` of `/proc/meminfo` (bytes) and its
/// cgroup memory limit, if any (v2 `memory.max`, v1
/// `memory.limit_in_bytes`; these hosts are hybrid).
fn memory_view(rt: Runtime, limit: &str, bytes: u64) -> (u64, Option<u64>) {
    let _slot = container_slot();
    let name = container_name(&format!("mem{limit}"), rt);
    let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
    let mut cmd = podman_for_ram(rt, bytes / MIB);
    cmd.args(["run", "--rm", "--name", &name, "--cidfile"])
        .arg(guard.cidfile())
        .args(["--memory", limit, BUSYBOX, "sh", "-c"])
        .arg(
            "grep MemTotal /proc/meminfo; \
             cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes \
             2>/dev/null; true",
        );
    let out = run(&mut cmd, None);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mem_total_kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {text:?}"));
    let cgroup_limit = text
        .lines()
        .filter(|l| !l.starts_with("MemTotal"))
        .find_map(|l| l.trim().parse::<u64>().ok());
    if let Some(id) = guard.id() {
        assert_nothing_left(&rt.default_root(), &id);
    }
    (mem_total_kib * 1024, cgroup_limit)
}

/// 64 MiB, 512 MiB and 2 GiB (the 256 MiB file-size limit of the jail
/// killed every VM above ~224 MiB before): under capsa the guest's RAM
/// holds the whole limit plus at most what capsa adds for the guest kernel
/// (32 MiB + 1/64); under runc the cgroup limit is exactly the limit.
#[test]
fn podman_memory_limit_is_what_the_container_gets() {
    for (limit, bytes) in [("64m", 64 * MIB), ("512m", 512 * MIB), ("2g", 2048 * MIB)] {
        let (runc_total, runc_cap) = memory_view(Runtime::Runc, limit, bytes);
        assert_eq!(
            runc_cap,
            Some(bytes),
            "runc --memory {limit}: the cgroup limit (MemTotal {runc_total})"
        );
        let (vm_total, vm_cap) = memory_view(Runtime::Capsa, limit, bytes);
        // Guest RAM = limit + what the guest kernel keeps for itself
        // (its image, its page structures); MemTotal leaves that out.
        let overhead = capsa_vmm::runtime::vm_spec::guest_kernel_overhead_mib(bytes / MIB) * MIB;
        assert!(
            vm_total >= bytes && vm_total <= bytes + overhead,
            "capsa --memory {limit}: guest MemTotal {} MiB, want {}..={} MiB",
            vm_total / MIB,
            bytes / MIB,
            (bytes + overhead) / MIB
        );
        // The guest has no cgroup limit of its own: the VM is the limit.
        assert!(
            vm_cap.is_none_or(|c| c >= vm_total),
            "capsa --memory {limit}: a cgroup limit {vm_cap:?} inside the guest"
        );
    }
}

/// More memory than the host has: runc takes it (a cap on a shared pool);
/// a VM would have to pretend RAM it cannot get, so capsa's `create` fails
/// with the sizes in the message, and nothing of the container is left.
#[test]
fn podman_memory_beyond_the_host_fails_at_create_naming_the_size() {
    let host_mib = capsa_vmm::config::host_memory_mib().expect("/proc/meminfo");
    let limit = format!("{}m", host_mib + 1024);
    let _slot = container_slot();
    let rt = Runtime::Capsa;
    let name = container_name("membig", rt);
    let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
    let mut cmd = podman(rt);
    cmd.args(["run", "--rm", "--name", &name, "--cidfile"])
        .arg(guard.cidfile())
        .args(["--memory", &limit, BUSYBOX, "true"]);
    let out = run(&mut cmd, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&cmd, &out));
    assert!(
        stderr.contains("linux.resources.memory.limit")
            && stderr.contains(&format!("({} MiB)", host_mib + 1024))
            && stderr.contains(&format!("this host's {host_mib} MiB")),
        "the error names the field and both sizes: {}",
        describe(&cmd, &out)
    );
    if let Some(id) = guard.id() {
        assert_nothing_left(&rt.default_root(), &id);
    }
    // runc on the same request: accepted (the container runs).
    let rt = Runtime::Runc;
    let name = container_name("membig", rt);
    let _guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
    ok(podman(rt).args([
        "run", "--rm", "--name", &name, "--memory", &limit, BUSYBOX, "true",
    ]));
}

/// Guest RAM is a memfd whose size counts against `RLIMIT_FSIZE`: a limit
/// below it (the jail's was 256 MiB) must fail with a message naming the
/// size, not kill the VMM with SIGXFSZ (`podman run --memory 300m` died
/// of it, "exit status: 153").
#[test]
fn guest_memory_over_a_file_size_limit_is_an_error_naming_the_size() {
    capsa_tests::require_kvm();
    let kernel = capsa_tests::guest_kernel();
    let out = std::process::Command::new("prlimit")
        .arg(format!("--fsize={}", 256 * MIB))
        .arg(capsa_tests::capsa_bin())
        .args(["vmm", "--memory-mib", "512", "--kernel"])
        .arg(kernel)
        .output()
        .expect("run prlimit (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {:?} (SIGXFSZ is 25); stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("cannot create 512 MiB of guest memory") && stderr.contains("too large"),
        "{stderr}"
    );
}

/// The default guest RAM (no `--memory`) has room for what Debian's
/// `apt-get update` writes (163 MiB of lists and caches, docs/runtime.md
/// "Memory") in the container's writable root, which in a VM is a tmpfs
/// in guest RAM that may hold half of it: `df /` shows at least 170 MiB
/// free, as under runc (the host's disk). (Free space rather than a real
/// 170 MiB write: copying that much runs in the guest kernel, which PVM
/// hosts emulate, for minutes.)
#[test]
fn podman_default_memory_has_room_for_apt_sized_writes() {
    for rt in [Runtime::Runc, Runtime::Capsa] {
        let _slot = container_slot();
        let name = container_name("memdefault", rt);
        let mut guard = Container::new(Engine::Podman, &name, rt, &rt.default_root());
        let mut cmd = podman_for_ram(rt, 512);
        cmd.args(["run", "--rm", "--name", &name, "--cidfile"])
            .arg(guard.cidfile())
            .args([BUSYBOX, "df", "-k", "/"]);
        let out = run(&mut cmd, None);
        assert!(out.status.success(), "{rt:?}: {}", describe(&cmd, &out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let free_kib: u64 = text
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{rt:?}: no df line in {text:?}"));
        assert!(
            free_kib >= 170 << 10,
            "{rt:?}: {} MiB free in the container's root: {text}",
            free_kib >> 10
        );
        if let Some(id) = guard.id() {
            assert_nothing_left(&rt.default_root(), &id);
        }
    }
}
