#!/usr/bin/env bash
# Proxy hot-path benchmark: an authenticated GET through Portcullis against nginx.
#
#   bash bench/proxy.sh
#
# In one run, with the same wrk settings for every target:
#   1. direct    wrk -> upstream (nginx `return 200 "ok\n"`)
#   2. nginx     wrk -> nginx proxy_pass (upstream keepalive pool) -> upstream
#   3. memory    wrk -> portcullis (session.store = "memory") -> upstream
#   4. redis     wrk -> portcullis (session.store = "redis", private redis-server) -> upstream
# Portcullis requests carry a real session cookie obtained by logging in through the test
# OpenID Provider (tests/op) with curl as a scripted browser. Every target gets the same
# request, cookie header included.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [10s]      wrk -d of each measured run
#   BENCH_CONNECTIONS [64]    wrk -c
#   BENCH_THREADS [1]         wrk -t
#   BENCH_WARMUP [2s]         wrk -d of the unmeasured warm-up before each run (0 = none)
#   BENCH_QUIET_WAIT [120]    before each measured run, wait up to this many seconds for the
#                             machine to be under 10% busy (other processes), then run anyway
#                             with a warning
#   BENCH_RETRIES [2]         a measured run during which other processes used over 5% of the
#                             machine is repeated up to this many times; the least disturbed
#                             run is kept; the table gives the CPU other processes used during it
#   BENCH_NGINX_WORKERS [2]   worker_processes of both nginx instances
#   BENCH_PIN [0]             1: pin the proxy under test (nginx proxy_pass with one worker, or
#                             portcullis, whose Tokio runtime then has one worker thread) to
#                             CPU 1, and wrk, the upstream, redis and the OP to CPU 0: each proxy
#                             gets one core of its own, so requests/s compare per-core efficiency
#   BENCH_TARGETS [direct nginx memory redis]  which targets to run, in this order
#   BENCH_RESULTS_DIR [bench/results]  where the table is appended (proxy.md) and raw wrk
#                             output of each run is kept (<timestamp>/)
#   BENCH_SKIP_BUILD [0]      1: use the existing release binary
#   BENCH_PERF [0]            1: after the measured runs, one extra memory-store run with
#                             `perf record` on the gateway (reports in the run's results folder)
#   BENCH_PERF_CALLGRAPH [dwarf,16384]  perf record --call-graph mode (needs a binary with
#                             debug info for dwarf, see BENCHMARKS.md; `fp` for frame pointers)
#   BENCH_PERF_STAT [0]       1: count syscalls and context switches of the process under test
#                             during each measured run (`perf stat`), reported per request
#   CARGO_TARGET_DIR [target] cargo's target dir; the binary is $CARGO_TARGET_DIR/release/portcullis
#   BENCH_BIN                 run this portcullis binary instead (e.g. one built with debug info)
#   BENCH_BIN_BASELINE        a second portcullis binary (e.g. built from an earlier commit):
#                             adds the targets memory-base and redis-base, run in the same script
#                             run with the same settings, so before/after compare like for like
#   BENCH_CALLGRIND [0]       1: after the wrk runs, count the instructions per request of each
#                             proxy target under `valgrind --tool=callgrind`: collection is
#                             switched on for a fixed wrk run only (BENCH_CALLGRIND_DURATION [5s],
#                             wrk -t1 -c8), so startup and login are not counted. Instruction
#                             counts do not move with the machine's load, unlike wall-clock figures
#                             (BENCH_TARGETS=... selects which; direct is skipped)
#
# Besides requests/s and latency, the table gives the CPU time the process under test spent
# per request during the measured run (utime+stime from /proc, workers included): on a small
# machine where wrk and the servers share the cores, that is the figure that compares
# implementations rather than the scheduler.
#
# Everything binds 127.0.0.1 on free ports; every process started here is stopped on exit.
# Needs root (or sudo) only to install missing packages (wrk, nginx, redis-server, node).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

