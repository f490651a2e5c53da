"""Writes assets/coffee.ssr.json: a hand-made SSR of scikit-image's `coffee` photo (CC0, Rachel
Michetti), with masks drawn as ellipses and polygons over the visible objects. It stands in
for a perception model in the demo and the tests until a detector is the default.

Run: python tools/demo/coffee_ssr.py   (needs numpy, pillow and pycocotools from PyPI)
"""
import json
import pathlib

import numpy as np
import pycocotools.mask as coco_mask
from PIL import Image, ImageDraw

ROOT = pathlib.Path(__file__).resolve().parents[2]
W, H = 600, 400


def canvas():
    return Image.new("L", (W, H), 0)


def spoon():
    im = canvas()
    d = ImageDraw.Draw(im)
    d.ellipse([326, 240, 406, 326], fill=255)  # bowl
    d.polygon([(370, 246), (388, 246), (424, 72), (412, 64), (398, 70)], fill=255)  # handle
    return np.array(im) > 0


def cup():
    im = canvas()
    d = ImageDraw.Draw(im)
    d.ellipse([172, 16, 410, 206], fill=255)  # rim
    d.polygon([(176, 120), (406, 120), (392, 210), (350, 262), (300, 282), (250, 276), (206, 240), (182, 180)], fill=255)
    d.ellipse([194, 228, 262, 306], fill=255)  # handle
    return np.array(im) > 0


def saucer(exclude):
    im = canvas()
    ImageDraw.Draw(im).ellipse([76, 70, 480, 392], fill=255)
    return (np.array(im) > 0) & ~exclude


def entry(i, label, m, depth):
    rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
    x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    return {
        "id": i,
        "label": label,
        "bbox": [x, y, x + w, y + h],
        "depth": depth,
        "mask": {"size": [H, W], "counts": rle["counts"].decode()},
        "attributes": {"source": "hand-drawn"},
    }


def main():
    s, c = spoon(), cup()
    c = c & ~s
    sa = saucer(s | c)
    table = ~(s | c | sa)
    objects = [entry(0, "cup", c, 0.62), entry(1, "saucer", sa, 0.55), entry(2, "spoon", s, 0.66), entry(3, "table", table, 0.3)]
    scene = {"width": W, "height": H, "depth_source": "hand-estimated", "objects": objects}
    out = ROOT / "assets/coffee.ssr.json"
    out.write_text(json.dumps(scene, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
