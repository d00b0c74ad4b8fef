# Shared pieces of the bench scripts: package installs, process bookkeeping, ports, waits, and
# the servers every benchmark starts (redis, the test OP, the development OP, the gateway).
#
#   BENCH_TAG=name; source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# After sourcing: REPO_ROOT (the current directory too), SUDO, WORK (a private temp dir),
# PIDS (stopped in reverse order on exit), PORTS. A script may set BENCH_FAIL_DIR: on a failing
# exit the logs and configs of WORK are copied there.
# Everything binds 127.0.0.1; nothing started here survives the script.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
BENCH_TAG="${BENCH_TAG:-bench}"

log() { printf '[%s %s] %s\n' "$BENCH_TAG" "$(date +%T)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

# install_packages PKG...: apt-get install, with system services kept from starting.
# Debian's nginx, apache2 and redis-server packages start their system service on install
# (nginx and apache on 0.0.0.0:80). Nothing here wants that: service starts are denied while
# installing (policy-rc.d exit 101), unless a policy already exists (container images usually
# have one).
install_packages() {
  [[ $# -gt 0 ]] || return 0
  log "apt-get install $*"
  local policy="" status=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
  fi
  "${SUDO[@]}" apt-get update -qq || status=$?
  if [[ $status -eq 0 ]]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
  fi
  [[ -z $policy ]] || "${SUDO[@]}" rm -f "$policy"
  [[ $status -eq 0 ]] || die "apt-get failed ($status)"
  hash -r
}

# need_cmd VAR COMMAND PACKAGE: appends PACKAGE to the array VAR when COMMAND is missing
# (found neither on PATH nor in /usr/sbin, where Debian puts nginx and apache2).
need_cmd() {
  local -n list=$1
  command -v "$2" >/dev/null 2>&1 || [[ -x /usr/sbin/$2 ]] || list+=("$3")
}

# build_gateway BIN: the release binary, unless BENCH_SKIP_BUILD=1 or BENCH_BIN names another.
build_gateway() {
  local target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_BIN:-} ]]; then
    log "cargo build --release -p portcullis-gateway (target dir $target_dir)"
    CARGO_TARGET_DIR="$target_dir" cargo build --release -p portcullis-gateway
  fi
  [[ -x $1 ]] || die "no binary at $1"
}

# --- process bookkeeping ---------------------------------------------------------------------
WORK="$(mktemp -d "/tmp/portcullis-$BENCH_TAG.XXXXXX")"
PIDS=()
PORTS=()

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# forget_pid PID: stop PID and drop it from PIDS.
forget_pid() {
  local keep=() p
  stop_pid "$1"
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

bench_cleanup() {
  local rc=$? port i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  for port in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "warning: something still listens on 127.0.0.1:$port"
    fi
  done
  if [[ $rc -ne 0 && -n ${BENCH_FAIL_DIR:-} ]]; then
    mkdir -p "$BENCH_FAIL_DIR"
    cp -r "$WORK"/*.log "$WORK"/*.conf "$WORK"/*.toml "$BENCH_FAIL_DIR"/ 2>/dev/null || true
    log "failed (exit $rc); logs copied to $BENCH_FAIL_DIR"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port VAR: a free loopback port, distinct from the ones already handed out in this run.
free_port() {
  local p i
  for ((i = 0; i < 20; i++)); do
    p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    if [[ " ${PORTS[*]} " != *" $p "* ]]; then
      PORTS+=("$p")
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free port"
}

# wait_http URL STATUS SECONDS: until GET URL answers STATUS.
wait_http() {
  local url=$1 want=$2 secs=$3 deadline code
  deadline=$((SECONDS + secs))
  while ((SECONDS < deadline)); do
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  return 1
}

# rss_kb PID: resident memory of PID (VmRSS), in kB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# --- servers ---------------------------------------------------------------------------------
# start_redis PORT [PREFIX...]: a private redis-server (no persistence); sets REDIS_PID.
start_redis() {
  local port=$1 deadline
  shift
  "$@" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --daemonize no \
    --dir "$WORK" --logfile "$WORK/redis-$port.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  deadline=$((SECONDS + 10))
  until redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; do
    ((SECONDS < deadline)) || die "redis did not start"
    sleep 0.1
  done
  log "redis on $port"
}

# start_test_op PORT REDIRECT_URIS [PREFIX...]: the test OP (tests/op, oidc-provider on node),
# client gw / gw-secret, REDIRECT_URIS comma separated; extra settings from the environment
# (e.g. ACCESS_TOKEN_TTL). Sets OP_PID.
start_test_op() {
  local port=$1 uris=$2 deadline
  shift 2
  PORT=$port CLIENT_ID=gw CLIENT_SECRET=gw-secret REDIRECT_URIS="$uris" \
    "$@" node tests/op/provider.mjs >"$WORK/op.out" 2>"$WORK/op.log" &
  OP_PID=$!
  PIDS+=("$OP_PID")
  deadline=$((SECONDS + 30))
  until grep -q "^READY http://127.0.0.1:$port" "$WORK/op.out" 2>/dev/null; do
    ((SECONDS < deadline)) || die "OP did not print READY; stderr: $(tail -5 "$WORK/op.log")"
    sleep 0.1
  done
  log "test OP on $port"
}

# start_dev_op BIN PORT REDIRECT_URI [ARGS...]: the development OP (`portcullis dev-op`, in
# Rust: it signs users in far faster than the node OP), client gw / gw-secret, user demo / demo.
# Sets OP_PID.
start_dev_op() {
  local bin=$1 port=$2 uri=$3 deadline
  shift 3
  "$bin" dev-op --listen "127.0.0.1:$port" --redirect-uri "$uri" "$@" >"$WORK/dev-op.out" 2>"$WORK/dev-op.log" &
  OP_PID=$!
  PIDS+=("$OP_PID")
  deadline=$((SECONDS + 30))
  until grep -q "^DEV OP READY" "$WORK/dev-op.out" 2>/dev/null; do
    ((SECONDS < deadline)) || die "dev OP did not print READY; stderr: $(tail -5 "$WORK/dev-op.log")"
    sleep 0.1
  done
  log "dev OP on $port"
}

# gateway_conf FILE LISTEN_PORT OP_PORT STORE UPSTREAM [REDIS_PORT]: a one-route gateway
# config (every path needs a login), client gw / gw-secret.
gateway_conf() {
  local file=$1 port=$2 op_port=$3 store=$4 upstream=$5 redis_port=${6:-}
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "public_url = \"http://127.0.0.1:$port\""
    echo "[oidc]"
    echo "issuer = \"http://127.0.0.1:$op_port\""
    echo "client_id = \"gw\""
    echo "client_secret = \"gw-secret\""
    echo "[session]"
    echo "store = \"$store\""
    [[ $store == redis ]] && echo "redis_url = \"redis://127.0.0.1:$redis_port\""
    echo "secret = \"gFgAXeFRbSs0IoM9EmKY5LVt1TM0MSrS7CFdQ9qSM6X/R1CSz4b+JAWNYMUR/BvA\""
    echo "[[routes]]"
    echo "prefix = \"/\""
    echo "upstream = \"$upstream\""
    echo "unauthenticated = \"login\""
  } >"$file"
}
