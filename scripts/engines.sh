#!/usr/bin/env bash
# Private environments of the container engines that use capsa as their OCI
# runtime: podman (no daemon), containerd (+ ctr) and dockerd. Everything
# lives under capsa-owned directories; nothing in /etc is touched, and the
# host's own podman/containerd/docker state (if any) is not used.
#
#   scripts/engines.sh setup          write the configurations (idempotent; setup.sh runs it)
#   scripts/engines.sh start [WHAT]   start containerd and dockerd (WHAT: containerd|docker|all, default all)
#   scripts/engines.sh stop           remove their containers, stop dockerd, containerd and their shims
#   scripts/engines.sh status         print which daemons run (exit 1 if none)
#   scripts/engines.sh env            print the exports to use the engines: eval "$(scripts/engines.sh env)"
#   scripts/engines.sh calls          print the logged runtime calls (see runc-logged below)
#
# Paths (override with the environment):
#   CAPSA_ENGINES_DIR  (default /var/lib/capsa-engines): configs, podman storage,
#                      containerd root, docker data-root, wrapper scripts
#   CAPSA_ENGINES_RUN  (default /run/capsa-engines): sockets, pid files, daemon logs,
#                      the runtime-call log
#   CAPSA_BIN          the capsa binary registered as docker's "capsa" runtime
#                      (default: `command -v capsa`, else target/x86_64-unknown-linux-gnu/release/capsa)
#
# `runc-logged` ($CAPSA_ENGINES_DIR/bin/runc-logged) is runc behind a wrapper
# that appends every invocation (caller, argv, stdio, exit status) to
# $CAPSA_ENGINES_RUN/runtime-calls.log and keeps a copy of each bundle's
# config.json next to it: that is how the engines' real calls in
# docs/engines.md were captured. It is registered as docker's "runc-logged"
# runtime and used by the runc variants of tests/engines.rs.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${CAPSA_ENGINES_DIR:-/var/lib/capsa-engines}
run=${CAPSA_ENGINES_RUN:-/run/capsa-engines}
log() { echo "capsa engines: $*" >&2; }

containerd_sock=$run/containerd/containerd.sock
docker_sock=$run/docker.sock

capsa_bin() {
  if [ -n "${CAPSA_BIN:-}" ]; then echo "$CAPSA_BIN"
  elif command -v capsa >/dev/null 2>&1; then command -v capsa
  else echo "$top/target/x86_64-unknown-linux-gnu/release/capsa"
  fi
}

# Writes $2 to file $1 only when it differs (keeps mtimes stable).
write_if_changed() {
  local f=$1 content=$2
  if [ ! -f "$f" ] || [ "$(cat "$f")" != "$content" ]; then
    printf '%s\n' "$content" > "$f.tmp" && mv "$f.tmp" "$f"
  fi
}

write_runtime_logger() {
  local name=$1 real=$2 content
  content=$(sed -e "s|@REAL@|$real|g" -e "s|@RUN@|$run|g" <<'WRAPPER'
#!/bin/bash
# Logs one OCI runtime call, then runs @REAL@ with the same arguments.
# Written by scripts/engines.sh; see docs/engines.md.
log=@RUN@/runtime-calls.log
mkdir -p @RUN@/bundles
# (find writes to a file: a command substitution would add a pipe to our fds)
find /proc/$$/fd -mindepth 1 -printf '%f=%l ' > "@RUN@/.fds.$$" 2>/dev/null
fds=$(sort -n "@RUN@/.fds.$$" | tr ' ' '\n' | sort -n | tr '\n' ' '); rm -f "@RUN@/.fds.$$"
entry=$(
  printf '%s pid=%s caller=%s args=' "$(date +%H:%M:%S.%N)" "$$" "$(cat /proc/$PPID/comm 2>/dev/null)"
  printf '%q ' "$@"
  printf '\n    cwd=%s fds: %s env: %s' "$PWD" "$fds" \
    "$(env | grep -E '^(_OCI|NOTIFY_SOCKET|XDG_RUNTIME_DIR|LISTEN|RUNC|GOMAXPROCS)' | tr '\n' ' ')"
)
printf '%s\n' "$entry" >> "$log"   # one write: concurrent calls do not interleave
# Keep the bundle's config.json (and an exec's process.json) of each call.
prev=
for a in "$@"; do
  case $prev in
    --bundle|-b) [ -f "$a/config.json" ] && cp "$a/config.json" "@RUN@/bundles/config-$$.json" ;;
    --process|-p) [ -f "$a" ] && cp "$a" "@RUN@/bundles/process-$$.json" ;;
  esac
  prev=$a
