#!/usr/bin/env bash
# Runs every test of Portcullis on a fresh Debian machine or a developer's one:
# installs what the tests need (redis-server, Node.js, Debian's chromium and the npm
# packages of the test OP and of the browser test), checks formatting and lints, then runs
# the unit and integration tests, lints the packaging (packaging/lint.sh), then the
# real-browser test of `portcullis demo` (tests/browser). The tests start their own
# redis-server, OP and gateway processes on free loopback ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh

# A persistent target dir keeps repeated runs (and CI on the same machine) incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
echo "== packaging lint (packaging/lint.sh: Dockerfile, systemd unit, Kubernetes manifests)"
# About 6 s; the first run on a machine also installs the pinned linters from PyPI (about 60 s).
bash packaging/lint.sh
echo "== browser test of the demo (tests/browser)"
# cargo test builds the binary too, but only as a test dependency; build it explicitly
# (a no-op when it is up to date) so the browser test runs what this tree contains.
cargo build -p portcullis-gateway --locked
# The files are named (not the directory): Node 21+ reads `node --test` arguments as globs.
PORTCULLIS_BIN="$CARGO_TARGET_DIR/debug/portcullis" node --test tests/browser/*.test.mjs
