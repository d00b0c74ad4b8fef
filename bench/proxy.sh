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
#   BENCH_NGINX_WORKERS [2]   worker_processes of both nginx instances
#   BENCH_TARGETS [direct nginx memory redis]  which targets to run, in this order
#   BENCH_RESULTS_DIR [bench/results]  where the table is appended (proxy.md) and raw wrk
#                             output of each run is kept (<timestamp>/)
#   BENCH_SKIP_BUILD [0]      1: use the existing release binary
#   BENCH_PERF [0]            1: after the measured runs, one extra memory-store run under
#                             `perf record -g` (report in the run's results folder)
#   CARGO_TARGET_DIR [target] cargo's target dir; the binary is $CARGO_TARGET_DIR/release/portcullis
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
TARGETS="${BENCH_TARGETS:-direct nginx memory redis}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$REPO_ROOT/bench/results}"
SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
PERF="${BENCH_PERF:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="$TARGET_DIR/release/portcullis"

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
if [[ $PERF == 1 ]] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [[ ${#need[@]} -gt 0 ]]; then
  log "apt-get install ${need[*]}"
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  hash -r
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

bash scripts/install-test-deps.sh
hash -r

if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release -p portcullis-gateway (target dir $TARGET_DIR)"
  CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p portcullis-gateway
fi
[[ -x $BIN ]] || die "no binary at $BIN"

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
  local rc=$? pid port
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

# A free loopback port, distinct from the ones already handed out in this run.
free_port() {
  local p i
  for ((i = 0; i < 20; i++)); do
    p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    if [[ " ${PORTS[*]} " != *" $p "* ]]; then
      PORTS+=("$p")
      echo "$p"
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
UP_PORT=$(free_port)
NGX_PORT=$(free_port)
REDIS_PORT=$(free_port)
OP_PORT=$(free_port)
GW_PORT=$(free_port)
GW="http://127.0.0.1:$GW_PORT"

nginx_conf() { # nginx_conf NAME SERVER_BLOCKS
  local name=$1 body=$2 dir="$WORK/nginx-$1"
  mkdir -p "$dir"
  cat >"$WORK/nginx-$name.conf" <<EOF
$([[ $(id -u) -eq 0 ]] && echo "user root;")
worker_processes $NGINX_WORKERS;
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

start_nginx() { # start_nginx NAME PORT
  local name=$1 port=$2
  "$NGINX" -t -q -p "$WORK/nginx-$name" -e "$WORK/nginx-$name.log" -c "$WORK/nginx-$name.conf" \
    || die "nginx $name: bad config"
  "$NGINX" -p "$WORK/nginx-$name" -e "$WORK/nginx-$name.log" -c "$WORK/nginx-$name.conf" -g 'daemon off;' \
    >>"$WORK/nginx-$name.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/" 200 10 || die "nginx $name did not answer on $port"
}

# (a) the trivial upstream
nginx_conf upstream "
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 \"ok\\n\"; }
    }"
start_nginx upstream "$UP_PORT"
log "upstream (nginx return 200) on $UP_PORT"

# (b) nginx proxy_pass with a keep-alive pool to the upstream
nginx_conf proxy "
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
start_nginx proxy "$NGX_PORT"
log "nginx proxy_pass on $NGX_PORT"

# (c) a private redis
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
deadline=$((SECONDS + 10))
until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
  ((SECONDS < deadline)) || die "redis did not start"
  sleep 0.1
done
log "redis on $REDIS_PORT"

# (d) the test OpenID Provider
PORT=$OP_PORT CLIENT_ID=gw CLIENT_SECRET=gw-secret REDIRECT_URIS="$GW/oauth2/callback" ACCESS_TOKEN_TTL=3600 \
  node tests/op/provider.mjs >"$WORK/op.out" 2>"$WORK/op.log" &
PIDS+=($!)
deadline=$((SECONDS + 30))
until grep -q "^READY http://127.0.0.1:$OP_PORT" "$WORK/op.out" 2>/dev/null; do
  ((SECONDS < deadline)) || die "OP did not print READY; stderr: $(tail -5 "$WORK/op.log")"
  sleep 0.1
done
log "OP on $OP_PORT"

# (e) the gateway
GW_PID=""
start_gateway() { # start_gateway memory|redis
  local store=$1 conf="$WORK/portcullis-$1.toml" i
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
    echo "secret = \"bench-secret-bench-secret-bench-secret-0\""
    echo "[[routes]]"
    echo "prefix = \"/\""
    echo "upstream = \"http://127.0.0.1:$UP_PORT\""
    echo "unauthenticated = \"login\""
  } >"$conf"
  PORTCULLIS_LOG=warn "$BIN" --config "$conf" >>"$WORK/portcullis-$store.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "$GW/readyz" 200 30 || die "portcullis ($store) not ready; log: $(tail -5 "$WORK/portcullis-$store.log")"
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

run() { # run NAME URL
  local name=$1 url=$2 out="$RUN_DIR/wrk-$1.txt"
  check "$url"
  if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    wrk "${WRK_ARGS[@]}" -d"$WARMUP" -H "Cookie: portcullis=$COOKIE" "$url" >/dev/null
  fi
  log "wrk $name: ${WRK_ARGS[*]} -d$DURATION $url"
  wrk "${WRK_ARGS[@]}" -d"$DURATION" -H "Cookie: portcullis=$COOKIE" "$url" | tee "$out" >&2
  check "$url" # still 200 after the run: the session did not lapse into login redirects
  RPS[$name]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  P50[$name]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  P99[$name]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  local non2xx sock
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  sock=$(sed -n 's/.*Socket errors: //p' "$out")
  ERRS[$name]="${non2xx:+non-2xx/3xx: $non2xx; }${sock:+socket errors: $sock}"
  [[ -n ${RPS[$name]} ]] || die "could not parse wrk output of $name"
}

# direct and nginx get a cookie of the same shape and size as a real session cookie (they
# ignore it), so that every target parses the same request.
COOKIE="v1.$(printf 'A%.0s' {1..43}).$(printf 'B%.0s' {1..43})"
for target in $TARGETS; do
  case $target in
    direct) run direct "http://127.0.0.1:$UP_PORT/" ;;
    nginx) run nginx "http://127.0.0.1:$NGX_PORT/" ;;
    memory | redis)
      stop_gateway
      start_gateway "$target"
      login "$target"
      run "$target" "$GW/"
      ;;
    *) die "unknown target $target" ;;
  esac
