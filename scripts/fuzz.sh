#!/usr/bin/env bash
# Fuzz the Rust decode/probe/pipeline paths (fuzz/, cargo-fuzz + libFuzzer).
#
#   scripts/fuzz.sh                 # CI: replay fuzz/crashers/, then each target 20 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh jpeg png   # longer, chosen targets
#   FUZZ_RUNS=1000000 scripts/fuzz.sh           # a fixed number of executions instead
#
# Every target runs under the same guards: -timeout (no input may run longer),
# -rss_limit_mb / -malloc_limit_mb, and the harness's own allocation limit
# (fuzz/src/lib.rs: one allocation over the pixel limit aborts). A crash, hang
# or over-limit input fails the script; libFuzzer leaves it in
# fuzz/artifacts/<target>/, and it belongs in fuzz/crashers/<target>/ once fixed.
# Installs the nightly toolchain and cargo-fuzz (crates.io) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }

TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(jpeg png webp bmp pipeline)
SECONDS_EACH=${FUZZ_SECONDS:-20}
SANITIZER=${FUZZ_SANITIZER:-none}  # "address" finds more in unsafe code, runs ~3x slower
GUARDS=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512)

if ! cargo +nightly --version >/dev/null 2>&1; then
    say "installing the nightly toolchain (libFuzzer's instrumentation needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi
say "building the fuzz targets (sanitizer: $SANITIZER)"
(cd fuzz && cargo +nightly fuzz build -s "$SANITIZER")
BIN=fuzz/target/x86_64-unknown-linux-gnu/release

for t in "${TARGETS[@]}"; do
    crashers=(fuzz/crashers/"$t"/*)
    if [ -e "${crashers[0]}" ]; then
        say "$t: replaying ${#crashers[@]} kept crasher(s)"
        "$BIN/$t" "${GUARDS[@]}" "${crashers[@]}" >/dev/null 2>"fuzz/$t-replay.log" || {
            tail -n 40 "fuzz/$t-replay.log"; say "$t: a kept crasher fails again"; exit 1; }
    fi
done

for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    if [ -n "${FUZZ_RUNS:-}" ]; then limit=(-runs="$FUZZ_RUNS"); else limit=(-max_total_time="$SECONDS_EACH"); fi
    say "$t: ${limit[*]}"
    "$BIN/$t" "${GUARDS[@]}" "${limit[@]}" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "fuzz/corpus/$t" "fuzz/seeds/$t" 2>"fuzz/$t.log" || {
        tail -n 40 "fuzz/$t.log"; say "$t: FAILED (input in fuzz/artifacts/$t/)"; exit 1; }
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "fuzz/$t.log" | sed "s/^/[fuzz] $t: /"
done
say "no crash, hang or over-limit allocation"
