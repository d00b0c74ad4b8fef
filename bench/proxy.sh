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
#   5. apache    wrk -> Apache httpd + mod_auth_openidc (Debian packages; session in the same
#                redis, OIDCCacheType redis; mod_proxy_http) -> upstream
# Portcullis and Apache requests carry a real session cookie obtained by logging in through the
# test OpenID Provider (tests/op) with curl as a scripted browser. Every target gets the same
# request, cookie header included (a session cookie of the same size for direct and nginx).
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
#   BENCH_TARGETS [direct nginx memory redis apache]  which targets to run, in this order
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
#   BENCH_LATENCY [0]         1: after the wrk runs, latency at a fixed rate with h2load --rps
#                             (Debian's nghttp2-client): BENCH_LATENCY_RATE [half the wrk
#                             requests/s of the slower Portcullis store in this run] for each of
#                             BENCH_LATENCY_TARGETS [direct nginx memory redis] (apache too, if
#                             named; it saturates below that rate), BENCH_LATENCY_CLIENTS [16]
#                             connections, BENCH_LATENCY_DURATION [20s] after
#                             BENCH_LATENCY_WARMUP [2s]; p50/p99/p99.9/max from h2load's
#                             per-request log, and p99 added against direct
#
# Besides requests/s and latency, the table gives the CPU time the process under test spent
# per request during the measured run (utime+stime from /proc, workers included): on a small
# machine where wrk and the servers share the cores, that is the figure that compares
# implementations rather than the scheduler.
# For the targets that keep sessions in Redis, a second table gives the Redis commands each
# request caused (INFO commandstats, reset before the measured run).
#
# Everything binds 127.0.0.1 on free ports; every process started here is stopped on exit.
# Needs root (or sudo) only to install missing packages (wrk, nginx, redis-server, node, apache2,
# libapache2-mod-auth-openidc); no system service is started by the installs (bench/lib.sh).
set -euo pipefail

BENCH_TAG=bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
  TARGETS="${BENCH_TARGETS:-direct nginx memory-base memory redis-base redis apache}"
else
  TARGETS="${BENCH_TARGETS:-direct nginx memory redis apache}"
fi
CALLGRIND="${BENCH_CALLGRIND:-0}"
CALLGRIND_DURATION="${BENCH_CALLGRIND_DURATION:-5s}"
LATENCY="${BENCH_LATENCY:-0}"
LATENCY_TARGETS="${BENCH_LATENCY_TARGETS:-direct nginx memory redis}"
LATENCY_CLIENTS="${BENCH_LATENCY_CLIENTS:-16}"
LATENCY_DURATION="${BENCH_LATENCY_DURATION:-20s}"
LATENCY_WARMUP="${BENCH_LATENCY_WARMUP:-2s}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$REPO_ROOT/bench/results}"
PERF="${BENCH_PERF:-0}"
PERF_STAT="${BENCH_PERF_STAT:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="${BENCH_BIN:-$TARGET_DIR/release/portcullis}"
PERF_CALLGRAPH="${BENCH_PERF_CALLGRAPH:-dwarf,16384}"

# --- 1. dependencies and build ---------------------------------------------------------
need=()
need_cmd need wrk wrk
need_cmd need nginx nginx
need_cmd need redis-server redis-server
need_cmd need curl curl
need_cmd need python3 python3
need_cmd need pgrep procps
need_cmd need taskset util-linux
if [[ " $TARGETS " == *" apache "* ]]; then
  need_cmd need apache2 apache2
  [[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ]] || need+=(libapache2-mod-auth-openidc)
fi
if [[ $PERF == 1 || $PERF_STAT == 1 ]] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [[ $CALLGRIND == 1 ]] && ! command -v callgrind_control >/dev/null 2>&1; then need+=(valgrind); fi
install_packages "${need[@]}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

bash scripts/install-test-deps.sh
hash -r

build_gateway "$BIN"
[[ -z $BIN_BASELINE || -x $BIN_BASELINE ]] || die "no baseline binary at $BIN_BASELINE"

# --- process bookkeeping (WORK, PIDS, PORTS, stop_pid, free_port, wait_http: bench/lib.sh) ---
STAMP="$(date +%Y%m%d-%H%M%S)"
RUN_DIR="$RESULTS_DIR/$STAMP"
mkdir -p "$RUN_DIR"
BENCH_FAIL_DIR=$RUN_DIR

