#!/usr/bin/env bash
# Full-size SAM check (not part of `cargo test`): a random checkpoint with facebook/sam-vit-base's
# dimensions (ViT-B image encoder 768 wide x 12 layers, 12 heads, window 14, global attention
# at 2/5/8/11, 1024 px input, 64x64x256 embedding; prompt encoder and mask decoder 256 wide,
# decoder MLP 2048, 8 heads, layer_norm_eps 1e-6 as in the real checkpoints), built by the
# official segment-anything package, renamed into transformers' SamModel and written by
# tools/parity/sam.py, then compared with cielr-scene's port in release mode by
# tests/sam_parity.rs (SAM_FIXTURE points it at this folder): pixel values of assets/coffee.png
# (600x400 -> 1024x683, padded), image embeddings, pred_masks / iou_scores / post-processed
# masks for point and box prompt batches. Prints max abs / max rel errors and both sides'
# timings (torch: one forward per prompt case, image encoder included; ours: embed_image).
#
# Usage: tools/parity/sam_full.sh [OUT_DIR]     (default: target/sam-full, ~400 MB)
# Python: $PYTHON, else /work/venv-ref/bin/python (torch, transformers 5.x, segment-anything
# and opencv-python-headless installed with --no-deps, safetensors, numpy, pillow).
# SAM_TOL_SCALE (default 20) widens the tiny fixture's error bounds for the full size.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/target/sam-full}"
python="${PYTHON:-/work/venv-ref/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== official segment-anything -> transformers: checkpoint, inputs, references -> $out"
"$python" tools/parity/sam.py full "$out"
echo "== cielr-scene (release)"
SAM_FIXTURE="$out" SAM_TOL_SCALE="${SAM_TOL_SCALE:-20}" \
    cargo test --release -p cielr-scene --test sam_parity -- sam_matches_transformers --nocapture
