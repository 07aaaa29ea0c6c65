#!/usr/bin/env bash
# Install everything a fresh machine lacks, then build and install tsuika into
# .venv. Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Build tools for libjpeg-turbo (the turbojpeg crate builds it with cmake + nasm).
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
if ((${#missing[@]})); then
    say "installing ${missing[*]} with apt-get"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2; exit 1; }

# Python environment with pinned versions (.ci/constraints.txt pins torch and friends).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
say "installing tsuika and its dependencies into .venv (torch is large: first run takes a few minutes)"
.venv/bin/pip install -q -c .ci/constraints.txt ".[dev]"
(cd / && "$OLDPWD/.venv/bin/python" -c "import tsuika._native")
say "ok: $(.venv/bin/python -c 'import tsuika, torch; print("tsuika", tsuika.__version__, "torch", torch.__version__)')"
