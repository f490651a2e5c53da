#!/usr/bin/env bash
# GPU check harness (issue 8): for each model, the reference library builds random weights
# from a fixed seed and inputs at run time (tools/gpu/ref.py), runs and times the reference on
# DEVICE in f32 and half precision, then our release binary (examples/gpu_check.rs) runs the
# same weights and inputs on the same DEVICE; ends with one table (tools/gpu/table.py).
#
# Usage: tools/gpu/check.sh [--device cpu|cuda] [--size reduced|full] [--only a,b,...]
#                           [--repeats N] [--out DIR] [--bin PATH]
#   models: llm clip owlv2 sam depth unet vae lama (default: all, in that order)
#   --bin   our binary (default: target/gpu-carry/gpu_check if present, else
#           target/release/examples/gpu_check, built if missing)
#   --out   work folder (default: /tmp/cielr-gpu-check; checkpoints at full size need ~12 GB)
# Environment: PYTHON (default: python3, or /work/venv-diff/bin/python where it exists: torch,
#   transformers 5, diffusers 0.42, safetensors, PyYAML), LAMA_REPO (LaMa sources; default
#   target/gpu-carry/lama-src if present, see tools/gpu/prepare.sh), MODEL_TIMEOUT (seconds per
#   model and side, default 300).
# Exit status: 0 when every model ran and every f32 row is within tolerance, 1 otherwise.
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
device=cpu size=reduced only="" repeats=5 out=/tmp/cielr-gpu-check bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --size) size="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$device" in cpu|cuda) ;; *) echo "--device cpu|cuda" >&2; exit 2 ;; esac
case "$size" in reduced|full) ;; *) echo "--size reduced|full" >&2; exit 2 ;; esac
models="${only//,/ }"
[ -n "$models" ] || models="llm clip owlv2 sam depth unet vae lama"

if [ -z "${PYTHON:-}" ]; then
    if [ -x /work/venv-diff/bin/python ]; then PYTHON=/work/venv-diff/bin/python; else PYTHON=python3; fi
fi
if [ -z "$bin" ]; then
    if [ -x target/gpu-carry/gpu_check ]; then bin=target/gpu-carry/gpu_check
    else
        bin=target/release/examples/gpu_check
        if [ ! -x "$bin" ]; then
            echo "== building $bin"
            cargo build --release --example gpu_check || exit 2
        fi
    fi
fi
if [ -z "${LAMA_REPO:-}" ] && [ -d target/gpu-carry/lama-src ]; then
    export LAMA_REPO="$repo/target/gpu-carry/lama-src"
fi
# Carried wheels (diffusers) when the interpreter lacks them: see tools/gpu/README.md.
if ! "$PYTHON" -c "import diffusers" 2>/dev/null && ls target/gpu-carry/wheels/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/cielr-site target/gpu-carry/wheels/*.whl && export PYTHONPATH="/tmp/cielr-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# On a shared CPU, OpenMP's spinning workers make torch's timings erratic.
[ "$device" = cpu ] && export OMP_WAIT_POLICY=PASSIVE
tmo="${MODEL_TIMEOUT:-300}"
mkdir -p "$out"
echo "== gpu check: device $device, size $size, models: $models, repeats $repeats"
echo "== python $("$PYTHON" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
echo "== ours $bin ($(du -h "$bin" | cut -f1))"
[ "$device" = cuda ] && command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
start=$SECONDS
dirs=()
for m in $models; do
    d="$out/$size-$m"
    rm -rf "$d"; mkdir -p "$d"
    dirs+=("$d")
    t0=$SECONDS
    echo "== $m: reference"
    if ! timeout "$tmo" "$PYTHON" tools/gpu/ref.py "$m" "$size" "$device" "$d" "$repeats" > "$d/torch.log" 2>&1; then
        echo "reference failed (see $d/torch.log):"; tail -5 "$d/torch.log"
        echo "reference failed: $(tail -1 "$d/torch.log")" > "$d/failed"
        continue
    fi
    grep '^\[torch\]' "$d/torch.log"
    echo "== $m: ours"
    if ! timeout "$tmo" "$bin" "$m" "$d" --device "$device" --repeats "$repeats" > "$d/ours.log" 2>&1; then
        echo "ours failed (see $d/ours.log):"; tail -5 "$d/ours.log"
        echo "ours failed: $(tail -1 "$d/ours.log")" > "$d/failed"
        continue
    fi
    cat "$d/ours.log"
    # The checkpoint is not needed any more: keep the disk free at full size.
    find "$d" -name '*.safetensors' ! -name reference.safetensors ! -name inputs.safetensors -delete
    echo "== $m done in $((SECONDS - t0)) s"
done
echo "== total $((SECONDS - start)) s"
"$PYTHON" tools/gpu/table.py "$device" "$size" "${dirs[@]}" | tee "$out/table-$device-$size.md"