DURATION="${BENCH_DURATION:-10s}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-1}"
WARMUP="${BENCH_WARMUP:-2s}"
NGINX_WORKERS="${BENCH_NGINX_WORKERS:-2}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-120}"
RETRIES="${BENCH_RETRIES:-2}"
PIN="${BENCH_PIN:-0}"
LOAD_CPU=()  # prefix for wrk, the upstream, redis and the OP
PROXY_CPU=() # prefix for the proxy under test
PROXY_WORKERS=$NGINX_WORKERS
if [[ $PIN == 1 ]]; then
  (($(nproc) >= 2)) || { echo "BENCH_PIN=1 needs 2 CPUs" >&2; exit 1; }
  LOAD_CPU=(taskset -c 0)
  PROXY_CPU=(taskset -c 1)
  PROXY_WORKERS=1
fi
BIN_BASELINE="${BENCH_BIN_BASELINE:-}"
if [[ -n $BIN_BASELINE ]]; then
  TARGETS="${BENCH_TARGETS:-direct nginx memory-base memory redis-base redis}"
else
  TARGETS="${BENCH_TARGETS:-direct nginx memory redis}"
fi
CALLGRIND="${BENCH_CALLGRIND:-0}"
CALLGRIND_DURATION="${BENCH_CALLGRIND_DURATION:-5s}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$REPO_ROOT/bench/results}"
SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
PERF="${BENCH_PERF:-0}"
PERF_STAT="${BENCH_PERF_STAT:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="${BENCH_BIN:-$TARGET_DIR/release/portcullis}"
PERF_CALLGRAPH="${BENCH_PERF_CALLGRAPH:-dwarf,16384}"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

