#!/usr/bin/env bash
# Full-size CLIP check (not part of `cargo test`): a random checkpoint with
# openai/clip-vit-base-patch32's dimensions (ViT-B/32 vision tower 768 wide x 12 layers, text
# tower 512 x 12, projection 512, legacy eos_token_id 2), written by transformers, compared
# with cielr-scene's port in release mode. Prints max abs / max rel errors of pixel_values,
# embeddings, logits and both last hidden states, and timings of torch and ours measured
# back to back on this machine (median and min of 7 after 2 warm-up calls).
#
# Usage: tools/parity/clip_full.sh [OUT_DIR]     (default: target/clip-full, ~600 MB)
# Python: $PYTHON, else /work/venv-clip/bin/python (torch, transformers 5.x, safetensors,
# tokenizers, numpy, pillow; scikit-image's chelsea.png via CLIP_SKIMAGE_DATA, see clip.py).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/target/clip-full}"
python="${PYTHON:-/work/venv-clip/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== transformers: checkpoint, inputs, references -> $out"
"$python" tools/parity/clip.py full "$out"
echo "== building the comparison (release)"
cargo build --release -p cielr-scene --example clip_parity
echo "== torch timings"
"$python" tools/parity/clip.py time "$out"
echo "== cielr-scene"
target/release/examples/clip_parity "$out"
