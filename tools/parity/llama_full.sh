#!/usr/bin/env bash
# Full-size parity check of cielr-planner's Llama-family decoder (not part of `cargo test`):
# a randomly initialised checkpoint with Qwen2.5-0.5B's dimensions (24 layers, width 896,
# 14 query / 2 key-value heads, vocab 151936, tied embeddings, q/k/v bias, bf16, ~1 GB) is
# made with transformers, then our logits for a 12-token prompt (every position) and three
# cached decode steps are compared with transformers' (f32, tolerance 1e-4), plus an
# 8-token greedy continuation.
#
#   tools/parity/llama_full.sh [OUT_DIR]
#
# Needs a Python with torch, transformers and safetensors ($PYTHON, default
# /work/venv-ref/bin/python) and ~4 GB of memory. PROFILE=release builds the example in
# release mode (default: dev, whose dependencies are already optimised). The comparison is
# the example `llama_parity`:
#   cargo run -p cielr-planner --example llama_parity -- CHECKPOINT_DIR REFERENCE [TOL]
# Exit status 1 when the errors exceed the tolerance or the greedy tokens differ.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-$(mktemp -d)}
PY=${PYTHON:-/work/venv-ref/bin/python}
PROFILE=${PROFILE:-dev}
"$PY" tools/parity/llama.py full "$OUT" 2>/dev/null
cargo run --profile "$PROFILE" -p cielr-planner --example llama_parity -- \
  "$OUT/qwen2.5-0.5b-random" "$OUT/qwen2.5-0.5b-random/reference.safetensors" 1e-4
