#!/usr/bin/env bash
# Runs all of capsa's tests: formatting, lints, unit tests and the
# end-to-end tests that boot real guests. Sets the host up first.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
"$top/scripts/setup.sh"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Boots are CPU-bound in guest kernel mode: at most one per core.
cargo test --workspace -- --test-threads "$(nproc)"
