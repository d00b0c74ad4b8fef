#!/usr/bin/env bash
# Runs every test of Portcullis on a fresh Debian machine or a developer's one:
# installs what the tests need (redis-server, Node.js and the test OP's npm packages),
# checks formatting and lints, then runs the unit and integration tests. The integration
# tests start their own redis-server, oidc-provider and gateway processes on free
# loopback ports.
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
cargo test --workspace --locked
