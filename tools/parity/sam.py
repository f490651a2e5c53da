#!/usr/bin/env python3
"""Reference checkpoint, inputs and outputs for the SAM (ViT) port in `cielr-scene`.

Modes:

  tools/parity/sam.py tiny [OUT_DIR]        # the committed fixture (default
                                            # crates/cielr-scene/tests/fixtures/sam-tiny)
  tools/parity/sam.py full OUT_DIR          # a sam-vit-base-sized random checkpoint (not
                                            # committed; see sam_full.sh)

One random model is built twice: first as the official `segment-anything` `Sam` (seeded torch
default init, then every LayerNorm affine, the absolute position embedding and the
relative-position tables are also randomised so that they are exercised, and all parameters
are rounded to float16 precision so the fixture can be stored in float16 losslessly), then its
state dict is renamed to transformers' `SamModel` names and loaded into `SamModel` (strict).
The two implementations are checked against each other here (printed) before anything is
written. The mask decoder's `layer_norm_eps` is 1e-5 in the tiny config, the official
decoder's LayerNorm eps, so that both implementations are the same function.

`tiny` writes into OUT_DIR:

  config.json, preprocessor_config.json  (SamConfig / SamImageProcessor, PIL backend)
  model.safetensors      float16 weights, transformers' names
  image.png              assets/coffee.png resized to 96x64 (Lanczos): the test photo
  prompts.json           the prompt cases, in original-image pixels (`mask`: the case has a mask
                         prompt, stored as `<case>.input_masks` in reference.safetensors)
  reference.safetensors  transformers' outputs: pixel_values, image_embeddings, and per case
                         `<case>.pred_masks`, `<case>.iou_scores`, `<case>.masks` (the
                         post-processed binary masks as u8)
  amg.json               the official SamAutomaticMaskGenerator's settings and its masks
                         (compressed column-major COCO RLE string, bbox XYWH, predicted_iou,
                         stability_score, point_coords, crop_box) for each generator case,
                         and `helpers`: official crop boxes and point grids for a few sizes

The official package needs torchvision and opencv. opencv-python-headless installs from PyPI
(`pip install --no-deps opencv-python-headless`); torchvision, when missing, is replaced by a
small in-process stand-in with the only three functions the package uses, with torchvision's
semantics: `transforms.functional.resize` / `to_pil_image` on PIL images (Pillow bilinear
resize of the uint8 image) and `ops.batched_nms` / `ops.boxes.box_area` (greedy NMS in
descending score order, stable sort, suppressing IoU > threshold).

Needs: torch, transformers 5.x, segment-anything 1.0 (`pip install --no-deps segment-anything`),
opencv, safetensors, numpy, pillow. Deterministic (seeded).
"""

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "assets" / "coffee.png"


# --------------------------------------------------------------------------- torchvision stand-in


