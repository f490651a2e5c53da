#!/usr/bin/env bash
# Full-size SAM 2.1 check (not part of `cargo test`): a random checkpoint with
# facebook/sam2.1-hiera-large's dimensions (Hiera 144 wide, stages 2/6/36/4 blocks, widths
# 144/288/576/1152, heads 2/4/8/16, windows 8/4/16/8, global attention at blocks 23/33/43;
# 1024 px input; FPN, prompt encoder and mask decoder 256 wide, transformers' defaults), built
# and run by transformers 5.24 in tools/parity/sam2.py (`full` mode: assets/coffee.png at
# 320x240), then compared with cielr-scene's port in release mode by tests/sam2_parity.rs
# (SAM2_FIXTURE points it at this folder): preprocessing, Hiera stages 1 and 3, the lowest FPN
# level, the three image embeddings, pred_masks / iou_scores / object scores / post-processed
# masks for the point, box, point+box and point+mask cases.
#
# Usage: tools/parity/sam2_full.sh [OUT_DIR]     (default: target/sam2-full, ~450 MB)
# Python: $PYTHON, else /work/venv-ref/bin/python (torch, transformers 5.x, safetensors, numpy,
# pillow). SAM2_TOL_SCALE (default 50) widens the tiny fixture's error bounds for the full size.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/target/sam2-full}"
python="${PYTHON:-/work/venv-ref/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== transformers Sam2Model (random hiera-large-sized weights) -> $out"
/usr/bin/time -f "python: %e s" "$python" tools/parity/sam2.py full "$out"
echo "== cielr-scene (release)"
SAM2_FIXTURE="$out" SAM2_TOL_SCALE="${SAM2_TOL_SCALE:-50}" \
    cargo test --release -p cielr-scene --test sam2_parity -- sam2_matches_transformers --nocapture
