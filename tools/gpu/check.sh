#!/usr/bin/env bash
# GPU check harness (issue 8): for each model, the reference library builds random weights
# from a fixed seed and inputs at run time (tools/gpu/ref.py), runs and times the reference on
# DEVICE in f32 and half precision, then our release binary (examples/gpu_check.rs) runs the
# same weights and inputs on the same DEVICE; ends with one table (tools/gpu/table.py).
#
# Usage: tools/gpu/check.sh [--device cpu|cuda] [--size reduced|full] [--only a,b,...]
#                           [--repeats N] [--out DIR] [--bin PATH] [--no-half]
#   models: llm clip owlv2 sam sam-decoder depth unet vae lama sd-inpaint e2e (default: all,
#           in that order; sd-inpaint is the whole 20-step inpainting pipeline against
#           diffusers; e2e is the time-only end-to-end edit, see tools/gpu/README.md)
#   --no-half  skip our half-precision runs (by default each model runs a second time in half
#           precision: f16 on CUDA, bf16 on CPU, the dtype torch's half rows use; e2e runs
#           in bf16 everywhere, its torch side is timed in f32 only)
#   --bin   our binary (default: with --device cuda target/gpu-carry/gpu_check if present,
#           else target/release/examples/gpu_check, built if missing)
#   --out   work folder (default: /tmp/cielr-gpu-check; checkpoints at full size need ~12 GB)
# Environment: PYTHON (default: python3, or /work/venv-diff/bin/python where it exists: torch,
#   transformers 5, diffusers 0.42, safetensors, PyYAML), LAMA_REPO (LaMa sources; default
#   target/gpu-carry/lama-src if present, see tools/gpu/prepare.sh), MODEL_TIMEOUT (seconds per
#   model and side, default 300), OURS_ARGS (extra arguments for every run of ours, e.g.
#   `--sd-attention fused` to time Burn's fused attention in the SD rows on CUDA), E2E_TORCH=0
#   (e2e: skip the torch edit), E2E_SEGMENTER=sam2 (e2e: SAM 2.1 hiera-large as the segmenter),
#   OURS_DEVICE (our side's device when it differs from torch's: `wgpu` with a binary built with
#   `--features wgpu-check`, the rehearsal of the GPU code path on the CPU; see the README),
#   HALF_PRECISION (f16 or bf16: our half runs in it, e2e's too, instead of the default).
# Exit status: 0 when every model ran and every f32 row is within tolerance, 1 otherwise.
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
device=cpu size=reduced only="" repeats=5 out=/tmp/cielr-gpu-check bin="" half=1
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --size) size="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --no-half) half=0; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$device" in cpu|cuda) ;; *) echo "--device cpu|cuda" >&2; exit 2 ;; esac
case "$size" in reduced|full) ;; *) echo "--size reduced|full" >&2; exit 2 ;; esac
models="${only//,/ }"
[ -n "$models" ] || models="llm clip owlv2 sam sam-decoder depth unet vae lama sd-inpaint e2e"
if [ "$device" = cuda ]; then halfp=f16; else halfp=bf16; fi
halfp="${HALF_PRECISION:-$halfp}"

if [ -z "${PYTHON:-}" ]; then
    if [ -x /work/venv-diff/bin/python ]; then PYTHON=/work/venv-diff/bin/python; else PYTHON=python3; fi
fi
if [ -z "$bin" ]; then
    # The carried (CUDA) build only for --device cuda: on this machine it may be older than
    # the sources (prepare.sh is run once, before a device session).
    if [ "$device" = cuda ] && [ -x target/gpu-carry/gpu_check ]; then bin=target/gpu-carry/gpu_check
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
# Carried wheels for the modules the interpreter lacks (diffusers and its importlib_metadata;
# segment_anything for e2e's torch side): see tools/gpu/README.md.
wheels=()
if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
    wheels+=(target/gpu-carry/wheels/diffusers-*.whl target/gpu-carry/wheels/importlib_metadata-*.whl)
fi
if ! "$PYTHON" -c "import segment_anything" 2>/dev/null; then
    wheels+=(target/gpu-carry/wheels/segment_anything-*.whl)
fi
present=()
for w in "${wheels[@]}"; do [ -f "$w" ] && present+=("$w"); done
if [ "${#present[@]}" -gt 0 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/cielr-site "${present[@]}" && export PYTHONPATH="/tmp/cielr-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# On a shared CPU, OpenMP's spinning workers make torch's timings erratic.
[ "$device" = cpu ] && export OMP_WAIT_POLICY=PASSIVE
tmo="${MODEL_TIMEOUT:-300}"
ours_device="${OURS_DEVICE:-$device}"
mkdir -p "$out"
echo "== gpu check: device $device, size $size, models: $models, repeats $repeats"
echo "== python $("$PYTHON" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
echo "== ours $bin ($(du -h "$bin" | cut -f1)) on $ours_device"
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
    if ! timeout "$tmo" "$bin" "$m" "$d" --device "$ours_device" --repeats "$repeats" ${OURS_ARGS:-} > "$d/ours.log" 2>&1; then
        echo "ours failed (see $d/ours.log):"; tail -5 "$d/ours.log"
        echo "ours failed: $(tail -1 "$d/ours.log")" > "$d/failed"
        continue
    fi
    cat "$d/ours.log"
    # Ours in half precision (same weights, cast at load): a failure here is a "not run" half
    # row with its reason, not a failed model.
    # e2e has no torch half row to match: it runs in bf16, the half precision users are told
    # to pick (f16 random weights at full size may overflow, which only says so).
    mhalf="$halfp"; [ "$m" = e2e ] && [ -z "${HALF_PRECISION:-}" ] && mhalf=bf16
    if [ "$half" = 1 ]; then
        if timeout "$tmo" "$bin" "$m" "$d" --device "$ours_device" --repeats "$repeats" --precision "$mhalf" ${OURS_ARGS:-} > "$d/ours-half.log" 2>&1; then
            cat "$d/ours-half.log"
        else
            rc=$?
            echo "ours $mhalf failed (see $d/ours-half.log):"; tail -3 "$d/ours-half.log"
            reason="$(grep -m1 -E "error|panicked" "$d/ours-half.log" || tail -1 "$d/ours-half.log")"
            [ "$rc" = 124 ] && reason="timed out after $tmo s"
            echo "$mhalf run failed: $reason" > "$d/ours-half-failed"
        fi
    else
        echo "not run (--no-half)" > "$d/ours-half-failed"
    fi
    # The checkpoint is not needed any more: keep the disk free at full size.
    find "$d" -name '*.safetensors' ! -name reference.safetensors ! -name inputs.safetensors -delete
    echo "== $m done in $((SECONDS - t0)) s"
done
echo "== total $((SECONDS - start)) s"
if [ "$ours_device" = "$device" ]; then
    "$PYTHON" tools/gpu/table.py "$device" "$size" "${dirs[@]}" | tee "$out/table-$device-$size.md"
else
    "$PYTHON" tools/gpu/table.py "$device (ours on $ours_device)" "$size" "${dirs[@]}" \
        | tee "$out/table-$device-ours-$ours_device-$size.md"
fi
