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
  fonts-dejavu-core # text in the benchmark charts
  # Container engines that drive capsa as their OCI runtime (tests/engines.rs,
  # docs/engines.md); runc is also what capsa hands `process` containers to.
  podman runc conmon uidmap fuse-overlayfs slirp4netns containernetworking-plugins
  golang-github-containers-common catatonit iptables
  containerd        # ctr run --runc-binary capsa
  docker.io         # dockerd with a "capsa" runtimes entry
  mmdebstrap        # scripts/images.sh: the Debian minbase sample image
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

# Private configurations of podman, containerd and dockerd (never /etc);
# the daemons are started by scripts/engines.sh start (and the tests).
"$top/scripts/engines.sh" setup

log "guest kernel: $("$top/kernel-config/build.sh")"
# virtiofsd serves VM containers' rootfs and volumes (not packaged in
# Debian 12: built with cargo, cached by version outside the checkout).
log "virtiofsd: $("$top/scripts/virtiofsd.sh")"
log "guest agent: $("$top/guest-agent/build.sh")"
