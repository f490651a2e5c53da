#!/usr/bin/env python3
"""Reference masks of the official `sam2` automatic mask generator (sam2 1.1.0,
`SAM2AutomaticMaskGenerator`, with `use_m2m`) on the tiny fixture of tools/parity/sam2.py.

  tools/parity/sam2_amg.py [SAM2_SRC] [FIXTURE_DIR]

SAM2_SRC: an unpacked sam2 source tree (`pip download sam2==1.1.0 --no-deps`, untar; default
/tmp/sam2dl/sam2-1.1.0). Its `sam2/__init__.py` (hydra) is bypassed: only
`sam2.automatic_mask_generator`, `sam2.utils.amg` and `sam2.utils.transforms` are imported.

What runs is the official generator code (grids, crops, batching, m2m refinement, filters,
NMS, small-region post-processing) and the official `SAM2Transforms.transform_coords` /
`postprocess_masks`. Stand-ins, because the model-building part of `sam2` needs hydra and the
full video model:

- the predictor: `set_image` preprocesses like tools/parity/sam2.py (Pillow bilinear uint8
  resize to the model size, /255, ImageNet normalisation; the official predictor resizes the
  float image with torchvision instead) and runs transformers' `Sam2Model` vision encoder;
  `_predict` is the official `_predict`'s body over transformers' prompt encoder and mask
  decoder (one prompt per batch row, the image repeated, as the official `repeat_image`),
  then the official `postprocess_masks` and the clamp of the low-resolution logits to +-32;
- torchvision: `ops.boxes.batched_nms` / `box_area` (greedy NMS, stable descending order,
  suppress IoU > threshold), and empty `transforms` names for the import;
- `sam2.utils.misc.get_connected_components` (the CUDA extension): 8-connected labels and
  component areas with scipy, so the predictor's hole/sprinkle filling runs as on a GPU.

Writes FIXTURE_DIR/amg.json: for each case, the settings and the official output records
(`segmentation` as uncompressed column-major RLE counts, bbox XYWH, area, predicted_iou,
stability_score, point_coords, crop_box).
"""

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SRC = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/sam2dl/sam2-1.1.0")
FIX = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-scene/tests/fixtures/sam2-tiny"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sam2 import MEAN, STD  # noqa: E402  (tools/parity/sam2.py, before the package stub)

from transformers import Sam2Model  # noqa: E402

del sys.modules["sam2"]


