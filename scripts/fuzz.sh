#!/usr/bin/env bash
# Runs a fuzzing campaign over every capsa fuzz target (docs/devices.md,
# "Fuzzing"): builds each target with cargo-fuzz (installed if missing),
# runs them one at a time under `nice`, keeps corpora and crash artifacts
# outside the checkout, and prints execs, execs/s and crashes per target.
#
#   scripts/fuzz.sh [BUDGET] [TARGET...]
#
# BUDGET: `<N>s` runs each target for N seconds (-max_total_time), a plain
# number (or `<N>M`, millions) for that many executions (-runs); default
# 60s. TARGETs default to all of them. Environment:
#   CAPSA_FUZZ_DIR        corpora, artifacts, logs (~/.cache/capsa/fuzz)
#   CAPSA_FUZZ_SANITIZER  cargo-fuzz --sanitizer (default none: the
#                         harnessed code is safe Rust; `address` for ASan)
#   CAPSA_FUZZ_NICE       niceness of the runs (19)
# Exit status: 1 if any target crashed (its input is in artifacts/<target>).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
budget=${1:-60s}
shift || true
dir=${CAPSA_FUZZ_DIR:-$HOME/.cache/capsa/fuzz}
sanitizer=${CAPSA_FUZZ_SANITIZER:-none}
niceness=${CAPSA_FUZZ_NICE:-19}

declare -A crate_of=(
  [blk_request]=devices/fuzz [vsock_packet]=devices/fuzz [net_tx]=devices/fuzz
  [vsock_conn]=devices/fuzz [mmio_regs]=devices/fuzz
  [agent_lines]=guest-agent/fuzz [client_replies]=guest-agent/fuzz
)
all=(blk_request vsock_packet net_tx vsock_conn mmio_regs agent_lines client_replies)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

case $budget in
  *s) limit=(-max_total_time="${budget%s}") ;;
  *M) limit=(-runs=$(( ${budget%M} * 1000000 ))) ;;
  *) limit=(-runs="$budget") ;;
esac

if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

mkdir -p "$dir"
summary=()
failed=0
for t in "${targets[@]}"; do
  crate=${crate_of[$t]:-}
  [ -n "$crate" ] || { echo "unknown target $t (known: ${all[*]})" >&2; exit 2; }
  corpus=$dir/corpus/$t artifacts=$dir/artifacts/$t log=$dir/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$dir/logs"
  (cd "$top/$crate" && cargo +nightly fuzz build -O --sanitizer "$sanitizer" "$t")
  echo "== $t (${limit[*]}), log: $log"
  set +e
  (cd "$top/$crate" && nice -n "$niceness" cargo +nightly fuzz run -O --sanitizer "$sanitizer" \
    "$t" "$corpus" -- "${limit[@]}" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/") >"$log" 2>&1
  status=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashed=no
  if [ "$status" -ne 0 ] || grep -qE '^(==[0-9]+== ?ERROR|SUMMARY: libFuzzer)' "$log"; then
    crashed="yes (status $status, see $log and $artifacts)"
    failed=1
  fi
  summary+=("$(printf '%-15s %12s %10s  %s' "$t" "${execs:-?}" "${rate:-?}" "$crashed")")
  echo "${summary[-1]}"
done
echo
printf '%-15s %12s %10s  %s\n' target execs execs/s crashed
printf '%s\n' "${summary[@]}"
exit "$failed"
