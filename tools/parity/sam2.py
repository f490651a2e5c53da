#!/usr/bin/env python3
"""Reference checkpoint, inputs and outputs for the SAM 2.1 (Hiera) port in `cielr-scene`.

Modes:

  tools/parity/sam2.py tiny [OUT_DIR]   # the committed fixture (default
                                        # crates/cielr-scene/tests/fixtures/sam2-tiny)
  tools/parity/sam2.py full OUT_DIR     # a sam2.1-hiera-large-sized random checkpoint
                                        # (not committed; see sam2_full.sh)

A transformers 5.24 `Sam2Model` is built from a small `Sam2Config` (seeded), then EVERY
parameter and buffer is re-drawn at random (fan-in scaled normals; LayerNorm weights around 1),
so that the zero-initialised ones (Hiera's `pos_embed`/`pos_embed_window`, `no_memory_embedding`)
are exercised too. Parameters are rounded to float16 precision and stored as float16.

Preprocessing: `Sam2ImageProcessor` is a torchvision-backend processor and torchvision is not
installed here, so the reference pixel values are computed by the same steps written out:
RGB uint8 image -> bilinear antialiased resize to size (height, width) (Pillow BILINEAR on the
uint8 image, the filter torchvision's uint8 antialiased kernel reproduces) -> /255 ->
(x - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD. Prompt coordinates are scaled with
`Sam2Processor._normalize_coordinates` (x * W'/W, y * H'/H) and masks are post-processed with
`Sam2ImageProcessor.post_process_masks`'s steps (bilinear, align_corners=False, to the
original size, > 0; restated here because that module imports torchvision).

`tiny` writes into OUT_DIR (then run tools/parity/sam2_amg.py for amg.json, the generator
reference):

  config.json, preprocessor_config.json
  model.safetensors      float16 weights, transformers' names
  image.png              assets/coffee.png resized to 96x64 (Lanczos)
  prompts.json           the prompt cases in original pixels
  reference.safetensors  pixel_values (float16; the model ran on these rounded values),
                         backbone.{1,3} (stage outputs, NHWC), fpn.2 (lowest-resolution neck
                         output, NCHW), image_embeddings.{0,1,2}
                         (after conv_s0/conv_s1 and no_memory_embedding), and per case
                         `<case>.pred_masks`, `<case>.iou_scores`, `<case>.object_score_logits`,
                         `<case>.masks` (post-processed, u8); `<case>.input_masks` for mask
                         prompts.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from transformers import Sam2Config, Sam2Model

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "assets" / "coffee.png"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def tiny_config():
    return Sam2Config(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=16,
                num_attention_heads=1,
                image_size=[128, 128],
                window_positional_embedding_background_size=[7, 7],
                blocks_per_stage=[1, 2, 2, 1],
                embed_dim_per_stage=[16, 24, 32, 48],
                num_attention_heads_per_stage=[1, 2, 2, 2],
                window_size_per_stage=[8, 4, 6, 2],
                global_attention_blocks=[4],
            ),
            backbone_channel_list=[48, 32, 24, 16],
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=16),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32,
            # Low threshold so that the dynamic multimask selection takes both branches.
            dynamic_multimask_stability_thresh=0.9,
        ),
    )


def full_config():
    # facebook/sam2.1-hiera-large
    return Sam2Config(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=144,
                num_attention_heads=2,
                blocks_per_stage=[2, 6, 36, 4],
                embed_dim_per_stage=[144, 288, 576, 1152],
                num_attention_heads_per_stage=[2, 4, 8, 16],
                window_size_per_stage=[8, 4, 16, 8],
                global_attention_blocks=[23, 33, 43],
                window_positional_embedding_background_size=[7, 7],
            ),
            backbone_channel_list=[1152, 576, 288, 144],
        ),
    )


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    new = {}
    for name, t in sd.items():
        if not t.is_floating_point():
            new[name] = t
            continue
        if t.dim() >= 2:
            fan_in = int(np.prod(t.shape[1:]))
            std = 1.0 / np.sqrt(max(fan_in, 1))
            if name.endswith("positional_embedding"):
                std = 1.0
            if "pos_embed" in name or "no_memory" in name or name.endswith("_token.weight") or "tokens" in name:
                std = 0.3
            v = torch.randn(t.shape, generator=g) * std
        else:
            v = torch.randn(t.shape, generator=g) * 0.1
            if "norm" in name and name.endswith("weight"):
                v = v + 1.0
        new[name] = v.half().float()
    model.load_state_dict(new, strict=True)


def preprocess(image: Image.Image, size):
    h, w = size
    r = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR)).astype(np.float32) / 255.0
    r = (r - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(r).permute(2, 0, 1).unsqueeze(0).contiguous().float()


def post_process_masks(masks, orig):
    # `Sam2ImageProcessor.post_process_masks` for one image (that module imports torchvision).
    return torch.nn.functional.interpolate(masks, list(orig), mode="bilinear", align_corners=False) > 0


def scale_xy(x, y, orig, target):
    oh, ow = orig
    return [x * (target / ow), y * (target / oh)]


CASES = [
    # name, points [[x, y, label]...] per prompt, box per prompt or None, multimask, mask_from
    ("points_multi", [[[30, 20, 1], [70, 40, 0]], [[50, 30, 1], [0, 0, -10]]], None, True, None),
    ("points_single", [[[30, 20, 1], [70, 40, 0]], [[10, 50, 1], [80, 10, 1]]], None, False, None),
    ("boxes_single", None, [[10, 8, 60, 50], [40, 20, 90, 60]], False, None),
    ("boxes_multi", None, [[10, 8, 60, 50], [40, 20, 90, 60]], True, None),
    ("point_box", [[[35, 25, 1]]], [[20, 10, 70, 55]], True, None),
    ("point_mask", [[[50, 30, 1]]], None, False, "points_multi"),
]


def run_case(model, pixel_values, orig, target, points, boxes, multimask, input_masks):
    kw = {}
    if points is not None:
        pts = [[scale_xy(p[0], p[1], orig, target) for p in prompt] for prompt in points]
        kw["input_points"] = torch.tensor([pts], dtype=torch.float32)
        kw["input_labels"] = torch.tensor([[[p[2] for p in prompt] for prompt in points]], dtype=torch.int64)
    if boxes is not None:
        bx = [scale_xy(b[0], b[1], orig, target) + scale_xy(b[2], b[3], orig, target) for b in boxes]
        kw["input_boxes"] = torch.tensor([bx], dtype=torch.float32)
    if input_masks is not None:
        kw["input_masks"] = input_masks
    with torch.no_grad():
        return model(pixel_values=pixel_values, multimask_output=multimask, **kw)


def write_checkpoint(config, out):
    """A `Sam2Model` of `config` with every parameter re-drawn (`randomise`, seed 1234), saved
    to `out` as float16 safetensors with its config.json and preprocessor_config.json (what
    the Rust loader reads). Returns the model (float16-rounded values, float32) and its input
    size."""
    out.mkdir(parents=True, exist_ok=True)
    config._attn_implementation = "eager"
    model = Sam2Model(config).eval()
    randomise(model, 1234)
    target = config.vision_config.backbone_config.image_size[0]

    config.save_pretrained(out)
    proc_cfg = {
        "image_processor_type": "Sam2ImageProcessorFast",
        "do_resize": True,
        "size": {"height": target, "width": target},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": MEAN,
        "image_std": STD,
        "do_convert_rgb": True,
        "mask_size": {"height": target // 4, "width": target // 4},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(proc_cfg, indent=2))
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    save_file(sd, str(out / "model.safetensors"))
    return model, target


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    torch.manual_seed(0)
    if mode == "tiny":
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-scene/tests/fixtures/sam2-tiny"
        config = tiny_config()
        image = Image.open(COFFEE).convert("RGB").resize((96, 64), Image.LANCZOS)
    else:
        out = Path(sys.argv[2])
        config = full_config()
        image = Image.open(COFFEE).convert("RGB").resize((320, 240), Image.LANCZOS)
    model, target = write_checkpoint(config, out)
    image.save(out / "image.png")

    orig = (image.height, image.width)
    # The model runs on the float16-rounded pixel values, which are what the fixture stores.
    pv = preprocess(image, (target, target)).half().float()
    ref = {"pixel_values": pv}
    with torch.no_grad():
        bb = model.vision_encoder.backbone(pv)
        for i, h in enumerate(bb.intermediate_hidden_states):
            if i in (1, 3):  # kept small: stage 1 (after a window-padded q-pool) and the last
                ref[f"backbone.{i}"] = h
        vo = model.vision_encoder(pv)
        ref["fpn.2"] = vo.fpn_hidden_states[2]
    prompts = []
    results = {}
    for name, points, boxes, multimask, mask_from in CASES:
        input_masks = None
        if mask_from is not None:
            pm = results[mask_from].pred_masks  # [1, n, m, h, w]
            input_masks = pm[0, :1, :1].contiguous()  # [1, 1, h, w]
            ref[f"{name}.input_masks"] = input_masks
        o = run_case(model, pv, orig, target, points, boxes, multimask, input_masks)
        results[name] = o
        if "image_embeddings.0" not in ref:
            for i, e in enumerate(o.image_embeddings):
                ref[f"image_embeddings.{i}"] = e
        ref[f"{name}.pred_masks"] = o.pred_masks[0]
        ref[f"{name}.iou_scores"] = o.iou_scores[0]
        ref[f"{name}.object_score_logits"] = o.object_score_logits[0]
        m = post_process_masks(o.pred_masks[0], orig)
        ref[f"{name}.masks"] = m.to(torch.uint8)
        prompts.append(
            {"name": name, "points": points, "boxes": boxes, "multimask": multimask, "mask": mask_from is not None}
        )
        print(name, tuple(o.pred_masks.shape), o.iou_scores[0].tolist())
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
    ref = {k: v.contiguous() for k, v in ref.items()}
    ref["pixel_values"] = ref["pixel_values"].half()
    save_file(ref, str(out / "reference.safetensors"))
    print("wrote", out)


if __name__ == "__main__":
    main()