def _install_torchvision_shim():
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return

    def to_pil_image(image):
        return Image.fromarray(np.asarray(image))

    def resize(img, size):
        h, w = size
        return img.resize((w, h), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def nms(boxes, scores, iou_threshold):
        order = torch.sort(scores, descending=True, stable=True).indices
        boxes = boxes.double()
        areas = box_area(boxes)
        suppressed = torch.zeros(len(boxes), dtype=torch.bool)
        keep = []
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            xx1 = torch.maximum(boxes[i, 0], boxes[:, 0])
            yy1 = torch.maximum(boxes[i, 1], boxes[:, 1])
            xx2 = torch.minimum(boxes[i, 2], boxes[:, 2])
            yy2 = torch.minimum(boxes[i, 3], boxes[:, 3])
            inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
            iou = inter / (areas[i] + areas - inter)
            suppressed |= iou > iou_threshold
        return torch.tensor(keep, dtype=torch.int64)

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        # All callers in segment-anything use a single category.
        assert bool((idxs == idxs[0]).all())
        return nms(boxes, scores, iou_threshold)

    tv = types.ModuleType("torchvision")
    tv_ops = types.ModuleType("torchvision.ops")
    tv_boxes = types.ModuleType("torchvision.ops.boxes")
    tv_tr = types.ModuleType("torchvision.transforms")
    tv_fn = types.ModuleType("torchvision.transforms.functional")
    tv_boxes.batched_nms = batched_nms
    tv_boxes.box_area = box_area
    tv_ops.boxes = tv_boxes
    tv_ops.batched_nms = batched_nms
    tv_ops.box_area = box_area
    tv_fn.resize = resize
    tv_fn.to_pil_image = to_pil_image
    tv_tr.functional = tv_fn
    tv.ops = tv_ops
    tv.transforms = tv_tr
    for name, mod in [
        ("torchvision", tv),
        ("torchvision.ops", tv_ops),
        ("torchvision.ops.boxes", tv_boxes),
        ("torchvision.transforms", tv_tr),
        ("torchvision.transforms.functional", tv_fn),
    ]:
        sys.modules[name] = mod


# transformers is imported before the stand-in is installed (it probes for torchvision), and
# the stand-in is removed again once segment-anything holds its functions.
from transformers import SamConfig, SamModel  # noqa: E402
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil  # noqa: E402
from transformers.models.sam.processing_sam import SamProcessor  # noqa: E402

_SHIMMED = "torchvision" not in sys.modules
_install_torchvision_shim()

from functools import partial  # noqa: E402

from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

if _SHIMMED:
    for _name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        if getattr(sys.modules[_name], "__file__", None) is None:
            del sys.modules[_name]

# --------------------------------------------------------------------------- configs

TINY = dict(
    hidden=32,
    depth=2,
    heads=2,
    global_attn=[1],
    window=4,
    image_size=64,
    patch=8,
    mlp_ratio=2,
    out_chans=32,
    mask_in_chans=8,
    dec_mlp=64,
    dec_heads=2,
    iou_hidden=32,
    dec_eps=1e-5,
    # The random decoder's mask logits have a standard deviation of ~0.04; the hypernetwork
    # MLPs' output layers are scaled up so that the logits span several units and the
    # stability score (thresholds at +-offset) and the 0 threshold carve real shapes.
    logit_gain=60.0,
)

FULL = dict(
    hidden=768,
    depth=12,
    heads=12,
    global_attn=[2, 5, 8, 11],
    window=14,
    image_size=1024,
    patch=16,
    mlp_ratio=4,
    out_chans=256,
    mask_in_chans=16,
    dec_mlp=2048,
    dec_heads=8,
    iou_hidden=256,
    dec_eps=1e-5,
    logit_gain=60.0,
)


def build_official(c, seed):
    torch.manual_seed(seed)
    emb = c["image_size"] // c["patch"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["depth"],
            embed_dim=c["hidden"],
            img_size=c["image_size"],
            mlp_ratio=c["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["heads"],
            patch_size=c["patch"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c["global_attn"],
            window_size=c["window"],
            out_chans=c["out_chans"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["out_chans"],
            image_embedding_size=(emb, emb),
            input_image_size=(c["image_size"], c["image_size"]),
            mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=c["out_chans"], mlp_dim=c["dec_mlp"], num_heads=c["dec_heads"]
            ),
            transformer_dim=c["out_chans"],
            iou_head_depth=3,
            iou_head_hidden_dim=c["iou_hidden"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and ("norm" in name or "neck.1" in name or "neck.3" in name or "upscaling.1" in name
                                  or "downscaling.1" in name or "downscaling.4" in name):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            if "output_hypernetworks_mlps" in name and ".layers.2." in name:
                p.mul_(c.get("logit_gain", 1.0))
            p.copy_(p.half().float())
        # The positional encoding's Gaussian matrix is a buffer, not a parameter.
        for name, buf in sam.named_buffers():
            if name not in ("pixel_mean", "pixel_std"):
                buf.copy_(buf.half().float())
    return sam


def hf_config(c):
    emb = c["image_size"] // c["patch"]
    return SamConfig(
        vision_config=dict(
            hidden_size=c["hidden"],
            output_channels=c["out_chans"],
            num_hidden_layers=c["depth"],
            num_attention_heads=c["heads"],
            image_size=c["image_size"],
            patch_size=c["patch"],
            mlp_ratio=float(c["mlp_ratio"]),
            window_size=c["window"],
            global_attn_indexes=c["global_attn"],
            num_pos_feats=c["out_chans"] // 2,
        ),
        prompt_encoder_config=dict(
            hidden_size=c["out_chans"],
            image_size=c["image_size"],
            patch_size=c["patch"],
            mask_input_channels=c["mask_in_chans"],
        ),
        mask_decoder_config=dict(
            hidden_size=c["out_chans"],
            mlp_dim=c["dec_mlp"],
            num_attention_heads=c["dec_heads"],
            iou_head_hidden_dim=c["iou_hidden"],
            layer_norm_eps=c["dec_eps"],
        ),
    ), emb


def official_to_hf(sd):
    """Renames an official `Sam` state dict to transformers' `SamModel` names."""
    out = {}
    for k, v in sd.items():
        if k in ("pixel_mean", "pixel_std"):
            continue
        n = k
        n = n.replace("image_encoder.", "vision_encoder.")
        n = n.replace("patch_embed.proj.", "patch_embed.projection.")
        n = n.replace(".blocks.", ".layers.")
        n = n.replace(".norm1.", ".layer_norm1.").replace(".norm2.", ".layer_norm2.")
        n = n.replace(".norm3.", ".layer_norm3.").replace(".norm4.", ".layer_norm4.")
        n = n.replace("norm_final_attn.", "layer_norm_final_attn.")
        for a, b in [("neck.0.", "neck.conv1."), ("neck.1.", "neck.layer_norm1."),
                     ("neck.2.", "neck.conv2."), ("neck.3.", "neck.layer_norm2.")]:
            n = n.replace(a, b)
        if n == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            out["shared_image_embedding.positional_embedding"] = v
            out["prompt_encoder.shared_embedding.positional_embedding"] = v
            continue
        n = n.replace("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed.")
        for a, b in [("mask_downscaling.0.", "mask_embed.conv1."), ("mask_downscaling.1.", "mask_embed.layer_norm1."),
                     ("mask_downscaling.3.", "mask_embed.conv2."), ("mask_downscaling.4.", "mask_embed.layer_norm2."),
                     ("mask_downscaling.6.", "mask_embed.conv3.")]:
            n = n.replace(a, b)
        for a, b in [("output_upscaling.0.", "upscale_conv1."), ("output_upscaling.1.", "upscale_layer_norm."),
                     ("output_upscaling.3.", "upscale_conv2.")]:
            n = n.replace(a, b)
        if "output_hypernetworks_mlps." in n or "iou_prediction_head." in n:
            for a, b in [(".layers.0.", ".proj_in."), (".layers.1.", ".layers.0."), (".layers.2.", ".proj_out.")]:
                if a in n:
                    n = n.replace(a, b)
                    break
        out[n] = v
    return out


def build_pair(c, seed):
    sam = build_official(c, seed)
    config, emb = hf_config(c)
    hf = SamModel(config).eval()
    sd = official_to_hf(sam.state_dict())
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert not missing, missing
    return sam, hf, config, sd


def processor_for(c):
    s = c["image_size"]
    ip = SamImageProcessorPil(
        size={"longest_edge": s},
        pad_size={"height": s, "width": s},
        mask_size={"longest_edge": s // 4},
        mask_pad_size={"height": s // 4, "width": s // 4},
    )
    return SamProcessor(ip)


CASES = {
    # Two prompts of two points each (foreground + background, two foreground), multimask.
    "points": dict(points=[[[20.0, 30.0], [70.0, 12.0]], [[50.0, 40.0], [55.0, 35.0]]],
                   labels=[[1, 0], [1, 1]], boxes=None, multimask=True),
    # Two boxes, single mask.
    "boxes": dict(points=None, labels=None, boxes=[[10.0, 8.0, 60.0, 50.0], [40.0, 20.0, 90.0, 62.0]],
                  multimask=False),
    # The points case with a mask prompt (seeded random low-resolution logits, shared by both
    # prompts), single mask.
    "points_mask": dict(points=[[[20.0, 30.0], [70.0, 12.0]], [[50.0, 40.0], [55.0, 35.0]]],
                        labels=[[1, 0], [1, 1]], boxes=None, multimask=False, mask=True),
    # One point plus a box per prompt; the second prompt's point is padding (label -10).
    "points_boxes": dict(points=[[[30.0, 25.0]], [[0.0, 0.0]]], labels=[[1], [-10]],
                         boxes=[[5.0, 5.0, 50.0, 45.0], [30.0, 10.0, 95.0, 60.0]], multimask=True),
}


def run_hf_case(hf, proc, image, case):
    kw = {}
    if case["points"] is not None:
        kw["input_points"] = [case["points"]]
        kw["input_labels"] = [case["labels"]]
    if case["boxes"] is not None:
        kw["input_boxes"] = [case["boxes"]]
    inputs = proc(images=image, return_tensors="pt", **kw)
    if case.get("mask"):
        s4 = 4 * hf.config.prompt_encoder_config.image_embedding_size
        g = torch.Generator().manual_seed(7)
        inputs["input_masks"] = 3.0 * torch.randn((1, 1, s4, s4), generator=g)
    with torch.no_grad():
        out = hf(
            pixel_values=inputs["pixel_values"],
            input_points=inputs.get("input_points"),
            input_labels=inputs.get("input_labels"),
            input_boxes=inputs.get("input_boxes"),
            input_masks=inputs.get("input_masks"),
            multimask_output=case["multimask"],
        )
    masks = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
    return inputs, out, masks


def run_official_case(sam, image, case, hf_inputs):
    pred = SamPredictor(sam)
    pred.set_image(np.asarray(image))
    pts = lab = box = None
    if case["points"] is not None:
        pts = pred.transform.apply_coords_torch(torch.tensor(case["points"]), pred.original_size)
        lab = torch.tensor(case["labels"])
        if case["boxes"] is None:
            pass
    if case["boxes"] is not None:
        box = pred.transform.apply_boxes_torch(torch.tensor(case["boxes"]), pred.original_size)
    # The official prompt encoder knows no -10 padding label; transformers zeroes such points.
    if lab is not None and (lab == -10).any():
        return None
    mask_input = hf_inputs.get("input_masks")
    masks, iou, low = pred.predict_torch(pts, lab, box, mask_input=mask_input, multimask_output=case["multimask"],
                                         return_logits=True)
    return low, iou, pred.features


# AMG cases: settings for the official generator. The tiny random model's predicted IoUs and
# stability scores do not resemble a trained model's, so the thresholds are set from their
# distribution on this image (printed by `tiny`) so that some masks pass and some do not.
AMG_CASES = {
    # Every grid mask that passes the quality filters is kept (box NMS at 1.0 suppresses
    # nothing): the random model's masks are scattered and nearly all span the whole image,
    # so box NMS at the usual 0.7 would keep a single mask and compare almost nothing.
    "grid": dict(points_per_side=6, points_per_batch=10, pred_iou_thresh=None, stability_score_thresh=None,
                 stability_score_offset=1.0, box_nms_thresh=1.0, crop_n_layers=0, crop_nms_thresh=0.7,
                 crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, min_mask_region_area=0),
    # The usual box NMS threshold: the same winner must survive.
    "nms": dict(points_per_side=8, points_per_batch=64, pred_iou_thresh=None, stability_score_thresh=None,
                stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, crop_nms_thresh=0.7,
                crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, min_mask_region_area=0),
    # The grid case with small-region removal (holes and islands under 12 px): the random
    # masks are ragged, so most change; NMS at max(box, crop) = 1.0 then only reorders them
    # (unchanged masks first).
    "regions": dict(points_per_side=6, points_per_batch=10, pred_iou_thresh=None, stability_score_thresh=None,
                    stability_score_offset=1.0, box_nms_thresh=1.0, crop_n_layers=0, crop_nms_thresh=0.7,
                    crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, min_mask_region_area=12),
    # One crop layer (4 overlapping crops, 2x2 points each), near-crop-edge filtering, crop NMS
    # and small-region removal (holes and islands under 12 px, then NMS by "unchanged").
    # The random model's masks are scattered over their whole crop, so every crop mask
    # touches an inner crop edge and is dropped by the near-crop-edge filter, here as in the
    # official code; crop NMS then only sees the full image's masks.
    "crops": dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=None, stability_score_thresh=None,
                  stability_score_offset=0.5, box_nms_thresh=1.0, crop_n_layers=1, crop_nms_thresh=0.7,
                  crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=2, min_mask_region_area=12),
}


def coco_rle_string(counts):
    """pycocotools' compressed RLE string (`rleToString`) of uncompressed counts."""
    out = []
    for i, x in enumerate(counts):
        x = int(x)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def amg_thresholds(sam, image, settings):
    """Quantiles of predicted IoU and stability over all grid prompts of the whole image."""
    gen = SamAutomaticMaskGenerator(sam, **{**settings, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    gen.predictor.set_image(np.asarray(image))
    pts = gen.point_grids[0] * np.array(image.size)[None, :]
    tp = gen.predictor.transform.apply_coords(pts, np.asarray(image).shape[:2])
    masks, iou, _ = gen.predictor.predict_torch(
        torch.as_tensor(tp)[:, None, :], torch.ones(len(tp), 1, dtype=torch.int), multimask_output=True,
        return_logits=True)
    from segment_anything.utils.amg import calculate_stability_score
    stab = calculate_stability_score(masks.flatten(0, 1), 0.0, settings["stability_score_offset"])
    iou = iou.flatten()
    print(f"    iou_preds: {np.quantile(iou.numpy(), [0, .25, .5, .75, 1]).round(3)}")
    print(f"    stability: {np.quantile(stab.numpy(), [0, .25, .5, .75, 1]).round(3)}")
    return float(np.quantile(iou.numpy(), 0.3)), float(np.quantile(stab.numpy(), 0.3))


def run_amg(sam, image):
    out = {}
    for name, settings in AMG_CASES.items():
        settings = dict(settings)
        iou_t, stab_t = amg_thresholds(sam, image, settings)
        settings["pred_iou_thresh"] = round(iou_t, 4)
        settings["stability_score_thresh"] = round(stab_t, 4)
        gen = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle", **settings)
        anns = gen.generate(np.asarray(image))
        print(f"  amg {name}: {len(anns)} masks, settings {settings}")
        out[name] = dict(
            settings=settings,
            masks=[
                dict(
                    counts=coco_rle_string(a["segmentation"]["counts"]),
                    size=a["segmentation"]["size"],
                    area=int(a["area"]),
                    bbox=[float(x) for x in a["bbox"]],
                    predicted_iou=a["predicted_iou"],
                    stability_score=a["stability_score"],
                    point_coords=a["point_coords"],
                    crop_box=[float(x) for x in a["crop_box"]],
                )
                for a in anns
            ],
        )
    return out


def maxdiff(a, b):
    return float((a.float() - b.float()).abs().max())


def tiny(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    c = TINY
    sam, hf, config, sd = build_pair(c, seed=0)
    proc = processor_for(c)
    image = Image.open(COFFEE).convert("RGB").resize((96, 64), Image.LANCZOS)
    image.save(out_dir / "image.png")

    config.save_pretrained(out_dir)
    proc.image_processor.save_pretrained(out_dir)
    weights = {k: v.detach().half().contiguous() for k, v in sd.items()
               if k != "prompt_encoder.shared_embedding.positional_embedding"}
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})

    ref = {}
    prompts = {}
    for name, case in CASES.items():
        inputs, out, masks = run_hf_case(hf, proc, image, case)
        if "pixel_values" not in ref:
            ref["pixel_values"] = inputs["pixel_values"].float()
            with torch.no_grad():
                ref["image_embeddings"] = hf.get_image_embeddings(inputs["pixel_values"])
            off = SamPredictor(sam)
            off.set_image(np.asarray(image))
            print(f"  official vs transformers image embeddings: {maxdiff(off.features, ref['image_embeddings']):.2e}")
        ref[f"{name}.pred_masks"] = out.pred_masks[0]
        ref[f"{name}.iou_scores"] = out.iou_scores[0]
        ref[f"{name}.masks"] = masks.to(torch.uint8)
        for k in ("input_points", "input_labels", "input_boxes", "input_masks"):
            if k in inputs:
                ref[f"{name}.{k}"] = inputs[k][0].float()
        prompts[name] = case
        o = run_official_case(sam, image, case, inputs)
        if o is not None:
            print(f"  {name}: official vs transformers low-res logits {maxdiff(o[0], out.pred_masks[0]):.2e}, "
                  f"iou {maxdiff(o[1], out.iou_scores[0]):.2e}")
        print(f"  {name}: pred_masks {tuple(out.pred_masks.shape)}, masks {tuple(masks.shape)}, "
              f"mask area {int(masks.sum())}/{masks.numel()}")
    ref = {k: v.contiguous() for k, v in ref.items()}
    save_file(ref, out_dir / "reference.safetensors")
    (out_dir / "prompts.json").write_text(json.dumps(prompts, indent=1) + "\n")
    amg = run_amg(sam, image)
    from segment_anything.utils.amg import build_point_grid, generate_crop_boxes
    amg["helpers"] = dict(
        crop_boxes=[dict(size=list(sz), layers=2, boxes=generate_crop_boxes(sz, 2, 512 / 1500)[0],
                         layer_idxs=generate_crop_boxes(sz, 2, 512 / 1500)[1])
                    for sz in [(64, 96), (400, 600), (683, 1024), (1000, 1500), (1500, 1001)]],
        point_grids={str(n): build_point_grid(n).tolist() for n in [1, 2, 6, 7, 32]},
    )
    (out_dir / "amg.json").write_text(json.dumps(amg) + "\n")
    print(f"wrote {out_dir}")


def full(out_dir):
    """A sam-vit-base-sized random checkpoint with transformers' outputs on a 1024 px photo."""
    import time

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    c = dict(FULL)
    c["dec_eps"] = 1e-6  # the real checkpoints' value (transformers only is compared here)
    sam, hf, config, sd = build_pair(c, seed=0)
    proc = processor_for(c)
    image = Image.open(COFFEE).convert("RGB")
    image.save(out_dir / "image.png")
    config.save_pretrained(out_dir)
    proc.image_processor.save_pretrained(out_dir)
    save_file({k: v.detach().contiguous() for k, v in sd.items()
               if k != "prompt_encoder.shared_embedding.positional_embedding"}, out_dir / "model.safetensors")
    ref = {}
    prompts = {}
    cases = {
        "points": dict(points=[[[200.0, 150.0], [420.0, 90.0]], [[300.0, 260.0], [330.0, 210.0]]],
                       labels=[[1, 0], [1, 1]], boxes=None, multimask=True),
        "boxes": dict(points=None, labels=None, boxes=[[60.0, 50.0, 360.0, 300.0], [240.0, 120.0, 560.0, 380.0]],
                      multimask=False),
    }
    for name, case in cases.items():
        t = time.time()
        inputs, out, masks = run_hf_case(hf, proc, image, case)
        print(f"  {name}: torch full forward {time.time() - t:.2f}s")
        if "pixel_values" not in ref:
            ref["pixel_values"] = inputs["pixel_values"].float()
            with torch.no_grad():
                ref["image_embeddings"] = hf.get_image_embeddings(inputs["pixel_values"])
                times = []
                for _ in range(3):
                    t = time.time()
                    hf.get_image_embeddings(inputs["pixel_values"])
                    times.append(time.time() - t)
            print(f"  torch image encoder ({torch.get_num_threads()} threads): min {min(times):.2f}s of 3")
        ref[f"{name}.pred_masks"] = out.pred_masks[0]
        ref[f"{name}.iou_scores"] = out.iou_scores[0]
        ref[f"{name}.masks"] = masks.to(torch.uint8)
        prompts[name] = case
        print(f"  {name}: logits std {float(out.pred_masks.std()):.3f}, iou {out.iou_scores[0].flatten().tolist()}")
    save_file({k: v.contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors")
    (out_dir / "prompts.json").write_text(json.dumps(prompts, indent=1) + "\n")
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if mode == "tiny":
        tiny(Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-scene/tests/fixtures/sam-tiny")
    elif mode == "full":
        full(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