def _nms(boxes, scores, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes.float()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sup = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if sup[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(boxes[i, 0], boxes[:, 0])
        yy1 = torch.maximum(boxes[i, 1], boxes[:, 1])
        xx2 = torch.minimum(boxes[i, 2], boxes[:, 2])
        yy2 = torch.minimum(boxes[i, 3], boxes[:, 3])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        sup |= inter / (areas[i] + areas - inter) > thr
    return torch.tensor(keep, dtype=torch.int64)


def _install_stubs():
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    bx = types.ModuleType("torchvision.ops.boxes")
    tr = types.ModuleType("torchvision.transforms")
    bx.batched_nms = lambda b, s, idx, iou_threshold: (
        _nms(b, s, iou_threshold) if len(b) else torch.empty(0, dtype=torch.int64))
    # reshape: with no masks at all the official code passes a 1-D empty tensor here.
    bx.box_area = lambda b: (b.reshape(-1, 4)[:, 2] - b.reshape(-1, 4)[:, 0]) * (
        b.reshape(-1, 4)[:, 3] - b.reshape(-1, 4)[:, 1])
    ops.boxes = bx
    tr.Normalize = tr.Resize = tr.ToTensor = None
    tv.ops, tv.transforms = ops, tr
    for n, m in [("torchvision", tv), ("torchvision.ops", ops), ("torchvision.ops.boxes", bx),
                 ("torchvision.transforms", tr)]:
        sys.modules[n] = m
    pkg = types.ModuleType("sam2")
    pkg.__path__ = [str(SRC / "sam2")]
    sys.modules["sam2"] = pkg
    modeling = types.ModuleType("sam2.modeling")
    modeling.__path__ = []
    base = types.ModuleType("sam2.modeling.sam2_base")
    base.SAM2Base = object
    sys.modules["sam2.modeling"] = modeling
    sys.modules["sam2.modeling.sam2_base"] = base
    from scipy import ndimage

    misc = types.ModuleType("sam2.utils.misc")

    def get_connected_components(mask):
        m = mask.to(torch.uint8).cpu().numpy()
        labels = np.zeros(m.shape, dtype=np.int32)
        areas = np.zeros(m.shape, dtype=np.int32)
        for i in range(m.shape[0]):
            lab, _ = ndimage.label(m[i, 0], structure=np.ones((3, 3)))
            sizes = np.bincount(lab.ravel())
            labels[i, 0] = lab
            areas[i, 0] = np.where(lab > 0, sizes[lab], 0)
        return torch.from_numpy(labels), torch.from_numpy(areas)

    misc.get_connected_components = get_connected_components
    sys.modules["sam2.utils.misc"] = misc


_install_stubs()
import sam2.utils  # noqa: E402,F401
import sam2.automatic_mask_generator as amg_mod  # noqa: E402
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: E402
from sam2.utils.transforms import SAM2Transforms  # noqa: E402


class HfPredictor:
    """The parts of `SAM2ImagePredictor` the generator uses, over transformers' Sam2Model."""

    def __init__(self, model, resolution, mask_threshold, max_hole_area, max_sprinkle_area):
        self.model = model
        self.device = torch.device("cpu")
        self.mask_threshold = mask_threshold
        t = SAM2Transforms.__new__(SAM2Transforms)
        torch.nn.Module.__init__(t)
        t.resolution = resolution
        t.mask_threshold = mask_threshold
        t.max_hole_area = max_hole_area
        t.max_sprinkle_area = max_sprinkle_area
        self._transforms = t
        self.res = resolution

    def set_image(self, image):
        self._orig_hw = [image.shape[:2]]
        im = Image.fromarray(image).resize((self.res, self.res), Image.BILINEAR)
        x = (np.asarray(im).astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        pv = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous().float()
        with torch.no_grad():
            self._emb = self.model.get_image_embeddings(pv)

    def reset_predictor(self):
        self._emb = None

    @torch.no_grad()
    def _predict(self, point_coords, point_labels, boxes=None, mask_input=None,
                 multimask_output=True, return_logits=False, img_idx=-1):
        assert boxes is None
        k = point_coords.shape[0]
        sparse, dense = self.model.prompt_encoder(
            input_points=point_coords[:, None], input_labels=point_labels[:, None],
            input_boxes=None, input_masks=mask_input)
        emb = self._emb
        pe = self.model.get_image_wide_positional_embeddings().repeat(k, 1, 1, 1)
        low, iou, _, _ = self.model.mask_decoder(
            image_embeddings=emb[-1].expand(k, -1, -1, -1),
            image_positional_embeddings=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            high_resolution_features=[e.expand(k, -1, -1, -1) for e in emb[:-1]],
        )
        low, iou = low[:, 0], iou[:, 0]
        masks = self._transforms.postprocess_masks(low, self._orig_hw[img_idx])
        low = torch.clamp(low, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low


PAPER = dict(points_per_side=16, pred_iou_thresh=0.7, stability_score_thresh=0.92,
             stability_score_offset=0.7, crop_n_layers=1, box_nms_thresh=0.7,
             crop_n_points_downscale_factor=2, min_mask_region_area=1, use_m2m=True)
CASES = [
    ("paper", PAPER),
    # Looser thresholds so that the random tiny model keeps many masks.
    ("paper_loose", dict(PAPER, pred_iou_thresh=0.66, stability_score_thresh=0.5,
                         stability_score_offset=0.02)),
    ("paper_nofilter", dict(PAPER, pred_iou_thresh=0.0, stability_score_thresh=0.0)),
    ("no_m2m_loose", dict(PAPER, pred_iou_thresh=0.6, stability_score_thresh=0.5, use_m2m=False,
                          stability_score_offset=0.02,
                          crop_n_layers=0, min_mask_region_area=0, points_per_batch=20)),
]


def main():
    model = Sam2Model.from_pretrained(FIX, attn_implementation="eager").eval()
    res = model.config.vision_config.backbone_config.image_size[0]
    image = np.asarray(Image.open(FIX / "image.png").convert("RGB"))
    out = []
    for name, kw in CASES:
        g = SAM2AutomaticMaskGenerator.__new__(SAM2AutomaticMaskGenerator)
        # The official __init__ with a placeholder model, then the predictor replaced.
        amg_mod.SAM2ImagePredictor = lambda *a, **k: None
        SAM2AutomaticMaskGenerator.__init__(g, model=None, output_mode="uncompressed_rle", **kw)
        g.predictor = HfPredictor(model, res, 0.0, kw.get("min_mask_region_area", 0),
                                  kw.get("min_mask_region_area", 0))
        recs = g.generate(image)
        print(name, len(recs), "masks")
        out.append({"name": name, "settings": kw, "masks": [
            {"counts": r["segmentation"]["counts"], "size": r["segmentation"]["size"],
             "bbox": r["bbox"], "area": int(r["area"]), "predicted_iou": float(r["predicted_iou"]),
             "stability_score": float(r["stability_score"]), "point_coords": r["point_coords"],
             "crop_box": r["crop_box"]} for r in recs]})
    (FIX / "amg.json").write_text(json.dumps(out))
    print("wrote", FIX / "amg.json")


if __name__ == "__main__":
    main()
