#!/usr/bin/env python3
"""Writes cielr-eval's LPIPS (SqueezeNet) weights file from the two official downloads.

Inputs (the user's downloads; nothing is fetched here):
  --squeezenet  torchvision's ImageNet SqueezeNet 1.1, `squeezenet1_1-b8a52dc0.pth`
                (https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth, also what
                `torchvision.models.squeezenet1_1(weights="DEFAULT")` caches under
                ~/.cache/torch/hub/checkpoints/). Only its `features.*` tensors are kept.
  --heads       the LPIPS v0.1 linear heads, `weights/v0.1/squeeze.pth` inside the `lpips`
                PyPI package (torchmetrics ships an identical copy as
                torchmetrics/functional/image/lpips_models/squeeze.pth). Default: the
                installed lpips package's file, else torchmetrics'.

Output (--out, default lpips_squeeze.safetensors): one safetensors file, f32, with
  features.0.{weight,bias}                                   [64, 3, 3, 3], [64]
  features.{i}.{squeeze,expand1x1,expand3x3}.{weight,bias}   i in 3,4,6,7,9,10,11,12
  lin{k}.weight                                              [1, C_k, 1, 1], k = 0..6
which `cielr_eval::lpips::LpipsSqueeze::from_file` (and the `Lpips` metric) loads.

Needs torch and safetensors only (e.g. /work/venv-ref/bin/python).
Usage: convert_lpips.py --squeezenet squeezenet1_1-b8a52dc0.pth [--heads squeeze.pth] --out lpips_squeeze.safetensors
"""
import argparse
import hashlib
import importlib.util
import os
import sys

import torch
from safetensors.torch import save_file

CHANNELS = [64, 128, 256, 384, 384, 512, 512]
FIRES = [(3, 64, 16, 64), (4, 128, 16, 64), (6, 128, 32, 128), (7, 256, 32, 128),
         (9, 256, 48, 192), (10, 384, 48, 192), (11, 384, 64, 256), (12, 512, 64, 256)]
TORCHVISION_SHA256_PREFIX = "b8a52dc0"  # torchvision names its files by the hash's prefix


def expected_features():
    shapes = {"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,)}
    for i, cin, sq, ex in FIRES:
        for name, ci, co, k in (("squeeze", cin, sq, 1), ("expand1x1", sq, ex, 1), ("expand3x3", sq, ex, 3)):
            shapes[f"features.{i}.{name}.weight"] = (co, ci, k, k)
            shapes[f"features.{i}.{name}.bias"] = (co,)
    return shapes


def default_heads():
    for module, rel in (("lpips", ("weights", "v0.1", "squeeze.pth")),
                        ("torchmetrics", ("functional", "image", "lpips_models", "squeeze.pth"))):
        spec = importlib.util.find_spec(module)
        if spec and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), *rel)
            if os.path.exists(path):
                return path
    sys.exit("no --heads given and neither lpips nor torchmetrics is installed")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squeezenet", required=True)
    ap.add_argument("--heads")
    ap.add_argument("--out", default="lpips_squeeze.safetensors")
    args = ap.parse_args()
    heads_path = args.heads or default_heads()

    digest = sha256(args.squeezenet)
    if not digest.startswith(TORCHVISION_SHA256_PREFIX):
        print(f"warning: {args.squeezenet} has SHA-256 {digest}, not torchvision's "
              f"squeezenet1_1-{TORCHVISION_SHA256_PREFIX} (fine for random test weights)", file=sys.stderr)
    sd = torch.load(args.squeezenet, map_location="cpu", weights_only=True)
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    out = {}
    for name, shape in expected_features().items():
        if name not in sd:
            sys.exit(f"{args.squeezenet}: tensor {name} is missing (is this squeezenet1_1?)")
        if tuple(sd[name].shape) != shape:
            sys.exit(f"{args.squeezenet}: tensor {name} has shape {tuple(sd[name].shape)}, expected {shape}")
        out[name] = sd[name].float().contiguous()

    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    for k, c in enumerate(CHANNELS):
        key = f"lin{k}.model.1.weight"
        if key not in heads:
            sys.exit(f"{heads_path}: tensor {key} is missing (is this lpips' squeeze.pth?)")
        if tuple(heads[key].shape) != (1, c, 1, 1):
            sys.exit(f"{heads_path}: tensor {key} has shape {tuple(heads[key].shape)}, expected (1, {c}, 1, 1)")
        out[f"lin{k}.weight"] = heads[key].float().contiguous()

    save_file(out, args.out, metadata={
        "format": "cielr-lpips-squeeze-v1",
        "squeezenet_sha256": digest,
        "heads_sha256": sha256(heads_path),
    })
    print(f"wrote {args.out}: {len(out)} tensors")


if __name__ == "__main__":
    main()
