#!/usr/bin/env bash
# Login flood: does a burst of unauthenticated `GET /oauth2/start` grow the gateway or Redis?
#
#   bash bench/login_flood.sh
#
# For each store (memory, then redis), in one run:
#   1. start the gateway (release binary) against the test OpenID Provider (tests/op) and, for
#      the redis store, a private redis-server; wait for /readyz;
#   2. warm up with BENCH_WARMUP_REQUESTS starts (allocator arenas, connection buffers), then
#      read the gateway's resident memory (VmRSS from /proc/<pid>/status) and Redis's DBSIZE
#      and used_memory;
#   3. send BENCH_REQUESTS `GET /oauth2/start?rd=/page-N` with wrk (each answered 302 with a
#      sealed login cookie; wrk follows nothing), then read the same figures again.
# The table is printed and appended to bench/results/login_flood.md.
#
# Environment (defaults in brackets):
#   BENCH_REQUESTS [100000]        starts per store (wrk stops after this many responses)
#   BENCH_WARMUP_REQUESTS [5000]   unmeasured starts before the "before" reading
#   BENCH_CONNECTIONS [32]         wrk -c
#   BENCH_STORES [memory redis]    which stores to run
#   BENCH_SKIP_BUILD [0]           1: use the existing release binary
#   BENCH_BIN                      run this portcullis binary instead (e.g. one built from an
#                                  older commit, to compare)
#   BENCH_RESULTS_DIR [bench/results]
#   CARGO_TARGET_DIR [target]      the binary is $CARGO_TARGET_DIR/release/portcullis
#
# Everything binds 127.0.0.1 on free ports; every process started here is stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

REQUESTS="${BENCH_REQUESTS:-100000}"
WARMUP_REQUESTS="${BENCH_WARMUP_REQUESTS:-5000}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
STORES="${BENCH_STORES:-memory redis}"
SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$REPO_ROOT/bench/results}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="${BENCH_BIN:-$TARGET_DIR/release/portcullis}"

