#!/usr/bin/env bash
# Sets everything up on a fresh Debian host and runs capsa's main job.
# For now: boots the guest kernel to a busybox /init, which prints a line
# and resets the VM; capsa reports the boot time and exits 0.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
"$top/scripts/setup.sh"
cargo build --release -p capsa-vmm --bin capsa
kernel=$("$top/kernel-config/build.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/dev" "$work/root/proc"
cp /bin/busybox "$work/root/bin/"
cat > "$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox devmem 0xc0000000 8 123
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "hello from the capsa guest: $(/bin/busybox uname -sr), up $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
/bin/busybox reboot -f
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet > "$work/initramfs.cpio")
"$top/target/release/capsa" vmm --kernel "$kernel" --initramfs "$work/initramfs.cpio" \
  --serial-console --boot-timer