# --- 1. dependencies and build ---------------------------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [[ $PERF == 1 || $PERF_STAT == 1 ]] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [[ $CALLGRIND == 1 ]] && ! command -v callgrind_control >/dev/null 2>&1; then need+=(valgrind); fi
if [[ ${#need[@]} -gt 0 ]]; then
  log "apt-get install ${need[*]}"
  # Debian's nginx and redis-server packages start their system service on install (nginx on
  # 0.0.0.0:80). Nothing here wants that: deny service starts while installing, unless a
  # policy already exists (container images usually have one).
  policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
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
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

bash scripts/install-test-deps.sh
hash -r

if [[ $SKIP_BUILD != 1 && -z ${BENCH_BIN:-} ]]; then
  log "cargo build --release -p portcullis-gateway (target dir $TARGET_DIR)"
  CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p portcullis-gateway
fi
[[ -x $BIN ]] || die "no binary at $BIN"
[[ -z $BIN_BASELINE || -x $BIN_BASELINE ]] || die "no baseline binary at $BIN_BASELINE"

# --- process bookkeeping -----------------------------------------------------------------
WORK="$(mktemp -d /tmp/portcullis-bench.XXXXXX)"
PIDS=()
PORTS=()
STAMP="$(date +%Y%m%d-%H%M%S)"
RUN_DIR="$RESULTS_DIR/$STAMP"
mkdir -p "$RUN_DIR"

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
  local rc=$? port
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  for port in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "warning: something still listens on 127.0.0.1:$port"
    fi
  done
  if [[ $rc -ne 0 ]]; then
    cp -r "$WORK"/*.log "$WORK"/*.conf "$WORK"/*.toml "$RUN_DIR"/ 2>/dev/null || true
    log "failed (exit $rc); logs copied to $RUN_DIR"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
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

# --- 2. servers -------------------------------------------------------------------------------
free_port UP_PORT
free_port NGX_PORT
free_port REDIS_PORT
free_port OP_PORT
free_port GW_PORT
free_port NGX_CG_PORT
GW="http://127.0.0.1:$GW_PORT"

nginx_conf() { # nginx_conf NAME WORKERS SERVER_BLOCKS
  local name=$1 workers=$2 body=$3 dir="$WORK/nginx-$1"
  mkdir -p "$dir"
  cat >"$WORK/nginx-$name.conf" <<EOF
$([[ $(id -u) -eq 0 ]] && echo "user root;")
worker_processes $workers;
pid $dir/nginx.pid;
error_log $WORK/nginx-$name.log crit;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
$body
}
EOF
}

declare -A NGINX_PID
start_nginx() { # start_nginx NAME PORT [CPU PREFIX...]
  local name=$1 port=$2
  shift 2
  "$NGINX" -t -q -p "$WORK/nginx-$name" -e "$WORK/nginx-$name.log" -c "$WORK/nginx-$name.conf" \
    || die "nginx $name: bad config"
  "$@" "$NGINX" -p "$WORK/nginx-$name" -e "$WORK/nginx-$name.log" -c "$WORK/nginx-$name.conf" -g 'daemon off;' \
    >>"$WORK/nginx-$name.log" 2>&1 &
  PIDS+=($!)
  NGINX_PID[$name]=$!
  wait_http "http://127.0.0.1:$port/" 200 10 || die "nginx $name did not answer on $port"
}

# (a) the trivial upstream
nginx_conf upstream "$NGINX_WORKERS" "
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 \"ok\\n\"; }
    }"
start_nginx upstream "$UP_PORT" "${LOAD_CPU[@]}"
log "upstream (nginx return 200) on $UP_PORT"

# (b) nginx proxy_pass with a keep-alive pool to the upstream
nginx_conf proxy "$PROXY_WORKERS" "
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
start_nginx proxy "$NGX_PORT" "${PROXY_CPU[@]}"
log "nginx proxy_pass on $NGX_PORT"

# (c) a private redis
"${LOAD_CPU[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
REDIS_PID=$!
deadline=$((SECONDS + 10))
until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
  ((SECONDS < deadline)) || die "redis did not start"
  sleep 0.1
done
log "redis on $REDIS_PORT"

# (d) the test OpenID Provider
PORT=$OP_PORT CLIENT_ID=gw CLIENT_SECRET=gw-secret REDIRECT_URIS="$GW/oauth2/callback" ACCESS_TOKEN_TTL=3600 \
  "${LOAD_CPU[@]}" node tests/op/provider.mjs >"$WORK/op.out" 2>"$WORK/op.log" &
PIDS+=($!)
deadline=$((SECONDS + 30))
until grep -q "^READY http://127.0.0.1:$OP_PORT" "$WORK/op.out" 2>/dev/null; do
  ((SECONDS < deadline)) || die "OP did not print READY; stderr: $(tail -5 "$WORK/op.log")"
  sleep 0.1
done
log "OP on $OP_PORT"

# (e) the gateway
GW_PID=""
start_gateway() { # start_gateway memory|redis [BINARY [PREFIX...]]: PREFIX wraps the command (valgrind)
  local store=$1 conf="$WORK/portcullis-$1.toml" bin=${2:-$BIN}
  shift $(($# > 1 ? 2 : 1))
  local prefix=("$@")
  [[ ${#prefix[@]} -gt 0 ]] || prefix=("${PROXY_CPU[@]}")
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
    echo "secret = \"gFgAXeFRbSs0IoM9EmKY5LVt1TM0MSrS7CFdQ9qSM6X/R1CSz4b+JAWNYMUR/BvA\""
    echo "[[routes]]"
    echo "prefix = \"/\""
    echo "upstream = \"http://127.0.0.1:$UP_PORT\""
    echo "unauthenticated = \"login\""
  } >"$conf"
  PORTCULLIS_LOG=warn "${prefix[@]}" "$bin" --config "$conf" >>"$WORK/portcullis-$store.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "$GW/readyz" 200 120 || die "portcullis ($store) not ready; log: $(tail -5 "$WORK/portcullis-$store.log")"
  log "portcullis ($store store) ready on $GW_PORT, pid $GW_PID"
}

stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  stop_pid "$GW_PID"
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$GW_PID" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  GW_PID=""
}

# --- 3. login with curl as a browser -------------------------------------------------------------
JAR=""
# get URL: one GET with the jar; sets CODE, NEXT (absolute redirect target) and BODY_FILE.
BODY_FILE="$WORK/body.html"
get() {
  local out
  out=$(curl -sS -m 10 -b "$JAR" -c "$JAR" -H 'Sec-Fetch-Mode: navigate' -o "$BODY_FILE" \
    -w '%{http_code} %{redirect_url}' "$1")
  CODE=${out%% *}
  NEXT=${out#* }
}
# follow: GET NEXT while it redirects (at most 10 hops); CODE/URL are the last answer's.
follow() {
  local hops=0
  while [[ $CODE == 30[1237] ]]; do
    ((hops++ < 10)) || die "login: too many redirects"
    [[ -n $NEXT ]] || die "login: $CODE without Location"
    URL=$NEXT
    get "$URL"
  done
}

COOKIE=""
login() {
  JAR="$WORK/jar-$1"
  rm -f "$JAR"
  URL="$GW/"
  get "$URL"
  [[ $CODE == 302 ]] || die "login: GET / answered $CODE, expected 302"
  follow
  [[ $CODE == 200 && $URL == "http://127.0.0.1:$OP_PORT/interaction/"* ]] \
    || die "login: expected the OP's login page, got $CODE at $URL"
  local action
  action=$(grep -o '<form[^>]*action="[^"]*"' "$BODY_FILE" | head -n1 | sed 's/.*action="\([^"]*\)".*/\1/')
  [[ -n $action ]] || die "login: no form action in the login page"
  local out
  out=$(curl -sS -m 10 -b "$JAR" -c "$JAR" -H 'Sec-Fetch-Mode: navigate' -o "$BODY_FILE" \
    -w '%{http_code} %{redirect_url}' --data 'prompt=login&login=bench&password=x' "$action")
  CODE=${out%% *}
  NEXT=${out#* }
  [[ $CODE == 303 ]] || die "login: POST $action answered $CODE"
  follow
  [[ $CODE == 200 && $URL == "$GW/" ]] || die "login: ended at $URL with $CODE"
  [[ $(cat "$BODY_FILE") == ok ]] || die "login: unexpected body at $URL"
  COOKIE=$(awk -F '\t' '$6 == "portcullis" { v = $7 } END { print v }' "$JAR")
  [[ -n $COOKIE ]] || die "login: no portcullis cookie in the jar"
  log "logged in ($1): cookie portcullis=${COOKIE:0:12}..."
}

# check URL: one request exactly as wrk sends it must get 200 "ok".
check() {
  local out
  out=$(curl -sS -m 5 -H "Cookie: portcullis=$COOKIE" -w ' %{http_code}' "$1") || die "check $1: curl failed"
  [[ $out == $'ok\n 200' ]] || die "check $1: expected 200 ok, got: $out"
}

# --- 4. wrk runs -----------------------------------------------------------------------------------
declare -A RPS P50 P99 ERRS
WRK_ARGS=(-t"$THREADS" -c"$CONNECTIONS" --latency)

# Converts wrk's "1.23ms" / "456.00us" / "1.02s" / "2.00m" into milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# CPU clock ticks (utime + stime) of the given processes and their children (nginx workers).
proc_ticks() {
  local total=0 p c
  for p in "$@"; do
    for c in "$p" $(pgrep -P "$p" || true); do
      [[ -r /proc/$c/stat ]] || continue
      total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$c/stat")))
    done
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
declare -A CPU SYSCALLS CSW PER_CALL OTHERS TRIES
STAT_CALLS=(writev write sendto sendmsg recvfrom read readv epoll_wait futex)
STAT_SYSCALLS=$(printf 'syscalls:sys_enter_%s,' "${STAT_CALLS[@]}")
STAT_SYSCALLS=${STAT_SYSCALLS%,}

# Busy and total clock ticks of the whole machine so far ("busy total").
machine_ticks() {
  awk 'NR == 1 { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}
# Clock ticks used so far by everything this script started: the servers (and their children)
# and, through this shell's reaped children, wrk and curl.
our_ticks() {
  local servers shell
  servers=$(proc_ticks "${PIDS[@]}")
  shell=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' /proc/$$/stat)
  echo $((servers + shell))
}

# Busy % of the whole machine over one second: anything else running skews the figures.
machine_busy() {
  local a b
  read -r -a a </proc/stat
  sleep 1
  read -r -a b </proc/stat
  awk -v u=$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8])) \
    -v i=$((b[4] + b[5] - a[4] - a[5])) 'BEGIN { printf "%.0f", (u + i) ? 100 * u / (u + i) : 0 }'
}

wait_quiet() { # wait_quiet NAME: up to QUIET_WAIT seconds for the machine to be under 10% busy
  local name=$1 deadline=$((SECONDS + QUIET_WAIT)) busy
  busy=$(machine_busy)
  while ((busy > 10 && SECONDS < deadline)); do
    log "the machine is $busy% busy (other processes); waiting for it to quiet down"
    sleep 4
    busy=$(machine_busy)
  done
  if ((busy > 10)); then
    log "warning: the machine is $busy% busy before the $name run; figures will be low"
  fi
}

# measure NAME URL PID EXTRA OUT: one measured wrk run; sets the M_* variables.
measure() {
  local name=$1 url=$2 pid=$3 extra=$4 out=$5
  local t0 e0 t1 e1 m0 m1 o0 o1 stat_pid="" pids
  if [[ $PERF_STAT == 1 ]]; then
    pids=$(pgrep -P "$pid" | tr '\n' , || true)$pid
    perf stat -x, -e "task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,$STAT_SYSCALLS" -p "$pids" \
      -o "$out.perf-stat.csv" &
    stat_pid=$!
    PIDS+=("$stat_pid")
    sleep 0.2
  fi
  t0=$(proc_ticks "$pid")
  e0=$([[ -n $extra ]] && proc_ticks "$extra" || echo 0)
  read -r -a m0 < <(machine_ticks)
  o0=$(our_ticks)
  "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$DURATION" -H "Cookie: portcullis=$COOKIE" "$url" | tee "$out" >&2
  if [[ -n $stat_pid ]]; then
    kill -INT "$stat_pid" 2>/dev/null || true
    wait "$stat_pid" 2>/dev/null || true
  fi
  o1=$(our_ticks)
  read -r -a m1 < <(machine_ticks)
  t1=$(proc_ticks "$pid")
  e1=$([[ -n $extra ]] && proc_ticks "$extra" || echo 0)
  M_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  [[ -n $M_RPS ]] || die "could not parse wrk output of $name"
  M_P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  M_P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  local non2xx sock n
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  sock=$(sed -n 's/.*Socket errors: //p' "$out")
  M_ERRS="${non2xx:+non-2xx/3xx: $non2xx; }${sock:+socket errors: $sock}"
  n=$(awk '/requests in/ { print $1 }' "$out")
  M_CPU=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  if [[ -n $extra ]]; then
    M_CPU+=" (+$(awk -v t=$((e1 - e0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }') redis)"
  fi
  # CPU used during the run by processes this script did not start, in % of the machine.
  M_OTHERS=$(awk -v b=$((m1[0] - m0[0])) -v t=$((m1[1] - m0[1])) -v o=$((o1 - o0)) \
    'BEGIN { x = t ? 100 * (b - o) / t : 0; printf "%.0f", x < 0 ? 0 : x }')
  M_N=$n
}

run() { # run NAME URL PID [EXTRA_PID]: PID is the process under test, EXTRA_PID (redis) is
  # reported beside it. A run disturbed by other processes (over 5% of the machine) is
  # repeated up to RETRIES times; the least disturbed one is kept.
  local name=$1 url=$2 pid=$3 extra=${4:-} out="$RUN_DIR/wrk-$1.txt" try best=""
  check "$url"
  for ((try = 0; try <= RETRIES; try++)); do
    wait_quiet "$name"
    if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
      "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$WARMUP" -H "Cookie: portcullis=$COOKIE" "$url" >/dev/null
    fi
    log "wrk $name (try $((try + 1))): ${WRK_ARGS[*]} -d$DURATION $url"
    measure "$name" "$url" "$pid" "$extra" "$out.try$try"
    check "$url" # still 200 after the run: the session did not lapse into login redirects
    if [[ -z $best ]] || ((M_OTHERS < OTHERS[$name])); then
      best=$try
      RPS[$name]=$M_RPS P50[$name]=$M_P50 P99[$name]=$M_P99 ERRS[$name]=$M_ERRS CPU[$name]=$M_CPU
      OTHERS[$name]=$M_OTHERS
      cp "$out.try$try" "$out"
      if [[ -f $out.try$try.perf-stat.csv ]]; then
        cp "$out.try$try.perf-stat.csv" "$RUN_DIR/perf-stat-$name.csv"
        SYSCALLS[$name]=$(awk -F, -v n="$M_N" '$3 == "raw_syscalls:sys_enter" { printf "%.2f", $1 / n }' "$RUN_DIR/perf-stat-$name.csv")
        CSW[$name]=$(awk -F, -v n="$M_N" '$3 == "context-switches" { printf "%.2f", $1 / n }' "$RUN_DIR/perf-stat-$name.csv")
        local call
        for call in "${STAT_CALLS[@]}"; do
          PER_CALL[$name,$call]=$(awk -F, -v n="$M_N" -v e="syscalls:sys_enter_$call" '$3 == e { printf "%.2f", $1 / n }' "$RUN_DIR/perf-stat-$name.csv")
        done
      fi
    fi
    ((M_OTHERS > 5)) || break
    log "warning: other processes used $M_OTHERS% of the machine during the $name run"
  done
  TRIES[$name]=$((try > RETRIES ? RETRIES + 1 : try + 1))
}

# direct and nginx get a cookie of the same shape and size as a real session cookie (they
# ignore it), so that every target parses the same request.
COOKIE="v1.$(printf 'A%.0s' {1..43}).$(printf 'B%.0s' {1..43})"
for target in $TARGETS; do
  case $target in
    direct) run direct "http://127.0.0.1:$UP_PORT/" "${NGINX_PID[upstream]}" ;;
    nginx) run nginx "http://127.0.0.1:$NGX_PORT/" "${NGINX_PID[proxy]}" ;;
    memory | redis | memory-base | redis-base)
      store=${target%-base}
      bin=$BIN
      [[ $target == *-base ]] && bin=$BIN_BASELINE
      [[ -n $bin ]] || die "target $target needs BENCH_BIN_BASELINE"
      stop_gateway
      start_gateway "$store" "$bin"
      login "$target"
      if [[ $store == redis ]]; then run "$target" "$GW/" "$GW_PID" "$REDIS_PID"; else run "$target" "$GW/" "$GW_PID"; fi
      ;;
    *) die "unknown target $target" ;;
  esac
