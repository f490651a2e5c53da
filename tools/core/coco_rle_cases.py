"""Writes crates/cielr-core/tests/data/coco_rle_cases.json: random and structured binary masks
with the compressed RLE strings that pycocotools (the reference) produces for them.

Run: python tools/core/coco_rle_cases.py   (needs numpy and pycocotools from PyPI)
"""
import json
import pathlib

import numpy as np
import pycocotools.mask as coco_mask

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/cielr-core/tests/data/coco_rle_cases.json"


def case(m):
    rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
    return {
        "height": int(m.shape[0]),
        "width": int(m.shape[1]),
        "rows": ["".join(str(int(v)) for v in row) for row in m],
        "counts": rle["counts"].decode(),
        "area": int(coco_mask.area(rle)),
        "bbox_xywh": [float(v) for v in coco_mask.toBbox(rle)],
    }


def main():
    rng = np.random.default_rng(0)
    cases = [case(rng.random((h, w)) < p) for h, w, p in
             [(3, 4, 0.5), (7, 13, 0.3), (20, 31, 0.1), (64, 48, 0.9), (5, 5, 0.0), (5, 5, 1.0)]]
    blob = np.zeros((40, 60), bool)
    blob[10:30, 5:50] = True
    blob[15:20, 20:25] = False
    cases.append(case(blob))
    # Long runs exercise multi-character counts and negative deltas.
    big = np.zeros((300, 200), bool)
    big[:, 150:] = True
    big[100:101, :3] = True
    cases.append(case(big))
    OUT.write_text(json.dumps(cases, indent=1))
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
