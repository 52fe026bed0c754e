//! Booting the real guest kernel with `capsa vmm`: init is reached (seen
//! through the boot timer and the serial console) on 1, 2 and 4 vCPUs, all
//! of which the guest uses, the guest's reset ends the VM with exit 0, both
//! entry points work, the guest profiler names kernel functions, guest
//! crashes end the VM with a clear message and a non-zero exit, and bad
//! input is refused cleanly.

use std::time::Instant;

use capsa_tests::*;

const INIT: &str = "/bin/busybox mount -t devtmpfs dev /dev\n\
    MARK\n\
    /bin/busybox echo INIT REACHED\n\
    /bin/busybox mount -t proc proc /proc\n\
    /bin/busybox echo \"UPTIME $(/bin/busybox cat /proc/uptime)\"\n\
    /bin/busybox mount -t sysfs sys /sys\n\
    /bin/busybox echo \"NPROC $(/bin/busybox nproc)\"\n\
    /bin/busybox echo \"ONLINE $(/bin/busybox cat /sys/devices/system/cpu/online)\"\n\
    /bin/busybox reboot -f\n";

/// Boots busybox as init through `protocol` on `vcpus` vCPUs (plus
/// `extra` flags) and checks that init ran, saw `vcpus` CPUs online, and
/// that the guest's reset ended the VM cleanly. Returns stdout and stderr.
fn boot(protocol: &str, vcpus: u8, extra: &[&str]) -> (String, String) {
    require_kvm();
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = busybox_initramfs(dir.path(), &INIT.replace("MARK", MARK_INIT_REACHED));
    let vcpus_arg = vcpus.to_string();
    let mut args = vec![
        "--boot-timer",
        "--boot-protocol",
        protocol,
        "--vcpus",
        &vcpus_arg,
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = capsa_with_env(
        &vmm_args(kernel, &initrd, &args),
        &[("CAPSA_LOG", "capsa_vmm=info")],
        600,
    );
    let wall = started.elapsed();
    let (stdout, stderr) = exited_with(&out, 0);
    assert!(stdout.contains("INIT REACHED"), "stdout:\n{stdout}");
    let nproc = stdout.lines().find_map(|l| l.strip_prefix("NPROC "));
    assert_eq!(
        nproc,
        Some(vcpus_arg.as_str()),
        "the guest does not use all {vcpus} vCPUs:\n{stdout}"
    );
    let online = format!("ONLINE 0-{}", vcpus - 1);
    let online = if vcpus == 1 { "ONLINE 0" } else { &online };
    assert!(stdout.lines().any(|l| l == online), "stdout:\n{stdout}");
    let init_us = boot_timer_us(&stderr, "guest init reached")
        .unwrap_or_else(|| panic!("no boot-timer mark in stderr:\n{stderr}"));
    let uptime = stdout
        .lines()
        .find_map(|l| l.strip_prefix("UPTIME "))
        .unwrap_or("?");
    let first_run_us = log_field_u64(&stderr, "first KVM_RUN", "elapsed_us");
    assert!(
        first_run_us.is_some(),
        "no first KVM_RUN log line:\n{stderr}"
    );
    // Reported, not asserted: performance lives in benches/.
    println!(
        "[{protocol}, {vcpus} vCPUs] host setup to first KVM_RUN: {:.1} ms; time to guest init \
         (boot timer): {:.3} s; guest uptime at init: {uptime}; wall time including reset: \
         {:.3} s",
        first_run_us.unwrap_or(0) as f64 / 1e3,
        init_us as f64 / 1e6,
        wall.as_secs_f64()
    );
    (stdout, stderr)
}

#[test]
fn boots_to_init_through_the_pvh_entry_and_resets_cleanly() {
    boot("pvh", 1, &[]);
}

#[test]
fn boots_to_init_through_the_64bit_entry_on_two_vcpus() {
    boot("linux64", 2, &[]);
}

/// Four vCPUs (more than this development host's two cores), profiled:
/// the report names guest kernel functions from the System.map next to
/// the kernel, and every application processor was seen running.
#[test]
fn boots_on_four_vcpus_with_the_guest_profiler() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("profile.txt");
    boot(
        "pvh",
        4,
        &[
            "--profile",
            report.to_str().unwrap(),
            "--profile-interval-ms",
            "20",
        ],
    );
    let text = std::fs::read_to_string(&report).expect("the profile report is written");
    assert!(
        text.contains("text symbols)"),
        "no System.map used:\n{text}"
    );
    let samples: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("# seconds"))
        .skip(1)
        .collect();
    assert!(samples.len() > 100, "{} samples", samples.len());
    // Kernel-mode samples (CPL 0) are named by function.
    let named = samples
        .iter()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&"0") && f.get(5).is_some_and(|w| !w.starts_with('['))
        })
        .count();
    assert!(
        named * 2 > samples.len(),
        "only {named} of {} samples name a kernel function:\n{text}",
        samples.len()
    );
    for cpu in 1..4 {
        let running = samples.iter().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&cpu.to_string().as_str()) && f.get(3) != Some(&"-")
        });
        assert!(running, "vCPU {cpu} never seen running:\n{text}");
    }
}

