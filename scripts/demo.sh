#!/usr/bin/env bash
# Sets everything up on a fresh Debian host and runs capsa's main job: a
# container from a real Debian image, started by podman with capsa as its
# OCI runtime, inside its own micro-VM with its own kernel.
#
# What it does: scripts/setup.sh (packages, guest kernel, guest agent,
# private engine configs), builds capsa, builds the sample images
# (scripts/images.sh, cached), then runs
#   podman run --rm --runtime target/x86_64-unknown-linux-gnu/release/capsa localhost/capsa-debian:bookworm ...
# which prints the guest's kernel (capsa's, not the host's) and exits 3,
# the container's status. Needs root and /dev/kvm.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
"$top/scripts/setup.sh"
cargo build --release -p capsa-vmm -p capsa-jailer --bin capsa --bin capsa-jailer
capsa=$top/target/x86_64-unknown-linux-gnu/release/capsa
"$top/scripts/images.sh"
eval "$("$top/scripts/engines.sh" env)"
echo "host kernel: $(uname -r)"
set +e
podman run --rm --runtime "$capsa" localhost/capsa-debian:bookworm \
  sh -c 'echo "in the container: $(cat /etc/debian_version), kernel $(uname -r) on $(nproc) vCPU"; exit 3'
status=$?
set -e
echo "container exit status: $status (3 expected)"
[ "$status" -eq 3 ]
