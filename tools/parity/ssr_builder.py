#!/usr/bin/env python3
"""Reference SSR for the paper's SSR builder (`cielr_scene::ssr_builder`), from the reference
models' outputs on the tiny committed checkpoints.

  tools/parity/ssr_builder.py [OUT_DIR]   # default crates/cielr-scene/tests/fixtures/ssr-builder

Inputs (all committed fixtures, random weights):
  - masks: the official `segment-anything` SamAutomaticMaskGenerator's masks of the `grid` case
    in fixtures/sam-tiny/amg.json (63 masks on fixtures/sam-tiny/image.png, 96x64);
  - boxes: transformers' Owlv2ForObjectDetection on fixtures/owlv2-tiny, Owlv2Processor (PIL
    image processor, 5.24 zero padding), `post_process_grounded_object_detection` with the
    queries below and threshold 0.1;
  - depth: transformers' DepthAnythingForDepthEstimation on fixtures/depth-anything-tiny, PIL
    DPT processor, `post_process_depth_estimation` to the image size.

The SSR is built as docs/scene.md and method.md say, written here independently of the Rust
code: each mask takes the label of the box with the highest IoU (overlap = mask pixels whose
centres lie in the box, i.e. pixels x in [ceil(x0 - 0.5), ceil(x1 - 0.5)); box area = raw
width * height; ties to the higher score, then the earlier box; no overlap = Unknown); depth
at the centroid pixel (floor of the mean pixel-centre coordinate) of the map min-max
normalised to [0, 1]; masks merged by label in order of first appearance, Unknown last,
depths averaged, scores maxed. The script fails when a labelling decision is closer than
1e-4 in IoU, a box edge inside the image lies within 1e-4 px of a pixel-centre boundary (k + 0.5) or a score
within 1e-3 of the threshold: f32 differences between implementations could flip those.

Writes OUT_DIR/reference.json: queries, box threshold, the boxes, per-mask labels and
depths, and the merged objects (label, COCO RLE string of the mask, depth, score).
Needs: torch, transformers 5.x, numpy, pillow (the COCO RLE coder is written out here).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    DepthAnythingForDepthEstimation,
    Owlv2ForObjectDetection,
    Owlv2Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "crates/cielr-scene/tests/fixtures"
QUERIES = ["a photo of a cat", "a blue cup", "the sofa"]
THRESHOLD = 0.1
MARGIN = 1e-4
EDGE_MARGIN = 1e-4


def rle_decode(counts, h, w):
    """COCO compressed RLE string -> (h, w) bool (column-major runs, zeros first)."""
    runs, i = [], 0
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for r in runs:
        flat[pos:pos + r] = val
        pos += r
        val = not val
    return flat.reshape(w, h).T


def rle_encode(mask):
    """(h, w) bool -> COCO compressed RLE string."""
    flat = mask.T.reshape(-1)
    runs, cur, n = [], False, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def pixel_range(v, n):
    return int(np.clip(np.ceil(v - 0.5), 0, n))


def iou(mask, area, box):
    h, w = mask.shape
    x0, y0, x1, y1 = box
    xs, xe = pixel_range(x0, w), pixel_range(x1, w)
    ys, ye = pixel_range(y0, h), pixel_range(y1, h)
    overlap = float(mask[ys:max(ye, ys), xs:max(xe, xs)].sum())
    if overlap == 0:
        return 0.0
    union = max(x1 - x0, 0) * max(y1 - y0, 0) + area - overlap
    return overlap / union if union > 0 else 0.0


def owlv2_boxes(image):
    folder = FIX / "owlv2-tiny"
    model = Owlv2ForObjectDetection.from_pretrained(folder).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessorPil.from_pretrained(folder), tokenizer=tok)
    inputs = proc(text=[QUERIES], images=image, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    w, h = image.size
    res = proc.post_process_grounded_object_detection(
        outputs=out, threshold=THRESHOLD, target_sizes=[(h, w)], text_labels=[QUERIES])[0]
    # Only edges inside the image decide pixels (the others are clamped).
    b = res["boxes"].numpy().astype(np.float64)
    edges = np.concatenate([b[:, [0, 2]].reshape(-1) / 1.0, b[:, [1, 3]].reshape(-1)])
    limits = np.concatenate([np.full(2 * len(b), w), np.full(2 * len(b), h)])
    inside = (edges > 0.0) & (edges < limits)
    edges = edges[inside]
    edge_gap = float(np.abs((edges - 0.5) - np.round(edges - 0.5)).min())
    assert edge_gap > EDGE_MARGIN, f"a box edge is within {edge_gap:.1e} of a pixel-centre boundary"
    print(f"box edges at least {edge_gap:.2e} from a pixel-centre boundary")
    scores = torch.sigmoid(out.logits.max(-1).values)[0]
    gap = float((scores - THRESHOLD).abs().min())
    assert gap > MARGIN, f"a box score is within {gap:.1e} of the threshold"
    boxes = [dict(box=[float(v) for v in b], label=QUERIES[int(l)], score=float(s))
             for b, l, s in zip(res["boxes"], res["labels"], res["scores"])]
    return boxes, edge_gap


def depth_map(image):
    folder = FIX / "depth-anything-tiny"
    model = DepthAnythingForDepthEstimation.from_pretrained(folder).eval()
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    proc = DPTImageProcessorPil(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
    pv = proc(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pv)
    d = proc.post_process_depth_estimation(out, target_sizes=[(image.height, image.width)])[0]
    return d["predicted_depth"].numpy().astype(np.float64)


def main(out_dir):
    image = Image.open(FIX / "sam-tiny/image.png").convert("RGB")
    w, h = image.size
    amg = json.loads((FIX / "sam-tiny/amg.json").read_text())["grid"]
    masks = [rle_decode(m["counts"], *m["size"]) for m in amg["masks"]]
    assert all(m.shape == (h, w) for m in masks)
    boxes, edge_gap = owlv2_boxes(image)
    depth = depth_map(image)
    lo, hi = depth.min(), depth.max()
    norm = (depth - lo) / (hi - lo)

    per_mask = []
    closest = np.inf
    for m in masks:
        area = int(m.sum())
        ious = [iou(m, area, b["box"]) for b in boxes]
        best = None
        for i, v in enumerate(ious):
            if v <= 0:
                continue
            if best is None or v > ious[best] or (v == ious[best] and boxes[i]["score"] > boxes[best]["score"]):
                best = i
        if best is not None:
            others = [v for i, v in enumerate(ious) if i != best]
            if others:
                closest = min(closest, ious[best] - max(others))
        ys, xs = np.nonzero(m)
        cx, cy = (xs + 0.5).mean(), (ys + 0.5).mean()
        d = float(norm[min(int(np.floor(cy)), h - 1), min(int(np.floor(cx)), w - 1)])
        per_mask.append(dict(label=None if best is None else boxes[best]["label"],
                             score=None if best is None else boxes[best]["score"], depth=d))
    assert closest > MARGIN, f"a labelling decision is within {closest:.1e} IoU"

    groups, order = {}, []
    for m, pm in zip(masks, per_mask):
        key = pm["label"] if pm["label"] is not None else None
        if key not in groups:
            groups[key] = dict(mask=np.zeros((h, w), bool), depths=[], score=None)
            order.append(key)
        g = groups[key]
        g["mask"] |= m
        g["depths"].append(pm["depth"])
        if pm["score"] is not None:
            g["score"] = pm["score"] if g["score"] is None else max(g["score"], pm["score"])
    order = [k for k in order if k is not None] + ([None] if None in groups else [])
    objects = [dict(id=i, label=k if k is not None else "Unknown",
                    counts=rle_encode(groups[k]["mask"]), area=int(groups[k]["mask"].sum()),
                    depth=float(np.mean(groups[k]["depths"])), score=groups[k]["score"])
               for i, k in enumerate(order)]
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = dict(image="crates/cielr-scene/tests/fixtures/sam-tiny/image.png", queries=QUERIES,
               box_threshold=THRESHOLD, amg_case="grid", boxes=boxes, per_mask=per_mask,
               closest_iou_margin=float(closest), edge_gap=edge_gap,
               objects=objects)
    (out_dir / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{len(masks)} masks, {len(boxes)} boxes, closest IoU margin {closest:.3e}, edge gap {edge_gap:.2e}")
    for o in objects:
        print(f"  {o['id']}: {o['label']} area {o['area']} depth {o['depth']:.4f} score {o['score']}")
    print(f"wrote {out_dir / 'reference.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else FIX / "ssr-builder")
