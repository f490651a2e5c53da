#!/usr/bin/env bash
# End-to-end check of the LPIPS weights path a user takes (not run by `cargo test`):
# torchvision-format SqueezeNet 1.1 checkpoint (.pth) + the lpips package's squeeze heads
#   -> tools/eval/convert_lpips.py -> safetensors -> cielr_eval::lpips (example `lpips_file`)
# compared with torchmetrics' LPIPS using the same .pth.
# torchvision cannot download the real ImageNet weights here, so the .pth holds torchvision's
# own random initialisation (torch.manual_seed(0)); pass a real squeezenet1_1-b8a52dc0.pth as
# $1 to check with the real weights.
# Needs /work/venv-lpips (torchvision + lpips on top of /work/venv-ref; see lpips_reference.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-/work/venv-lpips/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PTH=${1:-$TMP/squeezenet1_1-random.pth}
cd "$ROOT"

if [ -z "${1:-}" ]; then
  "$PY" -c "
import torch, torchvision
torch.manual_seed(0)
torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), '$PTH')
"
fi
HEADS=$("$PY" -c "import lpips, os; print(os.path.join(os.path.dirname(lpips.__file__), 'weights/v0.1/squeeze.pth'))")
"$PY" tools/eval/convert_lpips.py --squeezenet "$PTH" --heads "$HEADS" --out "$TMP/lpips.safetensors"

FIX=crates/cielr-eval/tests/fixtures
cargo build -q -p cielr-eval --example lpips_file
BIN=target/debug/examples/lpips_file
status=0
for case in "coffee 512 masked" "chelsea 256 unmasked" "astronaut 256 masked"; do
  set -- $case
  name=$1 size=$2 kind=$3
  mask=$FIX/${name}_mask.png
  [ "$kind" = unmasked ] && mask=-
  ours=$("$BIN" "$TMP/lpips.safetensors" "$FIX/${name}_orig.png" "$FIX/${name}_edited.png" "$mask" "$size")
  "$PY" - "$PTH" "$name" "$size" "$kind" "$ours" <<'PYEOF' || status=1
import json, sys
import numpy as np, torch, torchvision
sys.path.insert(0, "tools/eval")
import lpips_reference as ref
import torchmetrics.functional.image.lpips as tm
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

pth, name, size, kind, ours = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
torch.set_grad_enabled(False)
model = torchvision.models.squeezenet1_1(weights=None)
model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
tm._get_tv_model_features = lambda net, pretrained=False: model.features
metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=False)
o, e, m = ref.prepare(name, size, kind == "masked")
metric.update(2 * e - 1, 2 * o - 1)
want = float(metric.compute())
spatial = tm._LPIPS(net="squeeze", spatial=True, pnet_rand=True).eval()
clean = float(spatial(2 * e - 1, 2 * o - 1)[0, 0][m == 0].double().mean())
rel = abs(ours["lpips"] - want) / want
rel_c = abs(ours["clean_lpips"] - clean) / clean
print(f"{name}@{size} {kind}: ours {ours['lpips']:.9e} torchmetrics {want:.9e} rel {rel:.1e}; "
      f"clean ours {ours['clean_lpips']:.9e} ref {clean:.9e} rel {rel_c:.1e}")
sys.exit(0 if rel < 1e-4 and rel_c < 1e-4 else 1)
PYEOF
done
[ $status = 0 ] && echo "OK: converter + loader match torchmetrics" || echo "FAILED"
exit $status