log() { printf '[login-flood %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

# --- dependencies and build ------------------------------------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [[ ${#need[@]} -gt 0 ]]; then
  log "apt-get install ${need[*]}"
  policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then # no system service starts while installing
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
  fi
  status=0
  "${SUDO[@]}" apt-get update -qq || status=$?
  if [[ $status -eq 0 ]]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || status=$?
  fi
  [[ -z $policy ]] || "${SUDO[@]}" rm -f "$policy"
  [[ $status -eq 0 ]] || die "apt-get failed ($status)"
  hash -r
fi
bash scripts/install-test-deps.sh
hash -r

if [[ $SKIP_BUILD != 1 && -z ${BENCH_BIN:-} ]]; then
  log "cargo build --release -p portcullis-gateway (target dir $TARGET_DIR)"
  CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p portcullis-gateway
fi
[[ -x $BIN ]] || die "no binary at $BIN"

# --- process bookkeeping ---------------------------------------------------------------------
WORK="$(mktemp -d /tmp/portcullis-login-flood.XXXXXX)"
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

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [[ $rc -ne 0 ]]; then
    mkdir -p "$RESULTS_DIR/login-flood-failed"
    cp "$WORK"/*.log "$WORK"/*.toml "$RESULTS_DIR/login-flood-failed/" 2>/dev/null || true
    log "failed (exit $rc); logs copied to $RESULTS_DIR/login-flood-failed"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { # free_port VAR
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

wait_http() { # wait_http URL STATUS SECONDS
  local url=$1 want=$2 secs=$3 deadline code
  deadline=$((SECONDS + secs))
  while ((SECONDS < deadline)); do
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  return 1
}

free_port REDIS_PORT
free_port OP_PORT
free_port GW_PORT
GW="http://127.0.0.1:$GW_PORT"

# --- servers -----------------------------------------------------------------------------------
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
deadline=$((SECONDS + 10))
until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
  ((SECONDS < deadline)) || die "redis did not start"
  sleep 0.1
done
log "redis on $REDIS_PORT"

PORT=$OP_PORT CLIENT_ID=gw CLIENT_SECRET=gw-secret REDIRECT_URIS="$GW/oauth2/callback" \
  node tests/op/provider.mjs >"$WORK/op.out" 2>"$WORK/op.log" &
PIDS+=($!)
deadline=$((SECONDS + 30))
until grep -q "^READY http://127.0.0.1:$OP_PORT" "$WORK/op.out" 2>/dev/null; do
  ((SECONDS < deadline)) || die "OP did not print READY; stderr: $(tail -5 "$WORK/op.log")"
  sleep 0.1
done
log "OP on $OP_PORT"

GW_PID=""
start_gateway() { # start_gateway memory|redis
  local store=$1 conf="$WORK/portcullis-$1.toml"
  {
    echo "listen = \"127.0.0.1:$GW_PORT\""
    echo "public_url = \"$GW\""
    echo "[oidc]"
    echo "issuer = \"http://127.0.0.1:$OP_PORT\""
    echo "client_id = \"gw\""
    echo "client_secret = \"gw-secret\""
    echo "[session]"
    echo "store = \"$store\""
    [[ $store == redis ]] && echo "redis_url = \"redis://127.0.0.1:$REDIS_PORT\""
    echo "secret = \"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\""
    echo "[[routes]]"
    echo "prefix = \"/\""
    echo "upstream = \"http://127.0.0.1:9\""
    echo "unauthenticated = \"login\""
  } >"$conf"
  PORTCULLIS_LOG=warn "$BIN" --config "$conf" >>"$WORK/portcullis-$store.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "$GW/readyz" 200 30 || die "portcullis ($store) not ready; log: $(tail -5 "$WORK/portcullis-$store.log")"
  log "portcullis ($store store) ready, pid $GW_PID"
}

stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  stop_pid "$GW_PID"
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$GW_PID" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  GW_PID=""
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
dbsize() { redis-cli -p "$REDIS_PORT" DBSIZE; }
redis_used() { redis-cli -p "$REDIS_PORT" INFO memory | awk -F: '/^used_memory:/ { gsub("\r", ""); print $2 }'; }

# wrk stops sending after N responses (one thread: exact up to the requests in flight).
cat >"$WORK/count.lua" <<'EOF'
local n, limit, codes = 0, tonumber(os.getenv("FLOOD_N")), {}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/oauth2/start?rd=/page-" .. counter)
end
response = function(status)
  n = n + 1
  codes[status] = (codes[status] or 0) + 1
  if n >= limit then wrk.thread:stop() end
end
done = function(summary)
  io.write(string.format("responses: %d\n", summary.requests))
end
EOF

# wrk runs for its whole -d even after the script has stopped the thread, so -d is sized from
# the rate of the previous run (RATE, requests/s), with room to spare; a run that still falls
# short is topped up. SENT_TOTAL counts every answer.
RATE=""
wrk_run() { # wrk_run N SECONDS OUT
  FLOOD_N=$1 wrk -t1 -c"$CONNECTIONS" -d"$2"s -s "$WORK/count.lua" "$GW/" >"$3"
  # Every answer must be the 302 to the OP: anything else would not be a login start.
  if grep -q "Non-2xx or 3xx" "$3"; then die "non-3xx answers during the flood: $(cat "$3")"; fi
  RATE=$(awk '/^Requests\/sec:/ { print int($2) }' "$3")
  ANSWERED=$(awk '/^responses:/ { print $2 }' "$3")
}
flood() { # flood N OUT
  local want=$1 out=$2 got=0 secs try=0
  [[ -n $RATE ]] || { wrk_run 1000000000 3 "$out.probe"; got=$((got + ANSWERED)); }
  while ((got < want)); do
    ((try++ < 5)) || die "could not send $want requests"
    secs=$(( (want - got) * 10 / (RATE * 7 + 1) + 2 ))
    ((secs <= 600)) || secs=600
    wrk_run $((want - got)) "$secs" "$out.$try"
    got=$((got + ANSWERED))
  done
  SENT_TOTAL=$got
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "$GW/oauth2/start?rd=/check")
  [[ $code == 302 ]] || die "/oauth2/start answered $code"
}

declare -A RSS0 RSS1 KEYS0 KEYS1 USED0 USED1 SENT SECS
for store in $STORES; do
  stop_gateway
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  start_gateway "$store"
  flood "$WARMUP_REQUESTS" "$WORK/warmup-$store.txt"
  sleep 1
  RSS0[$store]=$(rss_kb "$GW_PID") KEYS0[$store]=$(dbsize) USED0[$store]=$(redis_used)
  log "$store: before: VmRSS ${RSS0[$store]} kB, DBSIZE ${KEYS0[$store]}; sending $REQUESTS starts"
  t0=$SECONDS
  flood "$REQUESTS" "$WORK/flood-$store.txt"
  SECS[$store]=$((SECONDS - t0))
  SENT[$store]=$SENT_TOTAL
  sleep 1
  RSS1[$store]=$(rss_kb "$GW_PID") KEYS1[$store]=$(dbsize) USED1[$store]=$(redis_used)
  log "$store: after ${SENT[$store]} starts in ${SECS[$store]} s: VmRSS ${RSS1[$store]} kB, DBSIZE ${KEYS1[$store]}"
done
stop_gateway

# --- results ------------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then commit="$commit+dirty"; fi
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
table=$(
  echo
  echo "### $(date -u '+%Y-%m-%d %H:%M UTC') — commit $commit — login flood"
  echo
  echo "\`bash bench/login_flood.sh\`: $REQUESTS × \`GET /oauth2/start\` per store (wrk -t1 -c$CONNECTIONS, after $WARMUP_REQUESTS warm-up starts); binary $(basename "$BIN"); $(nproc) cores"
  echo
  echo "| store | starts answered | wall time (s, incl. wrk idle tail) | gateway VmRSS before (MB) | after (MB) | Δ (MB) | Redis DBSIZE before | after | Redis used_memory before → after (bytes) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for store in $STORES; do
    echo "| $store | ${SENT[$store]} | ${SECS[$store]} | $(mb "${RSS0[$store]}") | $(mb "${RSS1[$store]}") | $(mb $((RSS1[$store] - RSS0[$store]))) | ${KEYS0[$store]} | ${KEYS1[$store]} | ${USED0[$store]} → ${USED1[$store]} |"
  done
)
printf '%s\n' "$table"
mkdir -p "$RESULTS_DIR"
printf '%s\n' "$table" >>"$RESULTS_DIR/login_flood.md"
log "table appended to $RESULTS_DIR/login_flood.md"
