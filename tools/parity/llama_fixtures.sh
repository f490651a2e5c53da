#!/usr/bin/env bash
# Regenerates the committed tiny fixtures of the Llama parity tests
# (crates/cielr-planner/tests/fixtures/llama-tiny-*): checkpoints and reference logits from
# transformers (llama.py), and the GGUF copies of two of them (llama_gguf.py). Deterministic.
# Needs a Python with torch, transformers, safetensors, numpy and gguf ($PYTHON, default
# /work/venv-ref/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/work/venv-ref/bin/python}
F=crates/cielr-planner/tests/fixtures
"$PY" tools/parity/llama.py tiny "$F" 2>/dev/null
"$PY" tools/parity/llama.py batch "$F" 2>/dev/null
for m in llama3 qwen3; do
  "$PY" tools/parity/llama_gguf.py "$F/llama-tiny-$m" "$F/llama-tiny-$m/model.gguf"
  chmod 644 "$F/llama-tiny-$m/model.gguf"
done
