#!/usr/bin/env bash
# Full-size OWLv2 check (not part of `cargo test`): a random Owlv2ForObjectDetection with
# google/owlv2-base-patch16-ensemble's dimensions (ViT-B/16 vision tower 768 wide x 12 layers
# at 960x960 = 60x60 patches, text tower 512 x 12, projection 512, 16-token queries), written
# by transformers 5.24, compared with cielr-scene's port in release mode on assets/coffee.png
# and three queries. Prints max abs / max rel errors of pixel_values, image features, class
# embeddings, objectness, boxes, text embeddings, logits and the post-processed detections,
# and timings of torch and ours on this machine.
#
# Usage: tools/parity/owlv2_full.sh [OUT_DIR]     (default: target/owlv2-full, ~620 MB)
# Python: $PYTHON, else /work/venv-ref/bin/python (torch, transformers 5.x, scipy, safetensors,
# tokenizers, numpy, pillow).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/target/owlv2-full}"
python="${PYTHON:-/work/venv-ref/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== transformers: checkpoint, inputs, references -> $out"
"$python" tools/parity/owlv2.py full "$out"
echo "== torch timings"
"$python" tools/parity/owlv2.py time "$out"
echo "== building the comparison (release)"
cargo build --release -p cielr-scene --example owlv2_parity
echo "== cielr-scene"
target/release/examples/owlv2_parity "$out"