done

# --- 5. results ------------------------------------------------------------------------------
ratio() { # ratio A B
  [[ -n ${2:-} ]] || { echo "-"; return; }
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}
declare -A LABELS=([direct]="direct to upstream (nginx return 200)" [nginx]="nginx proxy_pass (keepalive 64)"
  [memory]="portcullis, memory store" [redis]="portcullis, redis store"
  [memory-base]="portcullis baseline, memory store" [redis-base]="portcullis baseline, redis store")
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then commit="$commit+dirty"; fi
table=$(
  echo
  echo "### $(date -u '+%Y-%m-%d %H:%M UTC') — commit $commit"
  echo
  echo "wrk ${WRK_ARGS[*]} -d$DURATION (warm-up $WARMUP); $(nproc) cores ($cpu), wrk and all servers on the same machine;"
  echo "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), nginx worker_processes $NGINX_WORKERS (proxy_pass: $PROXY_WORKERS)$([[ $PIN == 1 ]] && echo "; pinned: proxy under test on CPU 1, wrk + upstream + redis + OP on CPU 0"); $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
  echo
  echo "| target | requests/s | p50 (ms) | p99 (ms) | vs nginx proxy_pass | vs direct | CPU µs/req of the process under test | other processes' CPU during the run | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for target in $TARGETS; do
    echo "| ${LABELS[$target]} | ${RPS[$target]} | ${P50[$target]} | ${P99[$target]} | $(ratio "${RPS[$target]}" "${RPS[nginx]:-}") | $(ratio "${RPS[$target]}" "${RPS[direct]:-}") | ${CPU[$target]} | ${OTHERS[$target]}% (${TRIES[$target]} run$([[ ${TRIES[$target]} == 1 ]] || echo s)) | ${ERRS[$target]:-none} |"
  done
  if [[ $PERF_STAT == 1 ]]; then
    echo
    echo "perf stat of the process under test during the measured run (the counting slows every target a little):"
    echo
    echo "| target | context switches/req | syscalls/req | $(printf '%s | ' "${STAT_CALLS[@]}")"
    echo "| --- | ---: | ---: |$(printf ' ---: |%.0s' "${STAT_CALLS[@]}")"
    for target in $TARGETS; do
      row="| ${LABELS[$target]} | ${CSW[$target]:--} | ${SYSCALLS[$target]:--} |"
      for call in "${STAT_CALLS[@]}"; do row+=" ${PER_CALL[$target,$call]:--} |"; done
      echo "$row"
    done
  fi
)
printf '%s\n' "$table"
printf '%s\n' "$table" >>"$RESULTS_DIR/proxy.md"
log "table appended to $RESULTS_DIR/proxy.md; raw wrk output in $RUN_DIR"

