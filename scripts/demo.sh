#!/usr/bin/env bash
# Interim demo until `portcullis demo` (issue 4) lands: the test OpenID Provider
# (oidc-provider), a tiny upstream that shows what it receives, and the gateway with the
# memory store, all on loopback. Open the printed URL, log in with any name and password.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-deps.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"
cargo build --release -q -p portcullis-gateway

GW_PORT="${GW_PORT:-8080}" OP_PORT="${OP_PORT:-9000}" UP_PORT="${UP_PORT:-9100}"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

PORT=$OP_PORT CLIENT_ID=gw CLIENT_SECRET=gw-secret ACCESS_TOKEN_TTL=30 \
  REDIRECT_URIS="http://127.0.0.1:$GW_PORT/oauth2/callback" POST_LOGOUT_REDIRECT_URIS="http://127.0.0.1:$GW_PORT/" \
  NODE_NO_WARNINGS=1 node tests/op/provider.mjs >"$work/op.log" 2>&1 &
pids+=($!)

python3 - "$UP_PORT" >"$work/upstream.log" 2>&1 <<'PY' &
import html, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v[:60] + ('…' if len(v) > 60 else ''))}</td></tr>" for k, v in self.headers.items())
        body = f"<!doctype html><meta charset=utf-8><title>Upstream</title><body style='font:15px system-ui;margin:2rem'><h1>Hello, {html.escape(self.headers.get('X-Forwarded-User', 'stranger'))}</h1><p>What reached the upstream:</p><table border=1 cellpadding=4>{rows}</table><p><a href='/oauth2/sign_out'>Log out</a></p>".encode()
        self.send_response(200); self.send_header("content-type", "text/html; charset=utf-8"); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)

cat >"$work/portcullis.toml" <<TOML
listen = "127.0.0.1:$GW_PORT"
public_url = "http://127.0.0.1:$GW_PORT"
[oidc]
issuer = "http://127.0.0.1:$OP_PORT"
client_id = "gw"
client_secret = "gw-secret"
[session]
secret = "$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$UP_PORT"
TOML
"$CARGO_TARGET_DIR/release/portcullis" --config "$work/portcullis.toml" &
pids+=($!)
sleep 1
echo
echo "  Portcullis demo: open http://127.0.0.1:$GW_PORT/ and log in with any name and password."
echo "  Access tokens live 30 s; reload after that to see a refresh (same cookie). Ctrl-C stops everything."
echo
wait "${pids[2]}"
