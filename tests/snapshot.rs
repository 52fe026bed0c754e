//! Snapshot and restore on a real guest (issue 13 item 1,
//! docs/snapshot.md). One guest is booted once (a busybox init): it writes
//! a marker to its disk with `O_DIRECT`, listens on vsock, and counts in a
//! shell loop, printing the count on the serial console. A `SIGUSR1`
//! snapshots it and the VMM exits; then:
//! - a fresh `capsa vmm --restore-from` process resumes the guest: the
//!   count goes on from above its last value before the snapshot (not
//!   from the start), vsock carries data both ways, and the guest reads
//!   back its disk marker with `O_DIRECT` after restore;
//! - a truncated, a corrupted and an other-major-version state file, and
//!   a truncated memory file, are each refused with a clear error.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use capsa_agent::client::{Connector, HybridVsockConnector};
use capsa_tests::support::devices::*;
use capsa_tests::*;

/// Bound on one guest's boot to its counting loop (30–60 s on an idle
/// PVM host, longer with the cores shared).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on a restored guest's first signs of life.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(180);
/// The guest's vsock echo port.
const ECHO_PORT: u32 = 5000;
/// What the guest writes to its disk before the snapshot.
const MARKER: &str = "written before the snapshot";
/// The guest prints its count every this many iterations.
const COUNT_STEP: u64 = 100_000;

/// The snapshot that every test here restores or corrupts, taken once.
struct Fixture {
    dir: tempfile::TempDir,
    snapshot: PathBuf,
    disk: PathBuf,
    last_count: u64,
}

fn counts(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

fn guest_init() -> String {
    format!(
        "B=/bin/busybox\n\
         $B mount -t devtmpfs dev /dev\n\
         $B mount -t proc proc /proc\n\
         echo '{MARKER}' | $B dd of=/dev/vda bs=4096 conv=sync oflag=direct 2>/dev/null && echo 'DISK WRITTEN'\n\
         ( /bin/vsock-tool echo {ECHO_PORT}; \
           echo \"DISK READ $($B dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | $B head -n 1)\" ) &\n\
         echo COUNTING\n\
         i=0\n\
         while :; do i=$((i+1)); if [ $((i % {COUNT_STEP})) = 0 ]; then echo \"count $i\"; fi; done\n"
    )
}

/// Boots the guest, waits until it has counted for a while, snapshots it
/// with `SIGUSR1` (`--snapshot-then exit`, the default).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        require_kvm();
        let kernel = guest_kernel();
        let dir = tempfile::tempdir().unwrap();
        let tool = std::fs::read(vsock_tool()).unwrap();
        let initrd = busybox_initramfs_with(
            dir.path(),
            &guest_init(),
            &[("bin/vsock-tool", 0o755, &tool)],
        );
        let disk = dir.path().join("disk.raw");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let snapshot = dir.path().join("snap");
        let uds = dir.path().join("vsock-before.sock");
        let (disk_s, snap_s, uds_s) = (
            disk.to_str().unwrap(),
            snapshot.to_str().unwrap(),
            uds.to_str().unwrap(),
        );
        let vm = Vm::spawn(
            &vmm_args(
                kernel,
                &initrd,
                &[
                    "--disk",
                    disk_s,
                    "--vsock-uds",
                    uds_s,
                    "--snapshot-to",
                    snap_s,
                    "--snapshot-when",
                    "signal",
                ],
            ),
            &[(
                "CAPSA_LOG",
                Path::new("capsa_vmm=info,capsa_vmm::snapshot=debug"),
            )],
        );
        let counted = vm.wait_for_line(BOOT_TIMEOUT, |l| {
            counts(l).first().is_some_and(|&c| c >= 3 * COUNT_STEP)
        });
        assert!(
            counted.is_some(),
            "the guest never counted\nconsole:\n{}\nstderr:\n{}",
            vm.console(),
            vm.stderr()
        );
        assert!(vm.console().contains("DISK WRITTEN"), "{}", vm.console());
        // SAFETY: kill(2) on the child we spawned.
        assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGUSR1) }, 0);
        let exit = vm.wait(Duration::from_secs(120));
        exit.assert_clean();
        assert!(
            exit.stderr.contains("snapshot written"),
            "stderr:\n{}",
            exit.stderr
        );
        let last_count = counts(&exit.stdout).into_iter().max().unwrap();
        for l in exit.stderr.lines() {
            if l.contains("MSRs saved") || l.contains("snapshot written") {
                println!("{l}");
            }
        }
        println!(
            "snapshot taken after count {last_count}: state {} bytes, memory {} bytes",
            std::fs::metadata(snapshot.join("state")).unwrap().len(),
            std::fs::metadata(snapshot.join("memory")).unwrap().len()
        );
        Fixture {
            dir,
            snapshot,
            disk,
            last_count,
        }
    })
}

