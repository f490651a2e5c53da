#!/usr/bin/env python3
"""Turn assets/grounding/manifest.json into a `cielr eval manifest` set.

Only the items with an `expected_box` are kept; each box becomes a rectangular mask (the box
is rough and hand-drawn, so IoU against it is a coarse measure). Images are copied next to
the manifest, because `cielr eval` keeps every path inside the manifest's folder.

Usage: grounding_to_manifest.py OUT_DIR   (needs Pillow, e.g. /work/venv/bin/python)
then:  cielr eval manifest OUT_DIR/set.jsonl --out runs/grounding --stage plan
"""

import json
import os
import shutil
import sys

from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(REPO, "assets", "grounding")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(SRC, "manifest.json")) as f:
        items = json.load(f)["items"]
    header = {"manifest": {"name": "grounding-boxes", "size": None, "best_by": "grounding_iou"}}
    lines = [json.dumps(header)]
    for i, item in enumerate(items):
        box = item.get("expected_box")
        if box is None:
            continue
        path = os.path.normpath(os.path.join(SRC, item["image"]))
        name = os.path.basename(path)
        shutil.copy(path, os.path.join(out, name))
        width, height = Image.open(path).size
        mask = Image.new("L", (width, height), 0)
        # expected_box is [x0, y0, x1, y1] with exclusive ends; PIL's rectangle is inclusive.
        ImageDraw.Draw(mask).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=255)
        mask_name = f"mask_{i}.png"
        mask.save(os.path.join(out, mask_name))
        lines.append(json.dumps({
            "id": str(i),
            "image": name,
            "instruction": item["instruction"],
            "mask": mask_name,
            "target": item["expected_label"],
            "notes": "mask = rough hand-drawn box of the " + item["expected_label"],
        }))
    with open(os.path.join(out, "set.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines) - 1} samples in {os.path.join(out, 'set.jsonl')}")


if __name__ == "__main__":
    main()
