#!/usr/bin/env bash
# Full-size Depth Anything V2 check (not part of `cargo test`): a random checkpoint with
# depth-anything/Depth-Anything-V2-Small-hf's dimensions (DINOv2 384 wide x 12 layers, out
# indices 3/6/9/12, neck 48/96/192/384, fusion 64) or Base's (768 x 12, neck 96/192/384/768,
# fusion 128), written by transformers, run at 518x518 on chelsea.png and compared with
# cielr-scene's port in release mode. Prints max abs / max rel errors of pixel_values, the
# four feature maps and predicted_depth, and forward times of torch (2 threads) and ours.
#
# Usage: tools/parity/depth_anything_full.sh [small|base] [OUT_DIR]
#        (default: small, target/depth-anything-full-<variant>; ~100 MB small, ~400 MB base)
# Python: $PYTHON, else /work/venv-ref/bin/python (torch, transformers 5.24, safetensors).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
variant="${1:-small}"
out="${2:-$repo/target/depth-anything-full-$variant}"
python="${PYTHON:-/work/venv-ref/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== transformers: $variant checkpoint, input, references -> $out"
"$python" tools/parity/depth_anything.py full "$out" "$variant"
echo "== building the comparison (release)"
cargo build --release -p cielr-scene --example depth_anything_parity
echo "== cielr-scene"
target/release/examples/depth_anything_parity "$out"
