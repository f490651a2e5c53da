#!/usr/bin/env bash
# Language-model speed on the CPU, side by side in one run: cielr-planner's Burn decoder
# (examples/llm_bench.rs, release build; once with every weight dequantised to f32, once with
# decode steps reading the block-quantised matrices as stored, `--quant`, what `LocalLlm` does
# on the CPU), PyTorch transformers on the same weights dequantised to float32, and llama.cpp
# (llama-cpp-python) on the same GGUF.
#
#   tools/bench/llm.sh [MODEL.gguf]
#
# MODEL.gguf defaults to the cached SmolLM2-135M-Instruct GGUF ($CIELR_SMOLLM2_GGUF, else
# $CIELR_CACHE or ~/.cache/cielr; tools/setup-models.sh fetches it).
# Environment: THREADS (2), PROMPT_LEN (128), DECODE (64), REPEATS (5), WARMUP (1),
#   TORCH_PY (/work/venv-ref/bin/python: torch, transformers, gguf),
#   LLAMACPP_PY (/work/venv-llamacpp/bin/python: llama-cpp-python; built from source with
#   CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python),
#   NICE_LEVEL (-15: as root, the timed runs get priority over other work on the machine),
#   OMP_WAIT_POLICY (PASSIVE), NO_BUILD (1: use target/release/examples/llm_bench as built),
#   SPLIT (0; 1: also time ours with the decode step's projections split across the threads,
#   `--split THREADS`), OUT (a folder for the JSON results; a temporary one by default).
# Every implementation gets the same thread count, the same synthetic prompt ids, a warm-up
# and the median of REPEATS runs; they run one after the other, never at the same time.
# Prints a table with tokens/s and the ratios ours/transformers and ours/llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
PROMPT_LEN=${PROMPT_LEN:-128}
DECODE=${DECODE:-64}
REPEATS=${REPEATS:-5}
WARMUP=${WARMUP:-1}
TORCH_PY=${TORCH_PY:-/work/venv-ref/bin/python}
LLAMACPP_PY=${LLAMACPP_PY:-/work/venv-llamacpp/bin/python}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

