#!/usr/bin/env bash
# Full-size UNet2DConditionModel check (not part of `cargo test`): a random checkpoint with
# the real UNet config of runwayml/stable-diffusion-inpainting (sd15: 9 input channels,
# [320, 640, 1280, 1280], 8 heads, cross_attention_dim 768) or
# stabilityai/stable-diffusion-2-inpainting (sd2: heads [5, 10, 20, 20], 1024, linear
# projections), 860M parameters stored in float16, written by diffusers, compared with
# cielr-diffusion's port in release mode on a batch of 2 (as classifier-free guidance runs it)
# LATENT x LATENT latents with 77 text tokens. Prints max abs / max rel error of the output
# and the time of one forward (after one warm-up call) of torch and of ours, measured in the
# same run on this machine, with their ratio.
#
# Usage: tools/parity/unet_full.sh [sd15|sd2] [LATENT] [OUT_DIR]
#        (defaults sd15, 32 = 256 px, target/unet-full-CONFIG; ~1.7 GB of weights)
# Python: $PYTHON, else /work/venv-diff/bin/python (torch, diffusers 0.42, safetensors).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
which="${1:-sd15}"
latent="${2:-32}"
out="${3:-$repo/target/unet-full-$which}"
python="${PYTHON:-/work/venv-diff/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== building the comparison (release)"
cargo build --release -p cielr-diffusion --example unet_parity
echo "== diffusers: $which checkpoint, inputs, reference, torch timing -> $out"
"$python" tools/parity/diffusers_unet.py full "$out" "$which" "$latent"
echo "== cielr-diffusion"
target/release/examples/unet_parity "$out"
