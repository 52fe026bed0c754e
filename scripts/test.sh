#!/usr/bin/env bash
# Runs all of capsa's tests: formatting, lints, unit tests and the
# end-to-end tests that boot real guests (the engine tests start and stop
# private containerd/dockerd instances themselves). Sets the host up first.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
"$top/scripts/setup.sh"
# Should a test run be cut short, do not leave the private engines running.
# Nor the VM template builders `create` starts in the background
# (docs/runtime.md, "Warm starts").
trap '"$top/scripts/engines.sh" stop >/dev/null 2>&1 || true; pkill -f -- "build-template --no-wait" || true' EXIT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Boots are CPU-bound in guest kernel mode: at most one per core.
cargo test --workspace --no-fail-fast -- --test-threads "$(nproc)"