done

# --- 5. results ------------------------------------------------------------------------------
ratio() { # ratio A B
  [[ -n ${2:-} ]] || { echo "-"; return; }
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}
LABELS=([direct]="direct to upstream (nginx return 200)" [nginx]="nginx proxy_pass (keepalive 64)"
  [memory]="portcullis, memory store" [redis]="portcullis, redis store")
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then commit="$commit+dirty"; fi
table=$(
  echo
  echo "### $(date -u '+%Y-%m-%d %H:%M UTC') — commit $commit"
  echo
  echo "wrk ${WRK_ARGS[*]} -d$DURATION (warm-up $WARMUP); $(nproc) cores ($cpu), wrk and all servers on the same machine;"
  echo "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), nginx worker_processes $NGINX_WORKERS; $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
  echo
  echo "| target | requests/s | p50 (ms) | p99 (ms) | vs nginx proxy_pass | vs direct | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
  for target in $TARGETS; do
    echo "| ${LABELS[$target]} | ${RPS[$target]} | ${P50[$target]} | ${P99[$target]} | $(ratio "${RPS[$target]}" "${RPS[nginx]:-}") | $(ratio "${RPS[$target]}" "${RPS[direct]:-}") | ${ERRS[$target]:-none} |"
  done
)
printf '%s\n' "$table"
printf '%s\n' "$table" >>"$RESULTS_DIR/proxy.md"
log "table appended to $RESULTS_DIR/proxy.md; raw wrk output in $RUN_DIR"

# --- optional profile ------------------------------------------------------------------------
if [[ $PERF == 1 ]]; then
  [[ " $TARGETS " == *" memory "* ]] || die "BENCH_PERF=1 needs the memory target"
  stop_gateway
  start_gateway memory
  login memory
  check "$GW/"
  wrk "${WRK_ARGS[@]}" -d"$WARMUP" -H "Cookie: portcullis=$COOKIE" "$GW/" >/dev/null
  wrk "${WRK_ARGS[@]}" -d"$DURATION" -H "Cookie: portcullis=$COOKIE" "$GW/" >"$RUN_DIR/wrk-memory-perf.txt" &
  wrk_pid=$!
  PIDS+=("$wrk_pid")
  secs=${DURATION%s}
  perf record -g -F 999 -p "$GW_PID" -o "$RUN_DIR/perf.data" -- sleep "$((secs > 2 ? secs - 1 : 1))" 2>"$RUN_DIR/perf-record.log" || log "perf record failed: $(tail -3 "$RUN_DIR/perf-record.log")"
  wait "$wrk_pid" || true
  if [[ -s $RUN_DIR/perf.data ]]; then
    perf report -i "$RUN_DIR/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | head -n 80 >"$RUN_DIR/perf-self.txt" || true
    perf report -i "$RUN_DIR/perf.data" --no-children --sort dso --stdio 2>/dev/null | head -n 40 >"$RUN_DIR/perf-dso.txt" || true
    log "perf report in $RUN_DIR/perf-*.txt"
  fi
fi
