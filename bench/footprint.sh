#!/usr/bin/env bash
# What a deployment costs besides CPU: binary size, startup-to-ready time, memory per session.
#
#   bash bench/footprint.sh
#
# In one run:
#   1. binary size: the release binary as built (profile.release of Cargo.toml) and stripped
#      (`strip` into a copy);
#   2. startup-to-ready: bench/startup.py starts the gateway BENCH_STARTS times per store
#      (memory, redis) with the development OP up, and times process start -> first 200 from
#      /readyz (discovery, JWKS and, for redis, the store's checks included);
#   3. sessions: for each store, BENCH_SESSIONS real logins (bench/mass_login.py: the whole
#      code flow, token exchange at the OP included, through the development OP's single
#      sign-on) after BENCH_WARMUP_SESSIONS warm-up logins. Measured before and after: the
#      gateway's VmRSS, and with redis DBSIZE, used_memory and `MEMORY USAGE` of a sample of
#      keys of each kind. The sessions are idle: nothing uses them after their login.
# The tables are printed and appended to bench/results/footprint.md.
#
# Environment (defaults in brackets):
#   BENCH_SESSIONS [100000]        logins per store
#   BENCH_WARMUP_SESSIONS [2000]   unmeasured logins before the "before" reading
#   BENCH_LOGIN_PROCS [6]          parallel login workers (processes)
#   BENCH_STARTS [20]              starts per store for the startup time
#   BENCH_STORES [memory redis]    which stores to run
#   BENCH_SAMPLE_KEYS [2000]       keys sampled for MEMORY USAGE
#   BENCH_SKIP_BUILD [0]           1: use the existing release binary
#   BENCH_BIN                      run this portcullis binary instead
#   BENCH_RESULTS_DIR [bench/results]
#   CARGO_TARGET_DIR [target]      the binary is $CARGO_TARGET_DIR/release/portcullis
#
# Everything binds 127.0.0.1 on free ports; every process started here is stopped on exit.
set -euo pipefail

BENCH_TAG=footprint
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS="${BENCH_SESSIONS:-100000}"
WARMUP_SESSIONS="${BENCH_WARMUP_SESSIONS:-2000}"
LOGIN_PROCS="${BENCH_LOGIN_PROCS:-6}"
STARTS="${BENCH_STARTS:-20}"
STORES="${BENCH_STORES:-memory redis}"
SAMPLE_KEYS="${BENCH_SAMPLE_KEYS:-2000}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$REPO_ROOT/bench/results}"
BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/portcullis}"
BENCH_FAIL_DIR="$RESULTS_DIR/footprint-failed"

need=()
need_cmd need redis-server redis-server
need_cmd need curl curl
need_cmd need python3 python3
need_cmd need strip binutils
install_packages "${need[@]}"
build_gateway "$BIN"

free_port REDIS_PORT
free_port OP_PORT
free_port GW_PORT
GW="http://127.0.0.1:$GW_PORT"
OP="http://127.0.0.1:$OP_PORT"

# --- 1. binary size ---------------------------------------------------------------------------
strip -o "$WORK/portcullis.stripped" "$BIN"
SIZE=$(stat -c %s "$BIN")
SIZE_STRIPPED=$(stat -c %s "$WORK/portcullis.stripped")
log "binary: $SIZE bytes, stripped $SIZE_STRIPPED"

# --- servers ----------------------------------------------------------------------------------
start_redis "$REDIS_PORT"
# Access tokens outlive the run: idle sessions are never refreshed while it lasts.
start_dev_op "$BIN" "$OP_PORT" "$GW/oauth2/callback" --access-token-ttl 2h

GW_PID=""
start_gateway() { # start_gateway memory|redis
  local store=$1
  PORTCULLIS_LOG=warn "$BIN" --config "$WORK/portcullis-$store.toml" >>"$WORK/portcullis-$store.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "$GW/readyz" 200 60 || die "portcullis ($store) not ready; log: $(tail -5 "$WORK/portcullis-$store.log")"
  log "portcullis ($store store) ready, pid $GW_PID"
}
stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  forget_pid "$GW_PID"
  GW_PID=""
}
for store in $STORES; do
  gateway_conf "$WORK/portcullis-$store.toml" "$GW_PORT" "$OP_PORT" "$store" "http://127.0.0.1:9" "$REDIS_PORT"
done

# --- 2. startup-to-ready ----------------------------------------------------------------------
declare -A READY LISTEN
for store in $STORES; do
  log "startup: $STARTS starts, $store store"
  out=$(PORTCULLIS_LOG=warn python3 bench/startup.py --url "$GW/readyz" -n "$STARTS" --log "$WORK/startup-$store.log" \
    -- "$BIN" --config "$WORK/portcullis-$store.toml") || die "startup ($store): $out"
  READY[$store]=$(sed -n 's/^ready_ms[^:]*: //p' <<<"$out")
  LISTEN[$store]=$(sed -n 's/^listen_ms[^:]*: //p' <<<"$out")
  log "startup ($store): ready ${READY[$store]} ms, listening ${LISTEN[$store]} ms (min / median / p90 / max)"
done

# --- 3. memory per session ----------------------------------------------------------------------
dbsize() { redis-cli -p "$REDIS_PORT" DBSIZE; }
redis_used() { redis-cli -p "$REDIS_PORT" INFO memory | awk -F: '/^used_memory:/ { gsub("\r", ""); print $2 }'; }

