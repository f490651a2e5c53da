#!/usr/bin/env python3
"""Reference numbers for cielr-eval's preservation metrics (PSNR, SSIM, MSE).

Builds a few (original, edited, greyscale mask) triples from real photos, saves them as small
PNGs under crates/cielr-eval/tests/fixtures/, applies the benchmark protocol's preparation and
records torchmetrics' PSNR/SSIM/MSE in crates/cielr-eval/tests/fixtures/reference.json.

Preparation (the documented way, mirrored by `cielr_eval::prepare`):
  * images: uint8 -> float32 / 255, then torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False, antialias=False) to size x size, then clamped to [0, 1];
  * mask: greyscale uint8 -> float32, interpolate(mode="nearest") to size x size;
  * w = 1 - mask / 255 (not thresholded); both images multiplied by w;
  * torchmetrics PSNR(data_range=1.0), SSIM(data_range=1.0; Gaussian 11, sigma 1.5,
    k1 0.01, k2 0.03), MSE.

Usage: /work/venv-ref/bin/python tools/eval/metrics_reference.py
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional import (
    mean_squared_error,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "cielr-eval", "tests", "fixtures")
SKIMAGE = "/work/venv/lib/python3.11/site-packages/skimage/data"


def load_small(path, w, h):
    im = Image.open(path).convert("RGB")
    return np.asarray(im.resize((w, h), Image.LANCZOS), dtype=np.uint8).copy()


def make_case(name, src, w, h, seed, box):
    rng = np.random.default_rng(seed)
    orig = load_small(src, w, h)
    edited = orig.astype(np.int32).copy()
    x0, y0, x1, y1 = box
    # a local edit: a recoloured, noisy patch plus a faint global change (JPEG-like noise)
    edited[y0:y1, x0:x1] = (
        edited[y0:y1, x0:x1][..., ::-1] // 2 + 60 + rng.integers(-20, 20, (y1 - y0, x1 - x0, 3))
    )
    edited += rng.integers(-2, 3, edited.shape)
    edited = np.clip(edited, 0, 255).astype(np.uint8)
    # greyscale mask: 255 inside, a soft border, compression-like noise outside
    yy, xx = np.mgrid[0:h, 0:w]
    dx = np.maximum(np.maximum(x0 - xx, xx - (x1 - 1)), 0)
    dy = np.maximum(np.maximum(y0 - yy, yy - (y1 - 1)), 0)
    d = np.sqrt(dx**2 + dy**2)
    mask = np.clip(255 - d * 60, 0, 255)
    noise = (rng.random((h, w)) < 0.05) * rng.integers(1, 25, (h, w))
    mask = np.clip(mask + noise, 0, 255).astype(np.uint8)
    for suffix, arr in (("orig", orig), ("edited", edited), ("mask", mask)):
        Image.fromarray(arr).save(os.path.join(OUT, f"{name}_{suffix}.png"), optimize=True)


def prepare(name, size):
    def img(suffix):
        a = np.asarray(Image.open(os.path.join(OUT, f"{name}_{suffix}.png")).convert("RGB"))
        t = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
        return t.clamp(0.0, 1.0)

    m = np.asarray(Image.open(os.path.join(OUT, f"{name}_mask.png")).convert("L"))
    m = torch.from_numpy(m.astype(np.float32))[None, None]
    m = F.interpolate(m, size=(size, size), mode="nearest")
    w = 1.0 - m / 255.0
    return img("orig") * w, img("edited") * w, m[0, 0]


def clean_scores(o, e, m):
    """The clean variant: MSE/PSNR over pixels with mask == 0; SSIM averaged over the
    torchmetrics SSIM map at centres whose 11x11 window (clipped to the image) holds only
    mask == 0 pixels."""
    keep = m == 0
    d2 = ((e - o) ** 2)[0][:, keep]
    mse = float(d2.double().mean())
    psnr = float(10.0 * np.log10(1.0 / mse))
    _, full = structural_similarity_index_measure(e, o, data_range=1.0, return_full_image=True)
    masked = (m > 0).float()[None, None]
    near = F.max_pool2d(masked, kernel_size=11, stride=1, padding=5)[0, 0]
    valid = near == 0
    ssim = float(full[0][:, valid].double().mean())
    return psnr, ssim, mse


def main():
    cases = [
        ("coffee", "/work/main/assets/coffee.png", 120, 90, 1, (30, 20, 70, 60), 128),
        ("astronaut", f"{SKIMAGE}/astronaut.png", 100, 100, 2, (55, 10, 90, 45), 256),
        ("chelsea", f"{SKIMAGE}/chelsea.png", 160, 106, 3, (60, 30, 110, 80), 96),
    ]
    refs = []
    for name, src, w, h, seed, box, size in cases:
        make_case(name, src, w, h, seed, box)
        o, e, m = prepare(name, size)
        cp, cs, cm = clean_scores(o, e, m)
        refs.append(
            {
                "name": name,
                "size": size,
                "psnr": float(peak_signal_noise_ratio(e, o, data_range=1.0)),
                "ssim": float(structural_similarity_index_measure(e, o, data_range=1.0)),
                "mse": float(mean_squared_error(e, o)),
                "clean_psnr": cp,
                "clean_ssim": cs,
                "clean_mse": cm,
            }
        )
        print(refs[-1])
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(refs, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
