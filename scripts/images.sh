#!/usr/bin/env bash
# Builds capsa's sample container images from Debian's packages and loads
# them into the engines of scripts/engines.sh:
#
#   localhost/capsa-debian:bookworm   Debian bookworm minbase (mmdebstrap --variant=minbase,
#                                     from the host's configured apt sources)
#   localhost/capsa-busybox:latest    busybox-static with `busybox --install -s`
#
#   scripts/images.sh            build what is missing, import into podman, and into
#                                containerd and docker when those run (scripts/engines.sh start)
#   scripts/images.sh --list     print the image names
#
# Rootfs tarballs and OCI/docker archives are cached under
# ${CAPSA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/capsa}/images/ and never
# rebuilt when present (delete a file to rebuild it). Both images have
# CMD ["/bin/sh"]. Needs root; progress goes to stderr.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CAPSA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/capsa}/images
log() { echo "capsa images: $*" >&2; }

images=(localhost/capsa-debian:bookworm localhost/capsa-busybox:latest)
if [ "${1:-}" = "--list" ]; then printf '%s\n' "${images[@]}"; exit 0; fi

eval "$("$top/scripts/engines.sh" env)"
"$top/scripts/engines.sh" setup
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Rootfs tarballs.
rootfs_debian() {
  # No mirror argument: mmdebstrap uses the host's apt sources.
  mmdebstrap --quiet --variant=minbase bookworm "$1" >&2
}
rootfs_busybox() {
  local r=$tmp/busybox-root
  mkdir -p "$r/bin" "$r/sbin" "$r/usr/bin" "$r/usr/sbin" "$r/etc" "$r/tmp" "$r/root" \
           "$r/proc" "$r/sys" "$r/dev" "$r/run" "$r/var"
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  chroot "$r" /bin/busybox --install -s
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
  tar -C "$r" --numeric-owner -cf "$1" .
}

for name in debian busybox; do
  if [ ! -s "$cache/$name-rootfs.tar" ]; then
    log "building the $name rootfs"
    "rootfs_$name" "$tmp/$name-rootfs.tar"
    mv "$tmp/$name-rootfs.tar" "$cache/$name-rootfs.tar"
  fi
done

# Not `ctr image ls -q | grep -q`: ctr writes one line at a time, so when
# grep quits at a match ctr may die of SIGPIPE, and pipefail reports the
# image missing (seen in CI for busybox, listed before debian).
containerd_has() { local list; list=$(ctr image ls -q) && grep -qxF "$1" <<<"$list"; }

image_of() { case $1 in debian) echo "${images[0]}" ;; busybox) echo "${images[1]}" ;; esac; }

for name in debian busybox; do
  image=$(image_of "$name")
  # podman (the source of the archives for the other engines).
  if ! podman image exists "$image"; then
    log "importing $image into podman"
    podman import --quiet --change 'CMD ["/bin/sh"]' "$cache/$name-rootfs.tar" "$image" >/dev/null
  fi
  if [ ! -s "$cache/$name.oci.tar" ]; then
    podman save --quiet --format oci-archive -o "$tmp/$name.oci.tar" "$image"
    mv "$tmp/$name.oci.tar" "$cache/$name.oci.tar"
  fi
  # docker 20.10 loads docker archives, not OCI ones.
  if [ ! -s "$cache/$name.docker.tar" ]; then
    podman save --quiet --format docker-archive -o "$tmp/$name.docker.tar" "$image"
    mv "$tmp/$name.docker.tar" "$cache/$name.docker.tar"
  fi
  # containerd (namespace "default", what ctr uses), when it runs.
  if ctr version >/dev/null 2>&1; then
    if ! containerd_has "$image"; then
      log "importing $image into containerd"
      ctr image import --base-name "${image%:*}" "$cache/$name.oci.tar" >/dev/null
      containerd_has "$image" || { log "containerd has no $image after the import"; exit 1; }
    fi
  fi
  # docker, when it runs.
  if docker version >/dev/null 2>&1; then
    if ! docker image inspect "$image" >/dev/null 2>&1; then
      log "loading $image into docker"
      docker load -q -i "$cache/$name.docker.tar" >/dev/null
    fi
  fi
done