# --- optional instruction counts ------------------------------------------------------------------
# callgrind_run NAME URL: wrk against URL while the process under valgrind (CG_PID) collects;
# prints instructions per request. Instrumentation is off from start-up (--instr-atstart=no), on
# for the wrk run only (counters zeroed first), then dumped: startup, discovery and login are not
# counted.
CG_PID=""
callgrind_run() {
  local name=$1 url=$2 out="$RUN_DIR/wrk-$1-callgrind.txt" n ir
  check "$url"
  callgrind_control -i on "$CG_PID" >/dev/null
  callgrind_control -z "$CG_PID" >/dev/null
  "${LOAD_CPU[@]}" wrk -t1 -c8 -d"$CALLGRIND_DURATION" -H "Cookie: portcullis=$COOKIE" "$url" >"$out"
  callgrind_control -i off "$CG_PID" >/dev/null
  callgrind_control -d "$CG_PID" >/dev/null
  sleep 1
  n=$(awk '/requests in/ { print $1 }' "$out")
  # `totals:`, not `summary:`: after `callgrind_control -z` valgrind 3.19 writes an underflowed
  # summary (2^64 minus a little); the totals line is the sum of the events since the zeroing.
  ir=$(cat "$WORK"/callgrind.out."$CG_PID"* 2>/dev/null | awk '/^totals:/ { t += $2 } END { print t + 0 }')
  # Kept for `callgrind_annotate --inclusive=yes` (where the instructions go, per function).
  cat "$WORK"/callgrind.out."$CG_PID".* >"$RUN_DIR/callgrind-$name.out" 2>/dev/null || true
  rm -f "$WORK"/callgrind.out."$CG_PID"*
  [[ -n $n && $n -gt 0 && -n $ir ]] || die "callgrind $name: no count (requests: ${n:-?})"
  IR[$name]=$(awk -v i="$ir" -v n="$n" 'BEGIN { printf "%.0f", i / n }')
  IRN[$name]=$n
  log "callgrind $name: ${IR[$name]} instructions/request over $n requests"
}
declare -A IR IRN
if [[ $CALLGRIND == 1 ]]; then
  VG=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out.%p")
  for target in $TARGETS; do
    case $target in
      nginx)
        # One nginx process (no master, no workers) so that callgrind sees all of its work.
        nginx_conf proxy-cg 1 "
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGX_CG_PORT;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
        sed -i 's/^worker_processes 1;/worker_processes 1;\nmaster_process off;/' "$WORK/nginx-proxy-cg.conf"
        "${VG[@]}" "$NGINX" -p "$WORK/nginx-proxy-cg" -e "$WORK/nginx-proxy-cg.log" -c "$WORK/nginx-proxy-cg.conf" \
          -g 'daemon off;' >>"$WORK/nginx-proxy-cg.log" 2>&1 &
        CG_PID=$!
        PIDS+=("$CG_PID")
        wait_http "http://127.0.0.1:$NGX_CG_PORT/" 200 60 || die "nginx under callgrind did not answer"
        COOKIE="v1.$(printf 'A%.0s' {1..43}).$(printf 'B%.0s' {1..43})"
        callgrind_run nginx "http://127.0.0.1:$NGX_CG_PORT/"
        stop_pid "$CG_PID"
        ;;
      memory | redis | memory-base | redis-base)
        store=${target%-base}
        bin=$BIN
        [[ $target == *-base ]] && bin=$BIN_BASELINE
        stop_gateway
        start_gateway "$store" "$bin" "${VG[@]}"
        CG_PID=$GW_PID
        login "$target-cg"
        callgrind_run "$target" "$GW/"
        stop_gateway
        ;;
    esac
  done
  table=$(
    echo
    echo "Instructions per request (valgrind --tool=callgrind, collection on for one wrk -t1 -c8 -d$CALLGRIND_DURATION run only; commit $commit):"
    echo
    echo "| target | instructions/request | vs nginx proxy_pass | requests counted |"
    echo "| --- | ---: | ---: | ---: |"
    for target in $TARGETS; do
      [[ -n ${IR[$target]:-} ]] || continue
      echo "| ${LABELS[$target]} | ${IR[$target]} | $(ratio "${IR[$target]}" "${IR[nginx]:-}") | ${IRN[$target]} |"
    done
  )
  printf '%s\n' "$table"
  printf '%s\n' "$table" >>"$RESULTS_DIR/proxy.md"