# key_usage: per kind of key (the key with its random part cut: `s:{...}` -> `s:{}`), how many
# there are and the mean MEMORY USAGE (bytes, key and value with Redis' overhead) of up to
# SAMPLE_KEYS of them.
key_usage() {
  redis-cli -p "$REDIS_PORT" --scan | python3 -c '
import random, re, subprocess, sys
port, limit = sys.argv[1], int(sys.argv[2])
keys = sys.stdin.read().split()
kinds = {}
for k in keys:
    kinds.setdefault(re.sub(r"[A-Za-z0-9_-]{16,}", "…", k), []).append(k)
for kind, ks in sorted(kinds.items()):
    sample = random.sample(ks, min(limit, len(ks)))
    cmds = "".join(f"MEMORY USAGE {k} SAMPLES 0\nTYPE {k}\n" for k in sample)
    out = subprocess.run(["redis-cli", "-p", port], input=cmds, capture_output=True, text=True).stdout.split()
    usage = [int(x) for x in out[0::2] if x.isdigit()]
    types = sorted(set(out[1::2]))
    mean = sum(usage) / max(1, len(usage))
    print(kind, len(ks), f"{mean:.0f}", "/".join(types), sep="\t")
' "$REDIS_PORT" "$SAMPLE_KEYS"
}

declare -A RSS0 RSS1 KEYS0 KEYS1 USED0 USED1 MADE RATE KINDS
for store in $STORES; do
  stop_gateway
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  start_gateway "$store"
  out=$(python3 bench/mass_login.py --gateway "$GW" --op "$OP" -n "$WARMUP_SESSIONS" -p "$LOGIN_PROCS" 2>&1) \
    || die "warm-up logins ($store): $out"
  sleep 1
  RSS0[$store]=$(rss_kb "$GW_PID") KEYS0[$store]=$(dbsize) USED0[$store]=$(redis_used)
  log "$store: before: VmRSS ${RSS0[$store]} kB, DBSIZE ${KEYS0[$store]}; $SESSIONS logins with $LOGIN_PROCS workers"
  out=$(python3 bench/mass_login.py --gateway "$GW" --op "$OP" -n "$SESSIONS" -p "$LOGIN_PROCS" 2>&1) \
    || die "logins ($store): $out"
  MADE[$store]=$(sed -n 's/^logins: \([0-9]*\).*/\1/p' <<<"$out")
  RATE[$store]=$(sed -n 's/.*rate: \([0-9]*\)\/s.*/\1/p' <<<"$out")
  sleep 2
  RSS1[$store]=$(rss_kb "$GW_PID") KEYS1[$store]=$(dbsize) USED1[$store]=$(redis_used)
  log "$store: after ${MADE[$store]} logins (${RATE[$store]}/s): VmRSS ${RSS1[$store]} kB, DBSIZE ${KEYS1[$store]}"
  if [[ $store == redis ]]; then KINDS[$store]=$(key_usage); fi
done
stop_gateway

# --- results ------------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then commit="$commit+dirty"; fi
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
per() { awk -v d="$1" -v n="$2" 'BEGIN { printf "%.0f", n ? d / n : 0 }'; }
table=$(
  echo
  echo "### $(date -u '+%Y-%m-%d %H:%M UTC') — commit $commit — footprint"
  echo
  echo "\`bash bench/footprint.sh\`; $(nproc) cores, shared; $(redis-server --version | awk '{print $1, $3}')"
  echo
  echo "| binary | bytes | MB |"
  echo "| --- | ---: | ---: |"
  echo "| $(basename "$BIN") as built (release profile) | $SIZE | $(mb "$SIZE") |"
  echo "| stripped (\`strip\`) | $SIZE_STRIPPED | $(mb "$SIZE_STRIPPED") |"
  echo
  echo "Startup to ready ($STARTS starts per store; process start → first \`200\` from \`/readyz\`, probed every ms; OP up):"
  echo
  echo "| store | ready (ms): min / median / p90 / max | listening (ms): min / median / p90 / max |"
  echo "| --- | --- | --- |"
  for store in $STORES; do echo "| $store | ${READY[$store]} | ${LISTEN[$store]} |"; done
  echo
  echo "Memory per idle session ($SESSIONS logins per store through the full code flow, after $WARMUP_SESSIONS warm-up logins):"
  echo
  echo "| store | logins | logins/s | gateway VmRSS before → after (MB) | gateway bytes/session | Redis keys before → after | Redis used_memory before → after (MB) | Redis bytes/session (used_memory) |"
  echo "| --- | ---: | ---: | --- | ---: | --- | --- | ---: |"
  for store in $STORES; do
    echo "| $store | ${MADE[$store]} | ${RATE[$store]} | $(mb $((RSS0[$store] * 1024))) → $(mb $((RSS1[$store] * 1024))) | $(per $(((RSS1[$store] - RSS0[$store]) * 1024)) "${MADE[$store]}") | ${KEYS0[$store]} → ${KEYS1[$store]} | $(mb "${USED0[$store]}") → $(mb "${USED1[$store]}") | $([[ $store == redis ]] && per $((USED1[$store] - USED0[$store])) "${MADE[$store]}" || echo —) |"
  done
  if [[ -n ${KINDS[redis]:-} ]]; then
    echo
    echo "Redis keys after the logins, by kind (random part shown as …; mean MEMORY USAGE over up to $SAMPLE_KEYS keys of each kind):"
    echo
    echo "| key | type | count | MEMORY USAGE (bytes) |"
    echo "| --- | --- | ---: | ---: |"
    while IFS=$'\t' read -r kind count usage types; do
      echo "| \`$kind\` | $types | $count | $usage |"
    done <<<"${KINDS[redis]}"
  fi
)
printf '%s\n' "$table"
mkdir -p "$RESULTS_DIR"
printf '%s\n' "$table" >>"$RESULTS_DIR/footprint.md"
log "table appended to $RESULTS_DIR/footprint.md"