done
@REAL@ "$@"
rc=$?
printf '%s pid=%s exit=%s\n' "$(date +%H:%M:%S.%N)" "$$" "$rc" >> "$log"
exit $rc
WRAPPER
)
  write_if_changed "$dir/bin/$name" "$content"
  chmod 755 "$dir/bin/$name"
}

setup() {
  mkdir -p "$dir/bin" "$dir/cni" "$dir/containers/storage" "$dir/containerd" "$dir/docker" "$run"
  # podman: containers.conf through CONTAINERS_CONF, storage.conf through
  # CONTAINERS_STORAGE_CONF. Root cannot raise rlimits on these hosts, so
  # podman's default nofile/nproc of 1048576 would fail: lower them. PID 1 is
  # not systemd: cgroupfs, file events, k8s-file logs.
  write_if_changed "$dir/containers.conf" "# Written by capsa's scripts/engines.sh; use with CONTAINERS_CONF=$dir/containers.conf
[containers]
default_ulimits = [\"nofile=20000:20000\", \"nproc=1000:1000\"]
log_driver = \"k8s-file\"

[engine]
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
events_logfile_path = \"$run/podman/events.log\"
tmp_dir = \"$run/podman/libpod\"
volume_path = \"$dir/containers/volumes\"

[network]
network_config_dir = \"$dir/cni\""
  write_if_changed "$dir/storage.conf" "# Written by capsa's scripts/engines.sh; use with CONTAINERS_STORAGE_CONF=$dir/storage.conf
[storage]
driver = \"overlay\"
graphroot = \"$dir/containers/storage\"
runroot = \"$run/containers\""
  # containerd: private root, state and sockets; no CRI (no kubelet here).
  write_if_changed "$dir/containerd.toml" "# Written by capsa's scripts/engines.sh
version = 2
root = \"$dir/containerd\"
state = \"$run/containerd\"
disabled_plugins = [\"io.containerd.grpc.v1.cri\"]

[grpc]
  address = \"$containerd_sock\"

[ttrpc]
  address = \"$containerd_sock.ttrpc\"

[debug]
  address = \"$run/containerd/debug.sock\""
  write_runtime_logger runc-logged "$(command -v runc || echo /usr/sbin/runc)"
  write_daemon_json
}

# dockerd: against our containerd, no bridge or iptables, cgroupfs; the
# "capsa" runtime is $CAPSA_BIN (rewritten at each start; dockerd reloads
# runtimes on SIGHUP).
write_daemon_json() {
  write_if_changed "$dir/daemon.json" "{
  \"data-root\": \"$dir/docker\",
  \"exec-root\": \"$run/docker\",
  \"pidfile\": \"$run/docker.pid\",
  \"hosts\": [\"unix://$docker_sock\"],
  \"containerd\": \"$containerd_sock\",
  \"bridge\": \"none\",
  \"iptables\": false,
  \"ip6tables\": false,
  \"ip-forward\": false,
  \"ip-masq\": false,
  \"exec-opts\": [\"native.cgroupdriver=cgroupfs\"],
  \"storage-driver\": \"overlay2\",
  \"log-driver\": \"json-file\",
  \"runtimes\": {
    \"capsa\": { \"path\": \"$(capsa_bin)\" },
    \"runc-logged\": { \"path\": \"$dir/bin/runc-logged\" }
  }
}"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
containerd_up() { alive "$run/containerd.pid" && ctr --address "$containerd_sock" version >/dev/null 2>&1; }
docker_up() { alive "$run/docker.pid" && docker -H "unix://$docker_sock" version >/dev/null 2>&1; }

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 150); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  log "$what did not come up; its log:"
  tail -n 30 "$run/$what.log" >&2 || true
  return 1
}

