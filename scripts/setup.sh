#!/usr/bin/env bash
# Sets up a Debian (bookworm) host for capsa: the packages its tests and
# demo use, the guest kernel (kernel-config/build.sh, cached outside the
# checkout) and the guest agent. Safe to run again: it only does what is
# missing. Needs root (apt-get, and /dev/kvm for the tests).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "capsa setup: $*" >&2; }

packages=(
  busybox-static    # the test and demo guests' userland
  e2fsprogs         # mkfs.ext4 -d: container rootfs images
  erofs-utils       # mkfs.erofs: read-only rootfs images
  cpio file         # test fixtures cross-check archives and binaries
  qemu-system-x86   # peer VMM for the boot benchmark
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [ ! -e /dev/kvm ]; then
  log "warning: /dev/kvm is missing; capsa needs KVM to run guests and its end-to-end tests will fail"
fi

log "guest kernel: $("$top/kernel-config/build.sh")"
log "guest agent: $("$top/guest-agent/build.sh")"