fn restore_args<'a>(snapshot: &'a Path, disk: &'a Path, uds: &'a Path) -> Vec<&'a str> {
    vec![
        "--log-format",
        "text",
        "vmm",
        "--restore-from",
        snapshot.to_str().unwrap(),
        "--serial-console",
        "--disk",
        disk.to_str().unwrap(),
        "--vsock-uds",
        uds.to_str().unwrap(),
    ]
}

/// Sends `data` to the guest's echo port and returns what came back.
fn echo_through_vsock(uds: &Path, data: &[u8], deadline: Instant) -> Vec<u8> {
    let connector = HybridVsockConnector::new(uds);
    let mut stream = loop {
        match connector.connect(ECHO_PORT) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                println!("CONNECT {ECHO_PORT}: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("CONNECT {ECHO_PORT} after restore never succeeded: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).expect("read the echo");
    back
}

/// (a) the count continues in another process, (b) the disk write made
/// before the snapshot is read back after it, (c) vsock works after it.
#[test]
fn restored_guest_keeps_counting_reads_its_disk_and_talks_vsock() {
    let f = fixture();
    let uds = f.dir.path().join("vsock-after.sock");
    let vm = Vm::spawn(
        &restore_args(&f.snapshot, &f.disk, &uds),
        &[("CAPSA_LOG", Path::new("capsa_vmm=info"))],
    );
    let first = vm.wait_for_line(RESTORE_TIMEOUT, |l| !counts(l).is_empty());
    let Some(first) = first else {
        panic!(
            "the restored guest never counted\nconsole:\n{}\nstderr:\n{}",
            vm.console(),
            vm.stderr()
        );
    };
    let first = counts(&first)[0];
    println!(
        "restored: first count {first} (last before the snapshot {})\n{}",
        f.last_count,
        vm.stderr()
            .lines()
            .find(|l| l.contains("VM restored"))
            .unwrap_or("")
    );
    assert!(
        first > f.last_count,
        "the count restarted: {first} after restore, {} before",
        f.last_count
    );
    assert!(
        !vm.console().contains("COUNTING"),
        "the guest booted again instead of resuming:\n{}",
        vm.console()
    );

    let data = pattern(64 * 1024 + 7, 13);
    let back = echo_through_vsock(&uds, &data, Instant::now() + RESTORE_TIMEOUT);
    assert!(
        back == data,
        "vsock echo after restore: sent {} bytes, got {}",
        data.len(),
        back.len()
    );
    let read = vm.wait_for_line(RESTORE_TIMEOUT, |l| l.starts_with("DISK READ"));
    assert_eq!(
        read.as_deref(),
        Some(format!("DISK READ {MARKER}").as_str()),
        "console:\n{}",
        vm.console()
    );
    let later = vm.wait_for_line(RESTORE_TIMEOUT, |l| {
        counts(l).first().is_some_and(|&c| c > first)
    });
    assert!(later.is_some(), "the count stopped after restore");
    let exit = vm.wait(Duration::from_millis(1));
    assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
}

/// A copy of the snapshot in a new directory, changed by `spoil`.
fn spoiled(f: &Fixture, name: &str, spoil: impl FnOnce(&Path)) -> PathBuf {
    let dir = f.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["state", "memory"] {
        std::fs::copy(f.snapshot.join(file), dir.join(file)).unwrap();
    }
    spoil(&dir);
    dir
}

fn refused(f: &Fixture, snapshot: &Path, expect: &str) {
    let uds = snapshot.join("vsock.sock");
    let out = capsa(&restore_args(snapshot, &f.disk, &uds), 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(expect),
        "{}: expected a failure naming {expect:?}; status {:?}, stderr:\n{stderr}",
        snapshot.display(),
        out.status
    );
    println!("{}: {}", snapshot.display(), stderr.trim());
}

/// (d) a truncated, a flipped-byte and an other-major-version state file,
/// and a truncated memory file, are refused with a clear error.
#[test]
fn corrupted_snapshots_are_refused() {
    let f = fixture();
    let truncated = spoiled(f, "truncated", |d| {
        let p = d.join("state");
        let len = std::fs::metadata(&p).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(len / 2).unwrap();
    });
    refused(f, &truncated, "truncated");
    let flipped = spoiled(f, "flipped", |d| {
        let p = d.join("state");
        let mut bytes = std::fs::read(&p).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
    });
    refused(f, &flipped, "checksum");
    let major = spoiled(f, "major", |d| {
        let p = d.join("state");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[8..10].copy_from_slice(&99u16.to_le_bytes());
        std::fs::write(&p, bytes).unwrap();
    });
    refused(f, &major, "version 99.0 is not supported");
    let short_memory = spoiled(f, "short-memory", |d| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("memory"))
            .unwrap();
        file.set_len(1 << 20).unwrap();
    });
    refused(f, &short_memory, "truncated?");
    let no_disk = spoiled(f, "no-disk", |_| {});
    let uds = no_disk.join("vsock.sock");
    let out = capsa(
        &[
            "vmm",
            "--restore-from",
            no_disk.to_str().unwrap(),
            "--vsock-uds",
            uds.to_str().unwrap(),
        ],
        120,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("virtio-blk"),
        "a device layout that differs must be refused naming the device:\n{stderr}"
    );
    println!("missing disk: {}", stderr.trim());
}

