#!/usr/bin/env bash
# Every check and test: formatters, linters, Rust unit/property tests, pytest.
# Run after scripts/setup.sh (the README's second command does both).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[test]\033[0m %s\n' "$*"; }

say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
say "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
say "cargo test (tsuika-core)"
cargo test -p tsuika-core -q
say "the installed extension imports from outside the source tree"
(cd / && "$OLDPWD/.venv/bin/python" -c "import tsuika._native as n; print('tsuika._native from', n.__file__)")
say "pytest"
.venv/bin/python -m pytest -q "$@"
