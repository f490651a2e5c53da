#!/usr/bin/env python3
"""Reference numbers for cielr-eval's LPIPS (SqueezeNet) parity test.

Backbone: torchvision's squeezenet1_1 `features` with the deterministic random weights of
`lpips_prng.py` (torchvision cannot download the real ImageNet weights on this machine; the
parity of the port does not depend on them). Heads: the real LPIPS v0.1 squeeze linear heads,
as shipped by the `lpips` package (`lpips/weights/v0.1/squeeze.pth`, BSD-2-Clause; torchmetrics
ships an identical copy), saved as `heads.safetensors` under the names of
`convert_lpips.py` (`lin{k}.weight`, shape [1, C, 1, 1]).

For each real-photo triple of crates/cielr-eval/tests/fixtures (written by
metrics_reference.py) the protocol's preparation is applied (bicubic resize to 512 or 256,
w = 1 - mask / 255, both images multiplied by w), and torchmetrics'
`LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=False)` is computed on
the images scaled to [-1, 1] (`2 x - 1`). The `lpips` package's `LPIPS(net="squeeze")` with
the same weights is run as a cross-check. The clean variant is the mean of LPIPS' spatial
map (`spatial=True`: each layer's head output bilinearly upsampled to the input size, summed)
over the pixels whose resized mask is 0.

Needs torchvision and lpips next to torchmetrics: /work/venv-lpips (a venv that adds
torchvision 0.29.2 and lpips 0.1.4, both --no-deps, on top of /work/venv-ref's packages).
Usage: /work/venv-lpips/bin/python tools/eval/lpips_reference.py
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lpips_prng  # noqa: E402
import metrics_reference  # noqa: E402

import torchvision  # noqa: E402
import torchmetrics.functional.image.lpips as tm_lpips  # noqa: E402
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "crates", "cielr-eval", "tests", "fixtures", "lpips_squeeze")
# (photo triple, protocol size, whether the mask is applied); the unmasked case has a large
# distance (the whole edit is visible), the masked ones the protocol's small one.
CASES = [("coffee", 512, True), ("astronaut", 256, True), ("chelsea", 256, False)]


def prepare(name, size, masked):
    o, e, m = metrics_reference.prepare(name, size)
    if masked:
        return o, e, m
    # The same resize without the weighting: divide nothing, recompute from the PNGs.
    w = torch.ones_like(m)
    img = lambda suffix: metrics_reference_img(name, suffix, size)  # noqa: E731
    return img("orig") * w, img("edited") * w, torch.zeros_like(m)


def metrics_reference_img(name, suffix, size):
    from PIL import Image
    import torch.nn.functional as F

    path = os.path.join(metrics_reference.OUT, f"{name}_{suffix}.png")
    a = np.asarray(Image.open(path).convert("RGB"))
    t = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    return t.clamp(0.0, 1.0)


def random_squeezenet():
    model = torchvision.models.squeezenet1_1(weights=None)
    sd = {k: torch.from_numpy(v) for k, v in lpips_prng.state_dict().items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("classifier") for k in missing), missing
    return model.eval()


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_grad_enabled(False)
    backbone = random_squeezenet()
    # torchmetrics asks torchvision for pretrained weights; hand it the random ones instead.
    tm_lpips._get_tv_model_features = lambda net, pretrained=False: backbone.features
    metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze", normalize=False)
    net = metric.net
    spatial = tm_lpips._LPIPS(net="squeeze", spatial=True, pnet_rand=True).eval()
    spatial.net.load_state_dict(net.net.state_dict())

    import lpips  # the original package, as a cross-check

    ref_pkg = lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).eval()
    prng = lpips_prng.state_dict()
    ref_pkg.net.load_state_dict(
        {k: torch.from_numpy(prng["features." + k.split(".", 1)[1]]) for k in ref_pkg.net.state_dict()}
    )

    heads_path = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "squeeze.pth")
    heads = torch.load(heads_path, map_location="cpu")
    save_file(
        {f"lin{k}.weight": heads[f"lin{k}.model.1.weight"].float().contiguous() for k in range(7)},
        os.path.join(OUT, "heads.safetensors"),
        metadata={"source": "lpips 0.1.4 weights/v0.1/squeeze.pth (BSD-2-Clause)"},
    )
    os.chmod(os.path.join(OUT, "heads.safetensors"), 0o644)
    for k in range(7):
        assert torch.equal(heads[f"lin{k}.model.1.weight"], net.lins[k].model[-1].weight)

    refs = []
    for name, size, masked in CASES:
        o, e, m = prepare(name, size, masked)
        a, b = 2 * e - 1, 2 * o - 1
        metric.reset()
        metric.update(a, b)
        value = float(metric.compute())
        val, layers = net(a, b, retperlayer=True)
        pkg = float(ref_pkg(a, b))
        smap = spatial(a, b)[0, 0]
        keep = m == 0
        clean = float(smap[keep].double().mean())
        refs.append(
            {
                "name": name,
                "size": size,
                "masked": masked,
                "lpips": value,
                "layers": [float(x) for x in layers],
                "lpips_package": pkg,
                "clean_lpips": clean,
                "spatial_mean": float(smap.double().mean()),
            }
        )
        print(refs[-1])
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        sd = lpips_prng.state_dict()
        check = {
            "features.0.weight[:4]": [float(x) for x in sd["features.0.weight"].ravel()[:4]],
            "features.12.expand3x3.bias[-3:]": [float(x) for x in sd["features.12.expand3x3.bias"][-3:]],
            "sum_abs": float(sum(np.abs(v).astype(np.float64).sum() for v in sd.values())),
        }
        json.dump({"prng_seed": lpips_prng.SEED, "prng_check": check, "cases": refs}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
