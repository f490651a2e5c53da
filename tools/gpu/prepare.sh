#!/usr/bin/env bash
# Prepares what the GPU check carries to the lent machine, in target/gpu-carry/ (ignored by
# git through /target; named in the device call's `carry`):
#   gpu_check     our binary, built with the cuda feature (x86-64; runs on CPU too)
#   lama-src/     LaMa's module files that tools/parity/lama.py imports (no internet there)
#   wheels/       diffusers 0.42.1, importlib_metadata 8.7.0 and segment_anything 1.0 (pure
#                 Python; the device image has torch, transformers, safetensors, PyYAML but not
#                 diffusers; segment_anything is the torch side of e2e's automatic masks)
# Usage: tools/gpu/prepare.sh [--no-build]
#   builds with CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-/work/target-cuda} (a separate target dir,
#   >10 min on 2 cores the first time), LAMA_REPO as in tools/parity/lama.py.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
carry=target/gpu-carry
tdir="${CUDA_TARGET_DIR:-/work/target-cuda}"
mkdir -p "$carry/wheels"
if [ "${1:-}" != "--no-build" ]; then
    CARGO_TARGET_DIR="$tdir" cargo build --release --features cuda --example gpu_check
fi
cp "$tdir/release/examples/gpu_check" "$carry/gpu_check"
strip "$carry/gpu_check" 2>/dev/null || true
lama="${LAMA_REPO:-/work/.mirror/advimman+lama/repo}"
official=$(python3 -c "import ast; t = ast.parse(open('tools/parity/lama.py').read()); \
print(' '.join(f for n in t.body if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == 'OFFICIAL' \
for f in ast.literal_eval(n.value)))")
for f in $official; do
    mkdir -p "$carry/lama-src/$(dirname "$f")"
    if [ -f "$lama/$f" ]; then cp "$lama/$f" "$carry/lama-src/$f"
    else git -C "$lama" show "HEAD:$f" > "$carry/lama-src/$f"; fi
done
if [ ! -f "$carry/wheels/diffusers-0.42.1-py3-none-any.whl" ]; then
    dl="python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d $carry/wheels"
    $dl diffusers==0.42.1
    $dl importlib_metadata==8.7.0
fi
if [ ! -f "$carry/wheels/segment_anything-1.0-py3-none-any.whl" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d "$carry/wheels" segment-anything==1.0
fi
du -sh "$carry" "$carry"/*
