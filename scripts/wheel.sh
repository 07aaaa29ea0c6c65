#!/usr/bin/env bash
# Build tsuika's release wheel and sdist, then prove the wheel installs and runs
# where no Rust toolchain or C build tools exist.
#
#   bash scripts/wheel.sh                 # build into dist/, then prove
#   WHEEL=dist/tsuika-...whl bash scripts/wheel.sh   # prove an existing wheel only
#
# The wheel: abi3 (CPython >= 3.10), manylinux_2_34 (the oldest tag maturin's
# compliance check accepts for a build on Debian 12: the extension uses
# GLIBC_2.29/2.30/2.33/2.34 symbols, so manylinux_2_28 is refused), libjpeg-turbo
# linked in statically (asserted: no libjpeg/libturbojpeg in the extension's
# NEEDED list), the tiny world's model and evaluator inside (asserted by listing).
#
# The proof: a new venv (python3 -m venv) whose PATH holds the venv and symlinks
# to a few shell tools only (asserted: no cargo, rustc, cmake, nasm, cc); pip
# installs the wheel with .ci/constraints.txt from a wheelhouse (.whl/, kept between
# runs: pip's own cache does not keep the index's wheels on this machine);
# `pip check`; `import tsuika._native` from outside the source tree; `tsuika prep`
# on pictures it draws (PNG and JPEG); `tsuika demo --steps 40 --eval 4`.
# Prints the wheel's size and each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '\033[1m[wheel]\033[0m %s\n' "$*"; }
fail() { printf '[wheel] FAIL: %s\n' "$*" >&2; exit 1; }

MANYLINUX=${MANYLINUX:-manylinux_2_34}
WHEELHOUSE=${WHEELHOUSE:-$ROOT/.whl}
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tsuika-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TIMES=()

# timed LABEL CMD...: run CMD, remember how long it took.
timed() {
    local label=$1 start ms
    shift
    start=$(date +%s%N)
    "$@"
    ms=$((($(date +%s%N) - start) / 1000000))
    TIMES+=("$(printf '%-34s %5d.%01d s' "$label" $((ms / 1000)) $((ms % 1000 / 100)))")
}

maturin_cmd() {
    if [ -x .venv/bin/maturin ]; then echo .venv/bin/maturin
    elif command -v maturin >/dev/null; then command -v maturin
    else fail "maturin not found (bash scripts/setup.sh installs it into .venv)"; fi
}

build() {
    local maturin
    maturin=$(maturin_cmd)
    rm -rf dist
    "$maturin" build --release --compatibility "$MANYLINUX" --out dist
    "$maturin" sdist --out dist
}

# ---- inspect the wheel -------------------------------------------------------

check_wheel() {
    local wheel=$1 listing
    case $(basename "$wheel") in
        *-cp310-abi3-"$MANYLINUX"_x86_64.whl | *-cp310-abi3-"$MANYLINUX"_aarch64.whl) ;;
        *) fail "$wheel: expected a cp310-abi3-$MANYLINUX wheel" ;;
    esac
    listing=$("$PY" -m zipfile -l "$wheel")
    for member in tsuika/_native.abi3.so \
        tsuika/world/assets/evaluator.json tsuika/world/assets/evaluator.safetensors \
        tsuika/world/assets/tiny-sd/model_index.json \
        tsuika/world/assets/tiny-sd/unet/diffusion_pytorch_model.safetensors \
        tsuika/world/assets/tiny-sd/vae/diffusion_pytorch_model.safetensors \
        tsuika/world/assets/tiny-sd/text_encoder/model.safetensors \
        tsuika/world/assets/tiny-sd/tokenizer/vocab.json; do
        grep -qF "$member " <<<"$listing" || fail "$wheel does not contain $member"
    done
    mkdir -p "$WORK/so"
    "$PY" -m zipfile -e "$wheel" "$WORK/so"
    local needed
    needed=$(readelf -d "$WORK/so/tsuika/_native.abi3.so" | awk '/NEEDED/ {print $NF}' | tr -d '[]')
    say "extension NEEDED: $(echo $needed)"
    if grep -qiE 'jpeg|turbo' <<<"$needed"; then
        fail "the extension links a system libjpeg: $needed"
    fi
    local symbols
    symbols=$(readelf -Ws "$WORK/so/tsuika/_native.abi3.so")
    grep -qE 'tj3Init|tjInitDecompress' <<<"$symbols" || fail "libjpeg-turbo's TurboJPEG API is not inside the extension"
    rm -rf "$WORK/so"
}

# ---- a PATH without build tools ----------------------------------------------

bare_path() {
    local bin=$WORK/bin tool
    mkdir -p "$bin"
    for tool in sh bash env uname ldconfig cat ls mkdir rm mktemp dirname basename readlink; do
        if command -v "$tool" >/dev/null; then ln -sf "$(command -v "$tool")" "$bin/$tool"; fi
    done
    echo "$bin"
}

