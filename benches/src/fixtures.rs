//! What every launch needs: the `capsa` binary, the guest agent, the guest
//! kernel, the busybox initramfs of the boot comparison, the container
//! rootfs (a tree, and an ext4 image of it) and virtiofsd. Built (or
//! found) once per run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use capsa_vmm::boot::initramfs::CpioWriter;

/// The line the boot-comparison init prints on the serial console right
/// after it wrote the boot-timer mark.
pub const INIT_LINE: &str = "capsa-bench: init reached";

/// What the container process prints (its first output is timed).
pub const CONTAINER_OUTPUT: &str = "capsa-bench: container output";

/// Small files in the rootfs's `/files` that the small-file job reads.
pub const SMALL_FILES: usize = 2000;
/// Bytes of each small file.
pub const SMALL_FILE_BYTES: usize = 100;
/// Files the small-file job writes to `/tmp`.
pub const WRITTEN_FILES: usize = 200;

/// `/init` of the boot-comparison initramfs, the same for every VMM: mount
/// devtmpfs, write the boot-timer mark (capsa sees it; elsewhere the write
/// goes to unassigned guest-physical memory and is dropped), print
/// [`INIT_LINE`] on the console, reset the machine.
pub fn boot_init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox devmem 0xc0000000 8 123\n\
         /bin/busybox echo '{INIT_LINE}'\n\
         /bin/busybox reboot -f\n"
    )
}

/// The workspace root (compile-time location of this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ is inside the workspace")
        .to_owned()
}

/// Everything prepared for a run.
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// The `capsa` binary.
    pub capsa: PathBuf,
    /// The statically linked guest agent (`CAPSA_AGENT` for capsa).
    pub agent: PathBuf,
    /// The guest kernel (vmlinux with a PVH entry).
    pub kernel: PathBuf,
    /// Uncompressed busybox initramfs with [`boot_init_script`] as /init.
    pub boot_initramfs: PathBuf,
    /// ext4 image of [`Fixtures::rootfs_tree`]: the container's rootfs
    /// with the `block` transport (read-only under a RAM overlay, as
    /// `io.capsa.rootfs=block` gives it).
    pub rootfs: PathBuf,
    /// The rootfs directory: busybox, and [`SMALL_FILES`] files in
    /// `/files`; shared by virtiofsd with the `virtiofs` transport.
    pub rootfs_tree: PathBuf,
    /// virtiofsd (found as the runtime finds it), if installed: launches
    /// with the `virtiofs` transport need it.
    pub virtiofsd: Option<PathBuf>,
}

fn run_stdout(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `capsa` binary: `$CAPSA_BIN`, else built now with cargo into the
/// same target directory and profile as this binary.
fn capsa_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    // target/<profile>/capsa-benches, or target/<profile>/deps/... for tests.
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let release = dir.ends_with("release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "capsa-vmm",
        "--bin",
        "capsa",
    ]);
    if release {
        cmd.arg("--release");
    }
    // target/x86_64-unknown-linux-gnu/<profile> (.cargo/config.toml
    // names the target): the target directory is two levels up.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        if let Some(target) = dir.parent().and_then(Path::parent) {
            cmd.env("CARGO_TARGET_DIR", target);
        }
    }
    run_stdout(&mut cmd, "building capsa")?;
    Ok(dir.join("capsa"))
}

/// The guest agent: `$CAPSA_AGENT`, else `guest-agent/build.sh`.
fn agent_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(capsa_vmm::guest_agent::AGENT_ENV) {
        return Ok(PathBuf::from(p));
    }
    let path = run_stdout(
        &mut Command::new(workspace_root().join("guest-agent/build.sh")),
        "guest-agent/build.sh",
    )?;
    Ok(PathBuf::from(path))
}

fn kernel() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAPSA_KERNEL") {
        return Ok(PathBuf::from(p));
    }
    let path = run_stdout(
        &mut Command::new(workspace_root().join("kernel-config/build.sh")),
        "kernel-config/build.sh",
    )?;
    Ok(PathBuf::from(path))
}

/// A statically linked busybox.
fn busybox() -> anyhow::Result<PathBuf> {
    let p = PathBuf::from("/bin/busybox");
    if !p.is_file() {
        bail!("a statically linked /bin/busybox is needed (apt-get install busybox-static)");
    }
    Ok(p)
}

fn write_boot_initramfs(path: &Path, busybox: &[u8]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        w.dir(d, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("init", 0o755, boot_init_script().as_bytes())?;
    w.finish()?;
    Ok(())
}

/// The rootfs tree (busybox as `/bin/busybox` and `/bin/sh`,
/// [`SMALL_FILES`] files in `/files`) and an ext4 image of it (no journal:
/// less guest work to mount it) made with `mke2fs -d`.
fn write_rootfs(dir: &Path, busybox: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let tree = dir.join("rootfs-tree");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "files", "run"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    let sh = tree.join("bin/sh");
    if !sh.exists() {
        std::os::unix::fs::symlink("busybox", &sh)?;
    }
    let content = vec![b'x'; SMALL_FILE_BYTES];
    for i in 0..SMALL_FILES {
        std::fs::write(tree.join(format!("files/f{i}")), &content)?;
    }
    let image = dir.join("rootfs.ext4");
    let _ = std::fs::remove_file(&image);
    run_stdout(
        Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-O",
                "^has_journal",
                "-N",
                "4096",
                "-d",
            ])
            .arg(&tree)
            .arg(&image)
            .arg("32M"),
        "mke2fs (e2fsprogs) for the container rootfs",
    )?;
    Ok((tree, image))
}

impl Fixtures {
    /// Finds or builds everything; files it makes go to `work`.
    pub fn prepare(work: &Path) -> anyhow::Result<Fixtures> {
        let capsa = capsa_bin()?;
        let agent = agent_bin()?;
        let kernel = kernel()?;
        for (what, p) in [("capsa", &capsa), ("agent", &agent), ("kernel", &kernel)] {
            if !p.is_file() {
                bail!("{what}: {} is not a file", p.display());
            }
        }
        let busybox = busybox()?;
        let boot_initramfs = work.join("boot-initramfs.cpio");
        write_boot_initramfs(&boot_initramfs, &std::fs::read(&busybox)?)?;
        let (rootfs_tree, rootfs) = write_rootfs(work, &busybox)?;
        Ok(Fixtures {
            capsa,
            agent,
            kernel,
            boot_initramfs,
            rootfs,
            rootfs_tree,
            virtiofsd: capsa_vmm::runtime::virtiofsd::locate().ok(),
        })
    }
}