# --- 2. servers -------------------------------------------------------------------------------
free_port UP_PORT
free_port NGX_PORT
free_port REDIS_PORT
free_port OP_PORT
free_port GW_PORT
free_port NGX_CG_PORT
free_port APACHE_PORT
GW="http://127.0.0.1:$GW_PORT"
APACHE="http://127.0.0.1:$APACHE_PORT"

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
start_redis "$REDIS_PORT" "${LOAD_CPU[@]}"

# (d) the test OpenID Provider (one client, registered for the gateway and for Apache)
start_test_op "$OP_PORT" "$GW/oauth2/callback,$APACHE/oauth2/callback" \
  env ACCESS_TOKEN_TTL=3600 "${LOAD_CPU[@]}"

# (e) the gateway
GW_PID=""
start_gateway() { # start_gateway memory|redis [BINARY [PREFIX...]]: PREFIX wraps the command (valgrind)
  local store=$1 conf="$WORK/portcullis-$1.toml" bin=${2:-$BIN}
  shift $(($# > 1 ? 2 : 1))
  local prefix=("$@")
  [[ ${#prefix[@]} -gt 0 ]] || prefix=("${PROXY_CPU[@]}")
  gateway_conf "$conf" "$GW_PORT" "$OP_PORT" "$store" "http://127.0.0.1:$UP_PORT" "$REDIS_PORT"
  PORTCULLIS_LOG=warn "${prefix[@]}" "$bin" --config "$conf" >>"$WORK/portcullis-$store.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "$GW/readyz" 200 120 || die "portcullis ($store) not ready; log: $(tail -5 "$WORK/portcullis-$store.log")"
  log "portcullis ($store store) ready on $GW_PORT, pid $GW_PID"
}

stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  forget_pid "$GW_PID"
  GW_PID=""
}

# (f) Apache httpd + mod_auth_openidc (Debian packages), the relying party users compare with:
# session in the same redis (OIDCCacheType redis, server-side session, cache entries encrypted
# as by default for redis), the same OP and client, reverse proxy to the same upstream with
# mod_proxy_http (backend connections reused). What reaches the upstream is kept close to what
# Portcullis sends: the access token as `Authorization: Bearer`, the user in a header, no
# per-claim headers (OIDCPassClaimsAs environment). event MPM with a thread for every
# connection wrk opens, in as many processes as nginx has workers (one with BENCH_PIN=1).
APACHE_PID=""
apache_conf() { # apache_conf NAME PORT PROCESSES [USER]: USER: the whole server runs as USER
  local name=$1 port=$2 procs=$3 as=${4:-} dir="$WORK/apache-$1" threads=$((CONNECTIONS + 8))
  mkdir -p "$dir"
  [[ -z $as ]] || chown "$as" "$dir"
  cat >"$WORK/apache-$name.conf" <<EOF
ServerRoot /usr/lib/apache2
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile $dir/httpd.pid
DefaultRuntimeDir $dir
Mutex file:$dir default
ErrorLog $dir/error.log
LogLevel warn
$([[ -z $as && $(id -u) -eq 0 ]] && printf 'User www-data\nGroup www-data')
LoadModule mpm_event_module modules/mod_mpm_event.so
LoadModule authn_core_module modules/mod_authn_core.so
LoadModule authz_core_module modules/mod_authz_core.so
LoadModule authz_user_module modules/mod_authz_user.so
LoadModule headers_module modules/mod_headers.so
LoadModule proxy_module modules/mod_proxy.so
LoadModule proxy_http_module modules/mod_proxy_http.so
LoadModule auth_openidc_module modules/mod_auth_openidc.so
StartServers $procs
ServerLimit $procs
ThreadsPerChild $threads
ThreadLimit $threads
MaxRequestWorkers $((procs * threads))
MinSpareThreads 1
MaxSpareThreads $((procs * threads))
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 65

OIDCProviderMetadataURL http://127.0.0.1:$OP_PORT/.well-known/openid-configuration
OIDCClientID gw
OIDCClientSecret gw-secret
OIDCRedirectURI http://127.0.0.1:$port/oauth2/callback
OIDCCryptoPassphrase gFgAXeFRbSs0IoM9EmKY5LVt1TM0MSrS7CFdQ9qSM6X
OIDCScope "openid"
OIDCPKCEMethod S256
OIDCSessionType server-cache
OIDCCacheType redis
OIDCRedisCacheServer 127.0.0.1:$REDIS_PORT
OIDCSessionInactivityTimeout 3600
OIDCPassClaimsAs environment
OIDCAuthNHeader X-Forwarded-User
ProxyPass / http://127.0.0.1:$UP_PORT/
<Location />
    AuthType openid-connect
    Require valid-user
    RequestHeader set Authorization "Bearer %{OIDC_access_token}e"
</Location>
EOF
}

# start_apache [valgrind ARGS...]: under valgrind, one process (-X) that runs as www-data from
# the start (setpriv execs, so APACHE_PID is valgrind's): a root Apache switches to its User
# after valgrind started as root, and callgrind_control can then no longer reach it. CG_AS is
# the prefix callgrind_control needs to reach it.
CG_AS=()
start_apache() {
  local prefix=("${PROXY_CPU[@]}") args=() as="" name=bench
  if [[ ${1:-} == valgrind ]]; then
    args=(-X)
    name=cg
    if [[ $(id -u) -eq 0 ]]; then
      as=www-data
      CG_AS=(setpriv --reuid=www-data --regid=www-data --init-groups)
      prefix=("${CG_AS[@]}")
    fi
    prefix+=("$@")
  fi
  apache_conf "$name" "$APACHE_PORT" "$PROXY_WORKERS" "$as"
  APACHE_LOG="$WORK/apache-$name/error.log"
  /usr/sbin/apache2 -t -f "$WORK/apache-$name.conf" >>"$WORK/apache-$name.out" 2>&1 \
    || die "apache: bad config: $(tail -3 "$WORK/apache-$name.out")"
  "${prefix[@]}" /usr/sbin/apache2 -f "$WORK/apache-$name.conf" -DFOREGROUND "${args[@]}" \
    >>"$WORK/apache-$name.out" 2>&1 &
  APACHE_PID=$!
  PIDS+=("$APACHE_PID")
  # Unauthenticated, the module answers a navigation with a redirect to the OP.
  wait_http "$APACHE/" 302 120 || die "apache did not answer on $APACHE_PORT; log: $(tail -5 "$APACHE_LOG" "$WORK/apache-$name.out")"
  log "apache + mod_auth_openidc on $APACHE_PORT, pid $APACHE_PID"
}

stop_apache() {
  [[ -n $APACHE_PID ]] || return 0
  forget_pid "$APACHE_PID"
  APACHE_PID=""
  cp "$APACHE_LOG" "$RUN_DIR/apache-$(basename "$(dirname "$APACHE_LOG")").log" 2>/dev/null || true
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
COOKIE_NAME=portcullis
# login NAME [BASE [COOKIE]]: a browser login at BASE (the gateway by default) through the OP's
# form; sets COOKIE to the value of the session cookie named COOKIE (portcullis by default).
login() {
  local base=${2:-$GW} name=${3:-portcullis}
  JAR="$WORK/jar-$1"
  rm -f "$JAR"
  URL="$base/"
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
  [[ $CODE == 200 && $URL == "$base/" ]] || die "login: ended at $URL with $CODE"
  [[ $(cat "$BODY_FILE") == ok ]] || die "login: unexpected body at $URL"
  COOKIE=$(awk -F '\t' -v n="$name" '$6 == n { v = $7 } END { print v }' "$JAR")
  COOKIE_NAME=$name
  [[ -n $COOKIE ]] || die "login: no $name cookie in the jar"
  log "logged in ($1): cookie $name=${COOKIE:0:12}..."
}

# check URL: one request exactly as wrk sends it must get 200 "ok".
check() {
  local out
  out=$(curl -sS -m 5 -H "Cookie: $COOKIE_NAME=$COOKIE" -w ' %{http_code}' "$1") || die "check $1: curl failed"
  [[ $out == $'ok\n 200' ]] || die "check $1: expected 200 ok, got: $out"
}

# --- 4. wrk runs -----------------------------------------------------------------------------------
declare -A RPS P50 P99 ERRS REDIS_CMDS
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
  [[ -z $extra ]] || redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
  t0=$(proc_ticks "$pid")
  e0=$([[ -n $extra ]] && proc_ticks "$extra" || echo 0)
  read -r -a m0 < <(machine_ticks)
  o0=$(our_ticks)
  "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$DURATION" -H "Cookie: $COOKIE_NAME=$COOKIE" "$url" | tee "$out" >&2
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
  # What the store was asked per request (INFO's own call and the reset left out).
  M_REDIS=""
  if [[ -n $extra ]]; then
    M_REDIS=$(redis-cli -p "$REDIS_PORT" INFO commandstats | awk -F'[:,=]' -v n="$n" '
      /^cmdstat_/ { c = $1; sub("cmdstat_", "", c); if (c ~ /^(info|config)/) next
        printf "%s%s %.2f", sep, toupper(c), $3 / n; sep = ", " }')
  fi
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
      "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$WARMUP" -H "Cookie: $COOKIE_NAME=$COOKIE" "$url" >/dev/null
    fi
    log "wrk $name (try $((try + 1))): ${WRK_ARGS[*]} -d$DURATION $url"
    measure "$name" "$url" "$pid" "$extra" "$out.try$try"
    check "$url" # still 200 after the run: the session did not lapse into login redirects
    if [[ -z $best ]] || ((M_OTHERS < OTHERS[$name])); then
      best=$try
      RPS[$name]=$M_RPS P50[$name]=$M_P50 P99[$name]=$M_P99 ERRS[$name]=$M_ERRS CPU[$name]=$M_CPU
      REDIS_CMDS[$name]=$M_REDIS
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
fake_cookie() {
  COOKIE="v1.$(printf 'A%.0s' {1..43}).$(printf 'B%.0s' {1..43})"
  COOKIE_NAME=portcullis
}
fake_cookie
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
    apache)
      stop_gateway
      start_apache
      login apache "$APACHE" mod_auth_openidc_session
      run apache "$APACHE/" "$APACHE_PID" "$REDIS_PID"
      stop_apache
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
  [memory-base]="portcullis baseline, memory store" [redis-base]="portcullis baseline, redis store"
  [apache]="apache + mod_auth_openidc, redis session")
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then commit="$commit+dirty"; fi
table=$(
  echo
  echo "### $(date -u '+%Y-%m-%d %H:%M UTC') — commit $commit"
  echo
  echo "wrk ${WRK_ARGS[*]} -d$DURATION (warm-up $WARMUP); $(nproc) cores ($cpu), wrk and all servers on the same machine;"
  echo "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), nginx worker_processes $NGINX_WORKERS (proxy_pass: $PROXY_WORKERS)$([[ $PIN == 1 ]] && echo "; pinned: proxy under test on CPU 1, wrk + upstream + redis + OP on CPU 0"); $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
  if [[ " $TARGETS " == *" apache "* ]]; then
    echo "$(/usr/sbin/apache2 -v | sed -n 's/^Server version: //p') + mod_auth_openidc $(dpkg-query -W -f '${Version}' libapache2-mod-auth-openidc 2>/dev/null), event MPM, $PROXY_WORKERS process(es) × $((CONNECTIONS + 8)) threads;"
  fi
  echo
  echo "| target | requests/s | p50 (ms) | p99 (ms) | vs nginx proxy_pass | vs direct | CPU µs/req of the process under test | other processes' CPU during the run | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for target in $TARGETS; do
    echo "| ${LABELS[$target]} | ${RPS[$target]} | ${P50[$target]} | ${P99[$target]} | $(ratio "${RPS[$target]}" "${RPS[nginx]:-}") | $(ratio "${RPS[$target]}" "${RPS[direct]:-}") | ${CPU[$target]} | ${OTHERS[$target]}% (${TRIES[$target]} run$([[ ${TRIES[$target]} == 1 ]] || echo s)) | ${ERRS[$target]:-none} |"
  done
  if [[ -n $(printf '%s' "${REDIS_CMDS[@]}") ]]; then
    echo
    echo "Redis commands per request during the measured run (INFO commandstats):"
    echo
    echo "| target | commands per request |"
    echo "| --- | --- |"
    for target in $TARGETS; do
      if [[ -n ${REDIS_CMDS[$target]:-} ]]; then echo "| ${LABELS[$target]} | ${REDIS_CMDS[$target]} |"; fi
    done
  fi
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
  "${CG_AS[@]}" callgrind_control -i on "$CG_PID" >/dev/null
  # Switching instrumentation on makes valgrind translate the code again: one request first,
  # so the slow first pass (seconds for Apache's modules) does not eat the counted run.
  check "$url"
  "${CG_AS[@]}" callgrind_control -z "$CG_PID" >/dev/null
  "${LOAD_CPU[@]}" wrk -t1 -c8 -d"$CALLGRIND_DURATION" -H "Cookie: $COOKIE_NAME=$COOKIE" "$url" >"$out"
  "${CG_AS[@]}" callgrind_control -i off "$CG_PID" >/dev/null
  "${CG_AS[@]}" callgrind_control -d "$CG_PID" >/dev/null
  sleep 1
  n=$(awk '/requests in/ { print $1 }' "$out")
  # `totals:`, not `summary:`: after `callgrind_control -z` valgrind 3.19 writes an underflowed
  # summary (2^64 minus a little); the totals line is the sum of the events since the zeroing.
  ir=$(cat "$CG_DIR"/callgrind.out."$CG_PID"* 2>/dev/null | awk '/^totals:/ { t += $2 } END { print t + 0 }')
  # Kept for `callgrind_annotate --inclusive=yes` (where the instructions go, per function).
  cat "$CG_DIR"/callgrind.out."$CG_PID".* >"$RUN_DIR/callgrind-$name.out" 2>/dev/null || true
  rm -f "$CG_DIR"/callgrind.out."$CG_PID"*
  [[ -n $n && $n -gt 0 && -n $ir ]] || die "callgrind $name: no count (requests: ${n:-?})"
  IR[$name]=$(awk -v i="$ir" -v n="$n" 'BEGIN { printf "%.0f", i / n }')
  IRN[$name]=$n
  log "callgrind $name: ${IR[$name]} instructions/request over $n requests"
}
declare -A IR IRN
if [[ $CALLGRIND == 1 ]]; then
  # Apache's process drops root for www-data before valgrind writes its dump: the dump
  # directory is open to it (and WORK traversable).
  CG_DIR="$WORK/callgrind"
  mkdir -p "$CG_DIR"
  chmod 1777 "$CG_DIR"
  chmod 711 "$WORK"
  VG=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CG_DIR/callgrind.out.%p")
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
        fake_cookie
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
      apache)
        stop_gateway
        start_apache "${VG[@]}"
        CG_PID=$APACHE_PID
        login apache-cg "$APACHE" mod_auth_openidc_session
        callgrind_run apache "$APACHE/"
        stop_apache
        CG_AS=()
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

dur_secs() { # 10s, 2m, 30 -> seconds
  case $1 in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

# --- optional fixed-rate latency ------------------------------------------------------------------
# wrk measures at saturation, where p99 is mostly queueing. What a user adds to a service is the
# latency at a load it carries comfortably: every target gets the same fixed rate (by default
# half of the memory store's requests/s measured above), sent by h2load --rps (nghttp2-client,
# HTTP/1.1, BENCH_LATENCY_CLIENTS connections, each paced at rate/clients), and the latency of
# every request comes from h2load's per-request log. h2load times a request from when it was
# sent, not from when the pacing scheduled it (no coordinated-omission correction), which is why
# the rate stays well below every target's saturation point.
latency_run() { # latency_run NAME URL RATE: sets LAT[NAME] (a table row without the label)
  local name=$1 url=$2 rate=$3 clients=$LATENCY_CLIENTS out="$RUN_DIR/h2load-$1" per
  per=$(((rate + clients - 1) / clients))
  check "$url"
  wait_quiet "$name fixed-rate"
  log "h2load $name: $clients clients × $per requests/s for $LATENCY_DURATION (after ${LATENCY_WARMUP} warm-up)"
  "${LOAD_CPU[@]}" h2load --h1 -t1 -c"$clients" --rps="$per" -D"$LATENCY_DURATION" --warm-up-time="$LATENCY_WARMUP" \
    -H "Cookie: $COOKIE_NAME=$COOKIE" --log-file="$out.log" "$url" >"$out.txt" 2>&1 \
    || die "h2load $name failed: $(tail -3 "$out.txt")"
  check "$url"
  LAT[$name]=$(python3 bench/latency_stats.py "$out.log" "$(dur_secs "$LATENCY_DURATION")" "$rate") \
    || die "h2load $name: no latencies"
  P99_AT_RATE[$name]=$(awk -F' [|] ' '{ print $4 }' <<<"${LAT[$name]}")
  log "h2load $name: ${LAT[$name]}"
}

declare -A LAT P99_AT_RATE
if [[ $LATENCY == 1 ]]; then
  command -v h2load >/dev/null 2>&1 || install_packages nghttp2-client
  rate=${BENCH_LATENCY_RATE:-}
  if [[ -z $rate ]]; then
    # Half the peak of the slower Portcullis store: a rate both carry without queueing.
    [[ -n ${RPS[memory]:-}${RPS[redis]:-} ]] || die "BENCH_LATENCY=1 without BENCH_LATENCY_RATE needs a memory or redis wrk run"
    rate=$(awk -v m="${RPS[memory]:-0}" -v r="${RPS[redis]:-0}" 'BEGIN { x = m; if (r > 0 && (x == 0 || r < x)) x = r; printf "%d", x / 2 }')
  fi
  for target in $LATENCY_TARGETS; do
    case $target in
      direct)
        fake_cookie
        latency_run direct "http://127.0.0.1:$UP_PORT/" "$rate"
        ;;
      nginx)
        fake_cookie
        latency_run nginx "http://127.0.0.1:$NGX_PORT/" "$rate"
        ;;
      memory | redis)
        stop_gateway
        start_gateway "$target"
        login "$target-lat"
        latency_run "$target" "$GW/" "$rate"
        ;;
      apache)
        stop_gateway
        start_apache
        login apache-lat "$APACHE" mod_auth_openidc_session
        latency_run apache "$APACHE/" "$rate"
        stop_apache
        ;;
      *) die "unknown latency target $target" ;;
    esac
  done
  stop_gateway
  table=$(
    echo
    echo "Latency at a fixed rate (h2load --h1 -c$LATENCY_CLIENTS --rps, $LATENCY_DURATION after $LATENCY_WARMUP warm-up; rate: ${BENCH_LATENCY_RATE:-half the slower Portcullis store wrk requests/s above}):"
    echo
    echo "| target | rate asked (req/s) | rate served | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | non-200 | p99 added vs direct (ms) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for target in $LATENCY_TARGETS; do
      added="-"
      if [[ -n ${P99_AT_RATE[direct]:-} && $target != direct ]]; then
        added=$(awk -v a="${P99_AT_RATE[$target]}" -v b="${P99_AT_RATE[direct]}" 'BEGIN { printf "%+.3f", a - b }')
      fi
      echo "| ${LABELS[$target]} | ${LAT[$target]} | $added |"
    done
  )
  printf '%s\n' "$table"
  printf '%s\n' "$table" >>"$RESULTS_DIR/proxy.md"
fi

# --- optional profile ------------------------------------------------------------------------
profile() { # profile NAME URL PID: one more wrk run, with `perf record` on PID (and its children)
  local name=$1 url=$2 pid=$3 secs pids wrk_pid data="$RUN_DIR/perf-$1.data" t0 t1 n us
  check "$url"
  wait_quiet "$name profile"
  "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$WARMUP" -H "Cookie: $COOKIE_NAME=$COOKIE" "$url" >/dev/null
  "${LOAD_CPU[@]}" wrk "${WRK_ARGS[@]}" -d"$DURATION" -H "Cookie: $COOKIE_NAME=$COOKIE" "$url" >"$RUN_DIR/wrk-$name-perf.txt" &
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
  fake_cookie
  [[ " $TARGETS " == *" nginx "* ]] && profile nginx "http://127.0.0.1:$NGX_PORT/" "${NGINX_PID[proxy]}"
  stop_gateway
  start_gateway memory
  login memory
  profile memory "$GW/" "$GW_PID"
fi
