#!/usr/bin/env bash
# Builds capsa's guest kernel and prints the path of its vmlinux on stdout.
#
#   kernel-config/build.sh            build (or take from the cache), print the path
#   kernel-config/build.sh --key      print the cache key only
#
# Source: Debian's linux-source-6.1 package; configuration: config.sh;
# patches: patches/*.patch (see docs/kernel.md). The result is cached
# outside the checkout, in $CAPSA_CACHE_DIR/kernel/<key>/ (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/capsa), keyed by a hash of the source
# package version, config.sh, the patches and this script, so a second call
# is instant. Build dependencies are installed with apt-get when missing.
# Progress goes to stderr; set CAPSA_KERNEL_JOBS to change make's -j.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${CAPSA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/capsa}
kcache=$cache_root/kernel
log() { echo "capsa kernel: $*" >&2; }

# The key: the source package version, config.sh, the patches and this
# script. `--key` only reads it (capsa's build embeds it, vmm/build.rs), so
# it installs nothing and fails while linux-source-6.1 is missing.
kernel_key() {
  local src_version
  src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) || return 1
  [ -n "$src_version" ] || return 1
  { echo "linux-source-6.1 $src_version"; cat "$here/config.sh" "$here"/patches/*.patch "$here/build.sh"; } \
    | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--key" ]; then
  kernel_key || { log "linux-source-6.1 is not installed: no key"; exit 1; }
  exit 0
fi

deps=(linux-source-6.1 flex bison libelf-dev libssl-dev bc make gcc xz-utils patch)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    log "need root to apt-get install ${missing[*]}"; exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
src_tar=/usr/src/linux-source-6.1.tar.xz
key=$(kernel_key)

out=$kcache/$key
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

mkdir -p "$kcache"
exec 9>"$kcache/.lock"
flock 9
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

work=$(mktemp -d "$kcache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building kernel $key from linux-source-6.1 $src_version in $work (a few minutes)"
tar -xf "$src_tar" -C "$work"
cd "$work/linux-source-6.1"
for p in "$here"/patches/*.patch; do
  patch -p1 --quiet --forward < "$p"
done
sh "$here/config.sh"
# config.sh turns options on with scripts/config; Kconfig silently drops
# those whose dependencies are missing, so check what must be there.
for opt in PVH KVM_GUEST VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_VSOCKETS HW_RANDOM_VIRTIO \
           VIRTIO_FS EXT4_FS EROFS_FS OVERLAY_FS DEVMEM BLK_DEV_INITRD DEVTMPFS UNIX98_PTYS X86_MPPARSE \
           SECCOMP_FILTER CGROUPS MEMCG PID_NS SERIAL_8250_CONSOLE VIRTIO_NET INET IPV6 SMP X86_LOCAL_APIC X86_IO_APIC; do
  grep -q "^CONFIG_$opt=y" .config || { log "CONFIG_$opt is not set after config.sh"; exit 1; }
done
# And what must be off (an option a patch adds is absent if the patch is).
for opt in SLUB_SYSFS; do
  grep -q "^# CONFIG_$opt is not set" .config || { log "CONFIG_$opt is not off after config.sh"; exit 1; }
done
if ! make -j"${CAPSA_KERNEL_JOBS:-$(nproc)}" vmlinux > build.log 2>&1; then
  tail -n 40 build.log >&2
  log "kernel build failed"
  exit 1
fi
mkdir -p "$out.tmp"
cp vmlinux .config System.map "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1))"
echo "$out/vmlinux"