if [ $# -ge 1 ]; then
  MODEL=$1
elif [ -n "${CIELR_SMOLLM2_GGUF:-}" ]; then
  MODEL=$CIELR_SMOLLM2_GGUF
else
  MODEL=${CIELR_CACHE:-$HOME/.cache/cielr}/SmolLM2-135M-Instruct.Q4_1.gguf
fi
[ -f "$MODEL" ] || { echo "model not found: $MODEL (run tools/setup-models.sh)" >&2; exit 2; }

# On a shared machine, run the timed processes ahead of everything else (root only).
NICE=()
if [ "$(id -u)" = 0 ] && [ "${NICE_LEVEL:--15}" != 0 ]; then NICE=(nice -n "${NICE_LEVEL:--15}"); fi
ARGS=(--prompt-len "$PROMPT_LEN" --decode "$DECODE" --repeats "$REPEATS" --warmup "$WARMUP")
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# OpenMP threads (torch, llama.cpp) sleep instead of spinning when they wait: spinning
# collapses their speed whenever the cores are shared.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --example llm_bench
echo "== cielr (Burn flex CPU, f32 weights) ==" >&2
"${NICE[@]}" target/release/examples/llm_bench "$MODEL" "${ARGS[@]}" | tail -n 1 | tee "$OUT/cielr.json"
echo "== cielr (Burn flex CPU, decode with the GGUF's quantised matrices as stored) ==" >&2
"${NICE[@]}" target/release/examples/llm_bench "$MODEL" "${ARGS[@]}" --quant | tail -n 1 \
  | tee "$OUT/cielr_quant.json"
if [ "${SPLIT:-0}" = 1 ]; then
  echo "== cielr, single-row projections split across $THREADS threads (--split $THREADS) ==" >&2
  "${NICE[@]}" target/release/examples/llm_bench "$MODEL" "${ARGS[@]}" --split "$THREADS" \
    | tail -n 1 | tee "$OUT/cielr_split.json"
fi
echo "== transformers (torch, f32 weights) ==" >&2
"${NICE[@]}" "$TORCH_PY" tools/bench/llm_ref.py torch "$MODEL" --threads "$THREADS" "${ARGS[@]}" \
  2>"$OUT/torch.err" | tail -n 1 | tee "$OUT/torch.json"
echo "== llama.cpp (llama-cpp-python, GGUF as stored) ==" >&2
if "$LLAMACPP_PY" -c "import llama_cpp" 2>/dev/null; then
  "${NICE[@]}" "$LLAMACPP_PY" tools/bench/llm_ref.py llamacpp "$MODEL" --threads "$THREADS" "${ARGS[@]}" \
    2>"$OUT/llamacpp.err" | tail -n 1 | tee "$OUT/llamacpp.json"
  # On a quiet machine llama.cpp's threads are ~3x faster spinning (measured: decode 157-169
  # vs 49 tokens/s); under load spinning collapses. Run both; ratios use the faster.
  echo "== llama.cpp, OMP_WAIT_POLICY=ACTIVE ==" >&2
  OMP_WAIT_POLICY=ACTIVE "${NICE[@]}" "$LLAMACPP_PY" tools/bench/llm_ref.py llamacpp "$MODEL" \
    --threads "$THREADS" "${ARGS[@]}" 2>"$OUT/llamacpp_active.err" | tail -n 1 \
    | tee "$OUT/llamacpp_active.json"
else
  echo "llama-cpp-python is not installed in $LLAMACPP_PY: llama.cpp column left out" >&2
  rm -f "$OUT/llamacpp.json"
fi

python3 - "$OUT" "$MODEL" <<'PYEOF'
import json, pathlib, platform, subprocess, sys, datetime
out, model = pathlib.Path(sys.argv[1]), sys.argv[2]
rows = {}
for key in ("cielr", "cielr_quant", "cielr_split", "torch", "llamacpp", "llamacpp_active"):
    f = out / f"{key}.json"
    if f.exists() and f.read_text().strip():
        rows[key] = json.loads(f.read_text().strip().splitlines()[-1])
        rows[key]["impl"] += {"llamacpp": " [OMP passive]", "llamacpp_active": " [OMP active]"}.get(key, "")
# The ratio to llama.cpp uses its faster wait policy (by median decode speed).
fast = max((rows[k] for k in ("llamacpp", "llamacpp_active") if k in rows),
           key=lambda r: r["decode_tokens_per_s"], default=None)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"\nmodel {model}\nCPU {cpu}, {len(rows)} implementations, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC")
load = open("/proc/loadavg").read().split()[:3]
print(f"load average at the end {' '.join(load)} (other processes skew every number; best-of in brackets)")
print(f"{'implementation':78} {'threads':>7} {'prefill tok/s':>20} {'decode tok/s':>18}")
for r in rows.values():
    pf = f"{r['prefill_tokens_per_s']:.1f} ({r.get('prefill_best_tokens_per_s', 0):.1f})"
    dc = f"{r['decode_tokens_per_s']:.1f} ({r.get('decode_best_tokens_per_s', 0):.1f})"
    print(f"{r['impl'][:78]:78} {r['threads']!s:>7} {pf:>20} {dc:>18}")
for mine, label in (("cielr", "cielr f32"), ("cielr_quant", "cielr as stored")):
    ours = rows.get(mine)
    if not ours:
        continue
    for t, name in ((rows.get("torch"), "transformers"), (fast, "llama.cpp (faster policy)")):
        if t:
            r = lambda k: ours[k] / t[k] if t.get(k) else float("nan")
            print(f"ratio {label}/{name}: prefill {r('prefill_tokens_per_s'):.2f}x "
                  f"(best {r('prefill_best_tokens_per_s'):.2f}x), "
                  f"decode {r('decode_tokens_per_s'):.2f}x (best {r('decode_best_tokens_per_s'):.2f}x)")
(out / "summary.json").write_text(json.dumps(rows, indent=1))
PYEOF
echo "results in $OUT" >&2