# in_venv CMD...: run CMD with PATH = the venv + bare tools, outside the source tree.
in_venv() {
    (cd "$WORK/run" && env -u PYTHONPATH -u VIRTUAL_ENV -u CARGO_HOME -u RUSTUP_HOME \
        PATH="$VENV/bin:$BARE" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$@")
}

assert_no_build_tools() {
    local tool
    for tool in cargo rustc cmake nasm cc gcc; do
        if in_venv bash -c "command -v $tool" >/dev/null 2>&1; then
            fail "$tool is on the proof venv's PATH"
        fi
    done
    say "no cargo, rustc, cmake, nasm, cc or gcc on the proof PATH"
}

# pip's HTTP cache does not keep the index's wheels here, so the dependencies are kept
# in a wheelhouse ($WHEELHOUSE, default .whl/): a second run downloads nothing.
fetch_wheels() {
    mkdir -p "$WHEELHOUSE"
    in_venv python -m pip download -q -d "$WHEELHOUSE" -c "$ROOT/.ci/constraints.txt" "$WHEEL"
}

install_wheel() {
    in_venv python -m pip install -q --no-index --find-links "$WHEELHOUSE" \
        -c "$ROOT/.ci/constraints.txt" "$WHEEL"
}

draw_pictures() {
    in_venv python - "$WORK/run/pictures" <<'EOF'
import sys
from pathlib import Path

from PIL import Image
from tsuika.world import Scene, caption, render

folder = Path(sys.argv[1]) / "3_zkz"
folder.mkdir(parents=True)
scenes = [Scene("circle", "red"), Scene("square", "blue", "black"), Scene("star", "green")]
for i, scene in enumerate(scenes * 2):
    picture = Image.fromarray(render(scene)).resize((192, 160))
    name = f"{i:02d}.{'jpg' if i % 2 else 'png'}"  # JPEGs go through libjpeg-turbo
    picture.save(folder / name)
    (folder / f"{i:02d}.txt").write_text(caption(scene))
EOF
}

prep_pictures() {
    in_venv tsuika prep "$WORK/run/pictures" --resolution 128 --min-bucket 64 \
        --max-bucket 256 --json >"$WORK/run/prep.json"
    in_venv python - "$WORK/run/prep.json" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
summary = report["summary"]
formats = sorted({f["format"] for f in report["files"]})
assert summary["images"] == summary["ok"] == 6, summary
assert formats == ["jpeg", "png"], formats
print(f"[wheel] tsuika prep: {summary['ok']} of 6 pictures ok ({', '.join(formats)}),"
      f" {summary['buckets']} bucket(s)")
EOF
}

import_native() {
    in_venv python -c "
import importlib.util
import tsuika, tsuika._native as n
assert '$ROOT' not in n.__file__, n.__file__
assert importlib.util.find_spec('peft') is None, 'peft is a test dependency only'
print('[wheel] tsuika', tsuika.__version__, '- tsuika._native from', n.__file__)"
}

run_demo() {
    in_venv tsuika demo --steps 40 --eval 4 --out "$WORK/run/demo"
    for file in grid.png report.md report.json; do
        [ -s "$WORK/run/demo/$file" ] || fail "tsuika demo did not write $file"
    done
}

# ---- main --------------------------------------------------------------------

if [ -z "${WHEEL:-}" ]; then
    say "building the release wheel and the sdist ($MANYLINUX)"
    timed "build wheel + sdist" build
    WHEEL=$(ls dist/tsuika-*.whl)
    SDIST=$(ls dist/tsuika-*.tar.gz)
    local_listing=$(tar -tzf "$SDIST")
    grep -q 'rust/core/src/lib.rs' <<<"$local_listing" || fail "$SDIST lacks the Rust sources"
    grep -q 'tiny-sd/unet/diffusion_pytorch_model.safetensors' <<<"$local_listing" \
        || fail "$SDIST lacks the tiny world's model"
    say "sdist: $SDIST ($(du -h "$SDIST" | cut -f1))"
fi
WHEEL=$(realpath "$WHEEL")
timed "inspect wheel" check_wheel "$WHEEL"
say "wheel: $WHEEL ($(stat -c %s "$WHEEL") bytes, $(du -h "$WHEEL" | cut -f1))"

mkdir -p "$WORK/run"
VENV=$WORK/venv
BARE=$(bare_path)
timed "new venv" "$PY" -m venv "$VENV"
assert_no_build_tools
timed "pip download deps (wheelhouse)" fetch_wheels
timed "pip install wheel + deps" install_wheel
timed "pip check" in_venv python -m pip check
timed "import tsuika._native" import_native
timed "draw pictures" draw_pictures
timed "tsuika prep" prep_pictures
timed "tsuika demo --steps 40 --eval 4" run_demo
sed 's/^/    /' "$WORK/run/demo/report.md"

say "wheel size: $(stat -c %s "$WHEEL") bytes ($(basename "$WHEEL"))"
say "step times:"
printf '    %s\n' "${TIMES[@]}"
say "ok"