/// The template shape (issue 13 items 1–2): `capsa vmm --agent` is
/// snapshotted when the agent reports it listens (`--snapshot-when
/// agent-ready`, the default) and runs on (`--snapshot-then continue`):
/// its agent still answers. A fresh process restored from the snapshot
/// with another vsock socket has an agent that answers `hello` (the
/// restored vsock device reset the transport; the agent's listener
/// stayed), and `shutdown` ends it cleanly.
#[test]
fn agent_ready_snapshot_continues_and_restores_with_the_agent_answering() {
    use capsa_agent::client::Client;
    use capsa_tests::support::agent::agent_binary;
    require_kvm();
    let kernel = guest_kernel();
    let agent = agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let (snap, uds_a, uds_b, cache) = (
        dir.path().join("snap"),
        dir.path().join("a.sock"),
        dir.path().join("b.sock"),
        dir.path().join("cache"),
    );
    let info = Path::new("capsa_vmm=info");
    let vm = Vm::spawn(
        &[
            "--log-format",
            "text",
            "vmm",
            "--kernel",
            kernel.to_str().unwrap(),
            "--agent",
            "--vsock-uds",
            uds_a.to_str().unwrap(),
            "--snapshot-to",
            snap.to_str().unwrap(),
            "--snapshot-then",
            "continue",
        ],
        &[
            ("CAPSA_AGENT", agent),
            ("CAPSA_CACHE_DIR", &cache),
            ("CAPSA_LOG", info),
        ],
    );
    let deadline = vm.started + BOOT_TIMEOUT;
    while !vm.stderr().contains("snapshot written") {
        assert!(
            Instant::now() < deadline && !vm.stderr().contains("snapshot failed"),
            "no snapshot at agent-ready\nstderr:\n{}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{}",
        vm.stderr()
            .lines()
            .find(|l| l.contains("snapshot written"))
            .unwrap()
    );
    let (client, _) = Client::connect_retry(
        &HybridVsockConnector::new(&uds_a),
        Instant::now() + RESTORE_TIMEOUT,
        Duration::from_millis(100),
    )
    .expect("the agent of the VM that went on after its snapshot answers");
    client.shutdown().expect("shutdown");
    vm.wait(Duration::from_secs(120)).assert_clean();

    let restored = Vm::spawn(
        &[
            "--log-format",
            "text",
            "vmm",
            "--restore-from",
            snap.to_str().unwrap(),
            "--vsock-uds",
            uds_b.to_str().unwrap(),
        ],
        &[("CAPSA_LOG", info)],
    );
    let connected = Client::connect_retry(
        &HybridVsockConnector::new(&uds_b),
        restored.started + RESTORE_TIMEOUT,
        Duration::from_millis(50),
    );
    let answered_after = restored.started.elapsed();
    let (client, hello) = connected.unwrap_or_else(|e| {
        panic!(
            "the restored agent never answered: {e}\nstderr:\n{}",
            restored.stderr()
        )
    });
    println!(
        "restore → agent hello: {:.3} s (guest uptime {} ms)\n{}",
        answered_after.as_secs_f64(),
        hello.uptime_ms,
        restored
            .stderr()
            .lines()
            .filter(|l| l.contains("VM restored") || l.contains("transport reset"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    client.shutdown().expect("shutdown of the restored guest");
    restored.wait(Duration::from_secs(120)).assert_clean();
}

/// A snapshot in the middle of the guest kernel's boot, on two vCPUs
/// (`--snapshot-after-ms`: the vCPUs are stopped wherever they are, in
/// emulated kernel code, between MMIO and port-I/O exits), restored in a
/// fresh process: the boot goes on to init, which sees both CPUs and
/// counts.
#[test]
fn snapshot_mid_boot_on_two_vcpus_boots_on_after_restore() {
    require_kvm();
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "B=/bin/busybox\n\
         $B mount -t proc proc /proc\n\
         echo \"CPUS $($B grep -c ^processor /proc/cpuinfo)\"\n\
         i=0\n\
         while :; do i=$((i+1)); if [ $((i % {COUNT_STEP})) = 0 ]; then echo \"count $i\"; fi; done\n"
    );
    let initrd = capsa_tests::busybox_initramfs(dir.path(), &init);
    let snap = dir.path().join("snap");
    let vm = Vm::spawn(
        &vmm_args(
            kernel,
            &initrd,
            &[
                "--vcpus",
                "2",
                "--snapshot-to",
                snap.to_str().unwrap(),
                "--snapshot-after-ms",
                "4000",
            ],
        ),
        &[(
            "CAPSA_LOG",
            Path::new("capsa_vmm=info,capsa_vmm::snapshot=debug"),
        )],
    );
    let exit = vm.wait(BOOT_TIMEOUT);
    exit.assert_clean();
    assert!(
        !exit.stdout.contains("CPUS"),
        "the snapshot was to be taken before init:\n{}",
        exit.stdout
    );
    for l in exit.stderr.lines() {
        if l.contains("MSRs saved") || l.contains("snapshot written") {
            println!("{l}");
        }
    }
    let restored = Vm::spawn(
        &[
            "--log-format",
            "text",
            "vmm",
            "--restore-from",
            snap.to_str().unwrap(),
            "--serial-console",
        ],
        &[("CAPSA_LOG", Path::new("capsa_vmm=info"))],
    );
    let counted = restored.wait_for_line(BOOT_TIMEOUT, |l| !counts(l).is_empty());
    assert!(
        counted.is_some(),
        "the restored guest did not boot on to init\nconsole:\n{}\nstderr:\n{}",
        restored.console(),
        restored.stderr()
    );
    assert!(
        restored.console().contains("CPUS 2"),
        "console:\n{}",
        restored.console()
    );
    let exit = restored.wait(Duration::from_millis(1));
    assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
}
