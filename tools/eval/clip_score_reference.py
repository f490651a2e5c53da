#!/usr/bin/env python3
"""Reference numbers for cielr-eval's CLIPScore parity test.

The benchmark protocol's CLIP score: torchmetrics' `CLIPScore` (100 * max(cos, 0) of the CLIP
image and text embeddings) of the edited image cropped to the bounding box of the mask's
non-zero pixels, against the target text. Here the model is one of the tiny random CLIP
checkpoints committed for cielr-scene's CLIP parity (crates/cielr-scene/tests/fixtures/
clip-tiny-*; random weights are fine for parity: the test checks the computation, not CLIP's
judgement). torchmetrics only loads model names containing "openai", so the local folder is
handed over through its documented callable form, loading the same classes its "openai"
branch uses (`CLIPModel`, `CLIPProcessor`).

Cases (real photo, real hand-drawn masks from assets/coffee.ssr.json, decoded to PNG under
crates/cielr-eval/tests/fixtures/clip_score/):
  * native size: the photo's crop as a uint8 tensor;
  * protocol size 512: the photo resized like cielr_eval::prepare (torch bicubic,
    align_corners=False, no antialias, clamped), rounded to uint8 (`round(x * 255)`), the mask
    resized nearest, then cropped.

Also saved: the processor's `pixel_values` of every case (pixel_values.safetensors, `case{i}`),
so the test can tell a preprocessing difference from a model difference.

Usage: /work/venv-ref/bin/python tools/eval/clip_score_reference.py
(venv-ref on purpose: without torchvision, transformers uses the PIL image processor, the one
cielr_scene::preprocess matches.)
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCENE = os.path.join(ROOT, "crates", "cielr-scene", "tests", "fixtures")
OUT = os.path.join(ROOT, "crates", "cielr-eval", "tests", "fixtures", "clip_score")
# (model fixture, image (repo path), mask (file in OUT), protocol size or None, text)
CASES = [
    ("clip-tiny-gelu", "assets/coffee.png", "coffee_cup_mask.png", None, "a metal spoon"),
    ("clip-tiny-gelu", "assets/coffee.png", "coffee_spoon_mask.png", None, "background"),
    ("clip-tiny-gelu", "assets/coffee.png", "coffee_cup_mask.png", 512, "white wall"),
    ("clip-tiny-gelu", "assets/coffee.png", "coffee_spoon_mask.png", 512, "a green plant"),
    # Random weights give a negative cosine here: the score is clamped to 0.
    ("clip-tiny-quickgelu", "assets/coffee.png", "coffee_cup_mask.png", None, "white wall"),
    ("clip-tiny-quickgelu", "assets/coffee.png", "coffee_spoon_mask.png", 512, "a cat"),
]


class _Transformers4Api(CLIPModel):
    """torchmetrics 1.9 expects transformers 4's `get_*_features`, which return the projected
    embeddings as a tensor; transformers 5 returns an output object whose `pooler_output` is
    that tensor. This restores the tensor return and changes nothing else."""

    def get_image_features(self, *args, **kwargs):
        out = super().get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = super().get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def load(model_dir):
    model = _Transformers4Api.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, CLIPProcessor.from_pretrained(model_dir)


def crop(image_path, mask_name, size):
    img = np.asarray(Image.open(os.path.join(ROOT, image_path)).convert("RGB"))
    mask = np.asarray(Image.open(os.path.join(OUT, mask_name)).convert("L"))
    if size is not None:
        t = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
        t = t.clamp(0.0, 1.0)
        img = (t[0] * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        mask = F.interpolate(m, size=(size, size), mode="nearest")[0, 0].numpy()
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    cropped = img[box[1] : box[3], box[0] : box[2]]
    return torch.from_numpy(np.ascontiguousarray(cropped)).permute(2, 0, 1), box


def main():
    torch.set_grad_enabled(False)
    refs, pixel_values = [], {}
    for model_name, image, mask, size, text in CASES:
        model_dir = os.path.join(SCENE, model_name)
        metric = CLIPScore(model_name_or_path=lambda d=model_dir: load(d))
        pixels, box = crop(image, mask, size)
        metric.update(pixels, text)
        score = float(metric.compute())
        # The embeddings, for diagnosis.
        model, proc = load(model_dir)
        inp = proc(text=[text], images=[pixels], return_tensors="pt", padding=True)
        pixel_values[f"case{len(refs)}"] = inp["pixel_values"][0].contiguous()
        img_f = model.get_image_features(inp["pixel_values"])
        txt_f = model.get_text_features(inp["input_ids"], inp["attention_mask"])
        img_f = img_f / img_f.norm(dim=-1, keepdim=True)
        txt_f = txt_f / txt_f.norm(dim=-1, keepdim=True)
        cos = float((img_f * txt_f).sum())
        refs.append(
            {
                "model": model_name,
                "image": image,
                "mask": mask,
                "size": size,
                "text": text,
                "box": box,
                "clip_score": score,
                "cos": cos,
                "image_embeds": img_f[0].tolist(),
                "text_embeds": txt_f[0].tolist(),
            }
        )
        print({k: v for k, v in refs[-1].items() if not k.endswith("embeds")})
    save_file(pixel_values, os.path.join(OUT, "pixel_values.safetensors"))
    os.chmod(os.path.join(OUT, "pixel_values.safetensors"), 0o644)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(refs, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
