"""Pillow resize reference for `crates/cielr-scene/tests/pillow_resize.rs`.

Pillow (13 here) runs the vertical pass first when the height shrinks much more than the
width; these cases cover both orders for the filters the ports use. Writes
crates/cielr-scene/tests/fixtures/pillow-resize/cases.json (input and outputs as base64 of
raw RGB bytes).

    /work/venv-ref/bin/python tools/parity/pillow_resize.py
"""
import base64
import json
import pathlib

import numpy as np
import PIL
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/cielr-scene/tests/fixtures/pillow-resize"
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}


def main():
    rng = np.random.default_rng(7)
    w, h = 37, 61
    # A smooth gradient plus noise, so both pass orders give different bytes.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 255 / (w + h)], -1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    shapes = [(30, 11), (36, 20), (33, 40), (20, 50), (50, 9), (12, 60), (40, 70), (18, 5)]
    cases = []
    for name, flt in FILTERS.items():
        for ow, oh in shapes:
            out = np.asarray(image.resize((ow, oh), flt))
            vertical_first = oh < h and (h - oh) > 2 * (w - ow)
            cases.append({
                "filter": name,
                "width": ow,
                "height": oh,
                "vertical_first": bool(vertical_first),
                "rgb": base64.b64encode(out.tobytes()).decode(),
            })
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "pillow": PIL.__version__,
        "input": {"width": w, "height": h, "rgb": base64.b64encode(pixels.tobytes()).decode()},
        "cases": cases,
    }
    (OUT / "cases.json").write_text(json.dumps(doc))
    print(f"{len(cases)} cases, {sum(c['vertical_first'] for c in cases)} vertical-first")


if __name__ == "__main__":
    main()
