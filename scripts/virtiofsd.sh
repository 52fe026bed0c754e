#!/usr/bin/env bash
# Installs virtiofsd, the virtio-fs backend that serves a VM container's
# rootfs and volumes (docs/runtime.md § Rootfs, Mounts), and prints the path
# of its binary on stdout.
#
#   scripts/virtiofsd.sh              install (or take from the cache), print the path
#   scripts/virtiofsd.sh --version    print the pinned version only
#
# virtiofsd is not packaged in Debian 12; this builds the Rust virtiofsd
# from crates.io with `cargo install --locked` at the version pinned in
# scripts/virtiofsd.version (capsa embeds the same file, vmm/build.rs, and
# looks for $CAPSA_CACHE_DIR/virtiofsd/<version>/bin/virtiofsd). The result
# is cached outside the checkout, keyed by that version, so a second call is
# instant. Build dependencies (libseccomp-dev, libcap-ng-dev) are installed
# with apt-get when missing. Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(tr -d '[:space:]' <"$here/virtiofsd.version")
log() { echo "capsa virtiofsd: $*" >&2; }

if [ "${1:-}" = "--version" ]; then
  echo "$version"
  exit 0
fi

cache_root=${CAPSA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/capsa}
out=$cache_root/virtiofsd/$version
bin=$out/bin/virtiofsd
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

deps=(libseccomp-dev libcap-ng-dev pkg-config)
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

mkdir -p "$cache_root/virtiofsd"
exec 9>"$cache_root/virtiofsd/.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

log "building virtiofsd $version (cargo install --locked; a few minutes)"
tmp=$(mktemp -d "$cache_root/virtiofsd/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Built outside the checkout (its own target dir; cwd outside the
# workspace, whose .cargo/config.toml links statically: virtiofsd links
# libseccomp and libcap-ng dynamically).
(cd "$tmp" && CARGO_TARGET_DIR=$tmp/target \
  cargo install --locked --quiet --version "=$version" --root "$tmp/root" virtiofsd >&2)
"$tmp/root/bin/virtiofsd" --version >&2
mkdir -p "$out/bin"
mv "$tmp/root/bin/virtiofsd" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
