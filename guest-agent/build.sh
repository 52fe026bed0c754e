#!/bin/sh
# Builds the statically linked guest agent and prints the binary's path (and
# nothing else) on stdout. Honours CARGO_TARGET_DIR.
#
# The workspace's release profile has panic = "abort"; the agent is PID 1 and
# catches panics of connection threads instead of dying, so it is built with
# panic = "unwind" (CARGO_PROFILE_RELEASE_PANIC).
set -eu
cd "$(dirname "$0")/.."
CARGO_PROFILE_RELEASE_PANIC=unwind RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo build -p capsa-agent --release --target x86_64-unknown-linux-gnu >&2
target_dir="${CARGO_TARGET_DIR:-$(pwd)/target}"
case "$target_dir" in
    /*) ;;
    *) target_dir="$(pwd)/$target_dir" ;;
esac
echo "$target_dir/x86_64-unknown-linux-gnu/release/capsa-agent"
