#!/usr/bin/env bash
# Full-size LaMa check (not part of `cargo test`): big-lama's generator (ngf 64, 3
# downsamplings, 18 residual FFC blocks, ratios 0.75, no LFU; ~27M parameters) with random
# weights (He-normal convolutions, randomised BatchNorm statistics), built by LaMa's own
# ffc.py, saved as a Lightning-like checkpoint and converted by tools/lama/convert_checkpoint.py,
# then compared with cielr-diffusion's port (release build) on a SIZE x SIZE photo with a mask.
# Prints max abs / max rel errors of the logits and of the sigmoid output, and the time of one
# forward pass of torch and of ours (after one warm-up call each), measured in the same run.
#
# Usage: tools/parity/lama_full.sh [SIZE] [OUT_DIR]   (SIZE default 512; OUT_DIR default
#        target/lama-full, ~210 MB)
# Python: $PYTHON, else /work/venv-ref/bin/python (torch, safetensors, numpy, Pillow, PyYAML).
# LaMa's code: $LAMA_REPO (a checkout or git mirror of advimman/lama; see tools/parity/lama.py).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
size="${1:-512}"
out="${2:-$repo/target/lama-full}"
python="${PYTHON:-/work/venv-ref/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== building the comparison (release)"
cargo build --release -p cielr-diffusion --example lama_parity
echo "== official LaMa code: checkpoint, input, references, torch timing -> $out (${size}x${size})"
"$python" tools/parity/lama.py full "$out" "$size"
echo "== cielr-diffusion"
target/release/examples/lama_parity "$out" ${LAMA_NO_WARMUP:+--no-warmup}
