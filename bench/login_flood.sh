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

BENCH_TAG=login-flood
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS="${BENCH_REQUESTS:-100000}"
WARMUP_REQUESTS="${BENCH_WARMUP_REQUESTS:-5000}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
STORES="${BENCH_STORES:-memory redis}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$REPO_ROOT/bench/results}"
BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/portcullis}"

# --- dependencies and build ------------------------------------------------------------------
need=()
need_cmd need wrk wrk
need_cmd need redis-server redis-server
need_cmd need curl curl
need_cmd need python3 python3
install_packages "${need[@]}"
bash scripts/install-test-deps.sh
hash -r
build_gateway "$BIN"

# --- process bookkeeping (WORK, PIDS, PORTS, stop_pid, free_port, wait_http: bench/lib.sh) ----
BENCH_FAIL_DIR="$RESULTS_DIR/login-flood-failed"

free_port REDIS_PORT
free_port OP_PORT
free_port GW_PORT
GW="http://127.0.0.1:$GW_PORT"

# --- servers -----------------------------------------------------------------------------------
start_redis "$REDIS_PORT"
start_test_op "$OP_PORT" "$GW/oauth2/callback"

GW_PID=""
start_gateway() { # start_gateway memory|redis
  local store=$1 conf="$WORK/portcullis-$1.toml"
  # The upstream is never reached: every request here is a login start.
  gateway_conf "$conf" "$GW_PORT" "$OP_PORT" "$store" "http://127.0.0.1:9" "$REDIS_PORT"
  PORTCULLIS_LOG=warn "$BIN" --config "$conf" >>"$WORK/portcullis-$store.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "$GW/readyz" 200 30 || die "portcullis ($store) not ready; log: $(tail -5 "$WORK/portcullis-$store.log")"
  log "portcullis ($store store) ready, pid $GW_PID"
}

stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  forget_pid "$GW_PID"
  GW_PID=""
}

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