/// A minimal ELF64 "kernel" whose entry point executes `ud2`: with no IDT
/// the CPU triple-faults, and capsa must say so and exit non-zero.
fn crashing_kernel(dir: &std::path::Path) -> std::path::PathBuf {
    const LOAD: u64 = 0x100_0000;
    let code = [0x0f, 0x0b, 0xf4]; // ud2; hlt
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes());
    elf.extend_from_slice(&0u16.to_le_bytes());
    let off = 64 + 56;
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&(off as u64).to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    let path = dir.join("crash.elf");
    std::fs::write(&path, elf).unwrap();
    path
}

#[test]
fn guest_crash_is_a_clear_error_and_nonzero_exit() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = crashing_kernel(dir.path());
    let out = capsa(&["vmm", "--kernel", kernel.to_str().unwrap()], 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    assert!(
        stderr.contains("triple fault") || stderr.contains("KVM internal error"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("RIP 0x"), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

/// Runs `capsa vmm` with bad input: it must exit 1 with a message that
/// contains `expect`, without panicking.
fn refused(args: &[&str], expect: &str) {
    let out = capsa(args, 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: stderr:\n{stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: stderr:\n{stderr}");
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    require_kvm();
    let kernel = guest_kernel().to_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let not_kernel = dir.path().join("not-a-kernel");
    std::fs::write(&not_kernel, b"#!/bin/sh\necho hello\n").unwrap();
    let not_kernel = not_kernel.to_str().unwrap();

    refused(
        &["vmm", "--kernel", "/nonexistent/vmlinux"],
        "kernel: cannot open /nonexistent/vmlinux",
    );
    refused(
        &["vmm", "--kernel", not_kernel],
        "is neither an x86_64 ELF vmlinux nor a bzImage",
    );
    refused(
        &["vmm", "--kernel", &kernel, "--memory-mib", "0"],
        "memory_mib: 0 MiB is less than",
    );
    refused(
        &["vmm", "--kernel", &kernel, "--memory-mib", "4000000"],
        "more than this host's memory",
    );
    refused(
        &["vmm", "--kernel", &kernel, "--vcpus", "0"],
        "vcpus: must be at least 1",
    );
    refused(
        &[
            "vmm",
            "--kernel",
            &kernel,
            "--initramfs",
            "/nonexistent/initrd",
        ],
        "initramfs: cannot read /nonexistent/initrd",
    );
    refused(&["vmm"], "--kernel is required");

    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        format!(r#"{{"kernel": "{kernel}", "memory": 128}}"#),
    )
    .unwrap();
    refused(
        &["vmm", "--config", config.to_str().unwrap()],
        "unknown field `memory`",
    );
    std::fs::write(
        &config,
        format!(r#"{{"kernel": "{kernel}", "vcpus": "two"}}"#),
    )
    .unwrap();
    refused(
        &["vmm", "--config", config.to_str().unwrap()],
        "vcpus: invalid type",
    );
    std::fs::write(&config, "{").unwrap();
    refused(
        &["vmm", "--config", config.to_str().unwrap()],
        "invalid config file",
    );
    refused(
        &["vmm", "--config", "/nonexistent/vm.json"],
        "cannot read config file",
    );
}

/// Guest user space keeps its vector registers across the guest kernel's
/// context switches: two threads hold values in all 16 YMM registers while
/// they spin for 8 s and are switched, and none changes — or, where the
/// guest kernel cannot switch them (PVM hosts: no XSAVE in the guest
/// kernel, but AVX enabled in guest user mode), glibc at least does not use
/// AVX (the `GLIBC_TUNABLES` that capsa passes to init there), since its
/// AVX2 `memcpy` once left 16-byte stripes of zeros in copied data.
#[test]
fn guest_user_space_keeps_its_vector_registers() {
    use capsa_tests::support::devices::{busybox_initramfs_with, vsock_tool};
    require_kvm();
    let kernel = guest_kernel();
    let tool = std::fs::read(vsock_tool()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let init = "/bin/busybox mount -t devtmpfs dev /dev\n\
        /bin/vsock-tool vectors 8 2\n\
        /bin/busybox reboot -f\n";
    let initrd = busybox_initramfs_with(dir.path(), init, &[("bin/vsock-tool", 0o755, &tool)]);
    let out = capsa(&vmm_args(kernel, &initrd, &[]), 600);
    let (stdout, stderr) = exited_with(&out, 0);
    let line = stdout
        .lines()
        .find(|l| l.contains("vsock-tool: vectors:"))
        .unwrap_or_else(|| panic!("no result line:\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    println!("{line}");
    let switched = line.contains("AVX off") || line.contains("registers changed: 0x0000;");
    let glibc_avoids_avx = line.contains("glibc uses AVX: false, AVX2: false");
    assert!(
        switched || glibc_avoids_avx,
        "the guest kernel does not keep AVX registers and glibc uses AVX: {line}"
    );
    if !switched {
        println!(
            "warning: this host's guest kernel cannot switch AVX state; glibc avoids AVX, \
             other AVX code in guests is exposed (docs/kernel.md)"
        );
    }
}
