#!/usr/bin/env python3
"""Reference checkpoints, inputs and outputs for the OWLv2 port in `cielr-scene` (owlv2.rs).

Modes:

  tools/parity/owlv2.py tiny [OUT_DIR]   # the committed fixture (default
                                         # crates/cielr-scene/tests/fixtures/owlv2-tiny)
  tools/parity/owlv2.py full OUT_DIR     # google/owlv2-base-patch16-ensemble-sized random
                                         # checkpoint at 960x960 (not committed; owlv2_full.sh)
  tools/parity/owlv2.py time OUT_DIR     # torch timings on that checkpoint -> torch_timings.json

Each folder holds what `save_pretrained` writes for `Owlv2ForObjectDetection` (config.json,
model.safetensors), the image processor (`Owlv2ImageProcessorPil`, preprocessor_config.json)
and the tokenizer (tokenizer.json + tokenizer_config.json, pad token "!" as the real
checkpoints have), plus:

  queries.json           the text queries, the image (path relative to the repo), threshold
  reference.safetensors  transformers' float32 outputs through `Owlv2Processor` (padding
                         "max_length" = 16 tokens), `Owlv2ForObjectDetection` and
                         `post_process_grounded_object_detection(target_sizes=[(h, w)])`

The tokenizer is clip.py's synthetic CLIP-style BPE (same pipeline as the real tokenizer.json,
~130 tokens); the weights are seeded random values of unit-ish scale (clip.py's `perturb`).

Image processing: transformers' PIL/numpy backend (`Owlv2ImageProcessorPil`: rescale, pad to
square with 0.0 at bottom/right, scipy Gaussian anti-aliasing + linear `ndi.zoom` in "mirror"
mode, clip to the input range, normalise), which is what `AutoImageProcessor` gives without
torchvision and what the original (scikit-image) OWLv2 preprocessing computes.

Needs: torch, transformers 5.x, scipy, safetensors, tokenizers, numpy, pillow (/work/venv-ref
with `pip install --no-deps scipy`). Deterministic.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor, PreTrainedTokenizerFast
from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip import make_tokenizer, perturb  # noqa: E402  (shared synthetic tokenizer and init)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "crates" / "cielr-scene" / "tests" / "fixtures"
CHELSEA = "crates/cielr-scene/tests/fixtures/images/chelsea.png"  # 451x300, a cat
TINY = "crates/cielr-scene/tests/fixtures/clip-preprocess/tiny.png"  # 23x17, upsampled
COFFEE = "assets/coffee.png"  # 600x400
QUERIES = ["a photo of a cat", "a blue cup", "the sofa"]


class GreyPadProcessor(Owlv2ImageProcessorPil):
    """Pads with 0.5 grey (transformers 4.x's `Owlv2ImageProcessor.pad`)."""

    def pad(self, image, constant_value=0.5):
        return super().pad(image, constant_value=constant_value)


def tokenizer(folder, max_length):
    tok = make_tokenizer(False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="!",
        model_max_length=max_length,
    )
    fast.save_pretrained(folder)
    return fast


def build(folder, text_cfg, vision_cfg, projection_dim, image_size, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    tok = tokenizer(folder, text_cfg["max_position_embeddings"])
    text_cfg = dict(text_cfg)
    text_cfg.setdefault("vocab_size", tok.vocab_size + 3)
    text_cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Owlv2Config(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder)
    image_processor = Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.save_pretrained(folder)
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tok)
    return model, processor


def run(model, processor, image_path):
    image = Image.open(REPO / image_path).convert("RGB")
    inputs = processor(text=[QUERIES], images=image, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return image, inputs, out


def pick_threshold(scores):
    """A threshold between two well separated sorted scores near the middle, so that about half
    the boxes pass and no score sits close to it."""
    s = np.sort(scores)
    n = len(s)
    lo, hi = n // 4, max(n // 4 + 1, 3 * n // 4)
    gaps = [(s[i + 1] - s[i], i) for i in range(lo, min(hi, n - 1))]
    gap, i = max(gaps)
    return float((s[i] + s[i + 1]) / 2), float(gap)


def references(model, processor, image, inputs, out, threshold):
    w, h = image.size
    results = processor.post_process_grounded_object_detection(
        outputs=out, threshold=threshold, target_sizes=[(h, w)], text_labels=[QUERIES]
    )[0]
    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    refs = {
        "pixel_values": f32(inputs["pixel_values"]),
        "input_ids": inputs["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": inputs["attention_mask"].to(torch.int64).contiguous(),
        "image_embeds": f32(out.image_embeds),
        "text_embeds": f32(out.text_embeds),
        "logits": f32(out.logits),
        "objectness_logits": f32(out.objectness_logits),
        "pred_boxes": f32(out.pred_boxes),
        "class_embeds": f32(out.class_embeds),
        "det_scores": f32(results["scores"]),
        "det_labels": results["labels"].to(torch.int64).contiguous(),
        "det_boxes": f32(results["boxes"]).reshape(-1, 4),
    }
    return refs, results


def tiny(out):
    folder = Path(out)
    text_cfg = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16,
    )
    vision_cfg = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=80, patch_size=16,
    )
    model, processor = build(folder, text_cfg, vision_cfg, 32, 80, seed=4)
    image, inputs, out = run(model, processor, CHELSEA)
    scores = torch.sigmoid(out.logits.max(-1).values)[0].numpy()
    threshold, gap = pick_threshold(scores)
    refs, results = references(model, processor, image, inputs, out, threshold)
    # Preprocessing alone on two more photos: an upsampled one (no anti-aliasing), and one
    # padded with 0.5 grey as transformers 4.x and the original OWLv2 code pad (5.24 pads with
    # 0.0; `Owlv2ImageProcessor::pad_value` selects).
    grey = GreyPadProcessor(size={"height": 80, "width": 80})
    for key, path, proc in (
        ("pixel_values_tiny", TINY, processor.image_processor),
        ("pixel_values_coffee_grey", COFFEE, grey),
    ):
        im = Image.open(REPO / path)
        px = proc(images=im, return_tensors="np")["pixel_values"]
        refs[key] = torch.from_numpy(np.ascontiguousarray(px)).to(torch.float32)
    save_file(refs, str(folder / "reference.safetensors"))
    meta = {
        "queries": QUERIES,
        "image": CHELSEA,
        "preprocess_images": {
            "pixel_values_tiny": {"image": TINY, "pad_value": 0.0},
            "pixel_values_coffee_grey": {"image": COFFEE, "pad_value": 0.5},
        },
        "threshold": threshold,
        "threshold_gap": gap,
        "detections": len(results["scores"]),
    }
    (folder / "queries.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1024
    print(f"{folder}: {len(results['scores'])} of {scores.size} boxes above {threshold:.4f} (gap {gap:.2e}); {size:.0f} KiB")


def full_config():
    text_cfg = dict(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
        max_position_embeddings=16, vocab_size=49408,
    )
    vision_cfg = dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=960, patch_size=16,
    )
    return text_cfg, vision_cfg


def full(out):
    folder = Path(out)
    text_cfg, vision_cfg = full_config()
    model, processor = build(folder, text_cfg, vision_cfg, 512, 960, seed=5)
    image, inputs, out = run(model, processor, COFFEE)
    scores = torch.sigmoid(out.logits.max(-1).values)[0].numpy()
    threshold, gap = pick_threshold(scores)
    refs, results = references(model, processor, image, inputs, out, threshold)
    save_file(refs, str(folder / "reference.safetensors"))
    meta = {"queries": QUERIES, "image": COFFEE, "threshold": threshold, "threshold_gap": gap,
            "detections": len(results["scores"])}
    (folder / "queries.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{folder}: {len(results['scores'])} of {scores.size} boxes above {threshold:.4f} (gap {gap:.2e})")


def time_torch(out, runs=3):
    folder = Path(out)
    model = Owlv2ForObjectDetection.from_pretrained(folder).eval()
    processor = Owlv2Processor.from_pretrained(folder)
    image = Image.open(REPO / COFFEE).convert("RGB")

    def timed(f):
        f()
        v = []
        for _ in range(runs):
            t = time.perf_counter()
            f()
            v.append(time.perf_counter() - t)
        v.sort()
        return {"median_s": v[len(v) // 2], "min_s": v[0]}

    inputs = processor(text=[QUERIES], images=image, return_tensors="pt")
    with torch.no_grad():
        res = {
            "threads": torch.get_num_threads(),
            "preprocess": timed(lambda: processor.image_processor(images=image, return_tensors="pt")),
            "image_embedder": timed(lambda: model.image_embedder(pixel_values=inputs["pixel_values"])),
            "forward": timed(lambda: model(**inputs)),
        }
    (folder / "torch_timings.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if mode == "tiny":
        tiny(sys.argv[2] if len(sys.argv) > 2 else FIXTURES / "owlv2-tiny")
    elif mode == "full":
        full(sys.argv[2])
    elif mode == "time":
        time_torch(sys.argv[2])
    else:
        sys.exit(__doc__)
