#!/usr/bin/env bash
# Stable Diffusion inpainting on CPU, cielr-diffusion (Burn, release build) vs diffusers
# (torch, float32) side by side in one run on the same random weights and inputs: one UNet
# step (batch 2, as classifier-free guidance runs it), one VAE decode, and a whole inpaint of
# STEPS steps (DDIM, guidance 7.5, injected noise), with the errors of our outputs against
# diffusers'. Prints a markdown table for docs/performance.md. Not run by `cargo test`.
#
# Usage: tools/bench/sd.sh [reduced|full] [SIZE] [STEPS] [OUT_DIR]
#        (defaults: reduced, 256 px, 20 steps, target/sd-bench)
# `reduced` is the SD-1.5 layout at a quarter of the widths (see tools/bench/sd_ref.py); `full`
# the real SD-1.5-inpainting widths (about 4 GB of f32 weights and much longer).
# TORCH_THREADS sets torch's thread count (default: torch's own choice).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
config="${1:-reduced}"
size="${2:-256}"
steps="${3:-20}"
out="${4:-$repo/target/sd-bench}"
python="${PYTHON:-/work/venv-diff/bin/python}"
mkdir -p "$out"
cd "$repo"
echo "== building cielr-diffusion's benchmark (release)"
cargo build --release -p cielr-diffusion --example sd_bench
echo "== diffusers: $config folder, inputs, outputs and timings -> $out"
"$python" tools/bench/sd_ref.py "$out" "$config" "$size" "$steps"
echo "== cielr-diffusion on the same folder and inputs"
# mimalloc keeps freed memory, as the `cielr` binary sets it (`cielr::keep_freed_memory`).
MIMALLOC_PURGE_DELAY=-1 target/release/examples/sd_bench "$out"
