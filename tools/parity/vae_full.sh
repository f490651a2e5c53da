#!/usr/bin/env bash
# Full-size AutoencoderKL check (not part of `cargo test`): a random checkpoint with Stable
# Diffusion's real VAE config (block_out_channels [128, 256, 512, 512], layers_per_block 2,
# 32 groups, 4 latent channels, scaling_factor 0.18215), written by diffusers, compared with
# cielr-diffusion's port in release mode on a SIZE x SIZE input. Prints max abs / max rel
# errors of the encoder's mean and log-variance and of the decoded image, and the time of one
# encode and one decode (after one warm-up call each) of torch and of ours, measured in the
# same run on this machine, with their ratio.
#
# Usage: tools/parity/vae_full.sh [SIZE] [OUT_DIR]   (SIZE default 256; OUT_DIR default
#        target/vae-full, ~340 MB of weights)
# Python: $PYTHON, else /work/venv-diff/bin/python (torch, diffusers 0.42, safetensors, numpy).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
size="${1:-256}"
out="${2:-$repo/target/vae-full}"
python="${PYTHON:-/work/venv-diff/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== building the comparison (release)"
cargo build --release -p cielr-diffusion --example vae_parity
echo "== diffusers: checkpoint, input, references, torch timings -> $out (${size}x${size})"
"$python" tools/parity/diffusers_sched_vae.py full "$out" "$size"
echo "== cielr-diffusion"
target/release/examples/vae_parity "$out"