# Runs a daemon in its own session, without the fds (other than 0-2) that
# the caller left open: a daemon holding a caller's pipe would keep, e.g.,
# a test harness waiting for EOF forever.
daemon() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then eval "exec $fd>&-"; fi
  done
  exec setsid "$@"
}

start_containerd() {
  if containerd_up; then return 0; fi
  mkdir -p "$run/containerd"
  log "starting containerd ($containerd_sock)"
  daemon containerd --config "$dir/containerd.toml" </dev/null >"$run/containerd.log" 2>&1 &
  echo $! > "$run/containerd.pid"
  wait_for containerd containerd_up
}

start_docker() {
  start_containerd
  if docker_up; then
    kill -HUP "$(cat "$run/docker.pid")"   # pick up a changed runtimes entry
    return 0
  fi
  log "starting dockerd ($docker_sock)"
  daemon dockerd --config-file "$dir/daemon.json" </dev/null >"$run/dockerd.log" 2>&1 &
  echo $! > "$run/dockerd.launcher.pid"
  wait_for dockerd docker_up
}

stop_pid() { # pid-file
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop() {
  if docker_up; then
    local ids
    ids=$(docker -H "unix://$docker_sock" ps -aq)
    [ -z "$ids" ] || docker -H "unix://$docker_sock" rm -f $ids >/dev/null 2>&1 || true
  fi
  stop_pid "$run/docker.pid"
  rm -f "$run/dockerd.launcher.pid"
  if containerd_up; then
    local ns t
    for ns in $(ctr --address "$containerd_sock" namespaces ls -q); do
      for t in $(ctr --address "$containerd_sock" -n "$ns" tasks ls -q); do
        ctr --address "$containerd_sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
        ctr --address "$containerd_sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
      done
      for t in $(ctr --address "$containerd_sock" -n "$ns" containers ls -q); do
        ctr --address "$containerd_sock" -n "$ns" containers delete "$t" >/dev/null 2>&1 || true
      done
    done
  fi
  stop_pid "$run/containerd.pid"
  # Shims outlive containerd by design: end those of our containerd only.
  local p
  for p in $(pgrep -x containerd-shim 2>/dev/null; pgrep -f '^/usr/bin/containerd-shim-runc-v2 ' 2>/dev/null); do
    local cmdline
    cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline") || continue
    if grep -qF -- "-address $containerd_sock" <<<"$cmdline"; then
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

status() {
  local any=1
  if containerd_up; then echo "containerd: running, pid $(cat "$run/containerd.pid"), $containerd_sock"; any=0
  else echo "containerd: stopped"; fi
  if docker_up; then echo "dockerd: running, pid $(cat "$run/docker.pid"), unix://$docker_sock"; any=0
  else echo "dockerd: stopped"; fi
  return $any
}

case "${1:-}" in
  setup) setup ;;
  start)
    setup
    case "${2:-all}" in
      containerd) start_containerd ;;
      docker|dockerd|all) start_docker ;;
      *) log "unknown daemon: $2 (containerd|docker|all)"; exit 2 ;;
    esac ;;
  stop) stop ;;
  status) status ;;
  env)
    cat <<EOF
export CONTAINERS_CONF=$dir/containers.conf
export CONTAINERS_STORAGE_CONF=$dir/storage.conf
export CONTAINERD_ADDRESS=$containerd_sock
export DOCKER_HOST=unix://$docker_sock
EOF
    ;;
  calls) cat "$run/runtime-calls.log" 2>/dev/null || true ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2 ;;
esac