fi

# --- optional profile ------------------------------------------------------------------------
dur_secs() { # 10s, 2m, 30 -> seconds
  case $1 in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

profile() { # profile NAME URL PID: one more wrk run, with `perf record` on PID (and its children)
  local name=$1 url=$2 pid=$3 secs pids wrk_pid data="$RUN_DIR/perf-$1.data" t0 t1 n us
  check "$url"
  wait_quiet "$name profile"
  "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$WARMUP" -H "Cookie: portcullis=$COOKIE" "$url" >/dev/null
  "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$DURATION" -H "Cookie: portcullis=$COOKIE" "$url" >"$RUN_DIR/wrk-$name-perf.txt" &
  wrk_pid=$!
  PIDS+=("$wrk_pid")
  secs=$(dur_secs "$DURATION")
  pids=$(pgrep -P "$pid" | tr '\n' , || true)$pid
  sleep 0.5
  t0=$(proc_ticks "$pid")
  if ! perf record -e cpu-clock -F 999 --call-graph "$PERF_CALLGRAPH" -p "$pids" -o "$data" \
    -- sleep "$((secs > 2 ? secs - 1 : 1))" 2>"$RUN_DIR/perf-$name-record.log"; then
    log "perf record failed: $(tail -3 "$RUN_DIR/perf-$name-record.log")"
  fi
  t1=$(proc_ticks "$pid")
  wait "$wrk_pid" || true
  [[ -s $data ]] || return 0
  # CPU µs per request while perf recorded (perf's own overhead included).
  n=$(awk '/^Requests\/sec:/ { print $2 }' "$RUN_DIR/wrk-$name-perf.txt")
  us=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v r="$n" -v s=$((secs > 2 ? secs - 1 : 1)) \
    'BEGIN { printf "%.1f", r ? t / hz * 1e6 / (r * s) : 0 }')
  perf report -i "$data" --no-children --sort dso,symbol -g none --percent-limit 0.3 --stdio 2>/dev/null \
    | sed 's/  */ /g' >"$RUN_DIR/perf-$name-self.txt" || true
  perf script -i "$data" -F comm,tid,ip,sym,dso 2>/dev/null \
    | python3 "$REPO_ROOT/bench/perf_buckets.py" --us-per-req "$us" >"$RUN_DIR/perf-$name-buckets.txt" || true
  log "perf $name: $(grep -m1 'Requests/sec' "$RUN_DIR/wrk-$name-perf.txt"); reports in $RUN_DIR/perf-$name-*.txt"
}

if [[ $PERF == 1 ]]; then
  [[ " $TARGETS " == *" memory "* ]] || die "BENCH_PERF=1 needs the memory target"
  COOKIE="v1.$(printf 'A%.0s' {1..43}).$(printf 'B%.0s' {1..43})"
  [[ " $TARGETS " == *" nginx "* ]] && profile nginx "http://127.0.0.1:$NGX_PORT/" "${NGINX_PID[proxy]}"
  stop_gateway
  start_gateway memory
  login memory
  profile memory "$GW/" "$GW_PID"
fi
