#!/usr/bin/env python3
"""Reference checkpoints, preprocessing and outputs for the Depth Anything V2 port in
`cielr-scene` (`depth_anything.rs`, `dinov2.rs`).

Modes:

  tools/parity/depth_anything.py tiny [OUT_DIR]        # the committed fixture (default
                       # crates/cielr-scene/tests/fixtures/depth-anything-tiny)
  tools/parity/depth_anything.py full OUT_DIR small|base   # a Depth-Anything-V2-Small/Base-hf
                       # sized random checkpoint at 518x518 (not committed; depth_anything_full.sh)

`tiny` writes what `save_pretrained` writes (config.json with the nested backbone_config,
model.safetensors), a `preprocessor_config.json` for `DPTImageProcessor` with the real
checkpoints' settings except `size` (70 instead of 518, to keep the fixture small), a copy of
the real checkpoints' preprocessor settings (`preprocessor_config.518.json`), and
`reference.safetensors`, for the test photos chelsea.png (451x300) and astronaut-256.png
(256x256) from crates/cielr-scene/tests/fixtures/images/:

  {case}.pixel_values        [1,3,h,w]  the processor's output (PIL backend)
  {case}.feature_map.{i}     [1,1+n,C]  the backbone's feature maps (apply_layernorm)
  {case}.predicted_depth     [1,h,w]    the model's relative depth
  {case}.post.idx / .val     1024 positions (flat, f32-exact) and values of
                             post_process_depth_estimation at the original size, plus
  {case}.post.stats          [sum, max, min] of the whole post-processed map
  {case}.p518.idx / .val / .stats   the same sampling of pixel_values with the 518 settings,
                             .shape [h, w]
  astronaut-256.metric_depth [1,h,w]  the same weights with `depth_estimation_type: metric`,
                             `max_depth: 20`
  square56.pixel_values / .predicted_depth   a 56x56 random input (the position-embedding
                             grid itself: no interpolation)

and `resize_cases.json`: output sizes of `get_resize_output_image_size` (keep_aspect_ratio,
multiple of 14, Python's round-half-even) for many input shapes and targets.

Image processing is transformers' PIL backend (`DPTImageProcessorPil`, what
`AutoImageProcessor` returns when torchvision is not installed).

Needs /work/venv-ref (torch, transformers 5.24, safetensors, pillow, numpy). Deterministic.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
from transformers.models.dpt.image_processing_pil_dpt import (
    DPTImageProcessorPil,
    get_resize_output_image_size,
)

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "crates/cielr-scene/tests/fixtures/images"

# depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf preprocessor_config.json.
PREPROCESSOR_518 = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 518, "width": 518},
}

# (hidden, heads, neck_hidden_sizes, fusion_hidden_size) of the released V2 checkpoints.
VARIANTS = {
    "small": (384, 6, [48, 96, 192, 384], 64),
    "base": (768, 12, [96, 192, 384, 768], 128),
    "large": (1024, 16, [256, 512, 1024, 1024], 256),
}


def processor(cfg):
    kw = {k: v for k, v in cfg.items() if k != "image_processor_type"}
    return DPTImageProcessorPil(**kw)


def randomise(model, seed):
    """Every parameter random (not the near-identity init), scaled to keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        transposed = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(0.5 + 0.3 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2 and "embeddings" not in name and "token" not in name:
                # ConvTranspose2d stores [in, out, k, k]; with stride == k each output sees `in` inputs.
                fan_in = p.shape[0] if name in transposed else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        # Positive bias at the end so that the final ReLU lets most values through.
        model.head.conv3.bias.fill_(0.3)


def build(hidden, heads, layers, out_indices, image_size, neck, fusion, head_hidden, seed, mlp_ratio=4):
    torch.manual_seed(seed)
    backbone = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=mlp_ratio,
        image_size=image_size,
        patch_size=14,
        out_indices=out_indices,
        reshape_hidden_states=False,
        apply_layernorm=True,
        layerscale_value=1.0,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=hidden,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=neck,
        fusion_hidden_size=fusion,
        head_hidden_size=head_hidden,
        depth_estimation_type="relative",
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    randomise(model, seed)
    return model


def sample(t, n, seed):
    flat = t.reshape(-1)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(flat.numel(), generator=g)[:n].sort().values
    assert flat.numel() < 2**24, "indices must be exact in f32"
    stats = torch.tensor([flat.double().sum().item(), flat.max().item(), flat.min().item()])
    return idx.float(), flat[idx].contiguous(), stats.float()


def run(model, pixel_values):
    with torch.no_grad():
        bb = model.backbone(pixel_values)
        out = model(pixel_values=pixel_values)
    return bb.feature_maps, out


def tiny(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build(24, 2, 4, [1, 2, 3, 4], 56, [8, 12, 16, 24], 12, 8, seed=0, mlp_ratio=2)
    model.save_pretrained(out_dir)
    cfg = dict(PREPROCESSOR_518, size={"height": 70, "width": 70})
    (out_dir / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out_dir / "preprocessor_config.518.json").write_text(json.dumps(PREPROCESSOR_518, indent=2) + "\n")
    proc, proc518 = processor(cfg), processor(PREPROCESSOR_518)
    ref = {}
    for k, case in enumerate(["chelsea", "astronaut-256"]):
        image = Image.open(IMAGES / f"{case}.png").convert("RGB")
        pv = proc(images=image, return_tensors="pt")["pixel_values"]
        maps, out = run(model, pv)
        ref[f"{case}.pixel_values"] = pv.contiguous()
        for i, m in enumerate(maps):
            ref[f"{case}.feature_map.{i}"] = m.contiguous()
        ref[f"{case}.predicted_depth"] = out.predicted_depth.contiguous()
        post = proc.post_process_depth_estimation(out, target_sizes=[(image.height, image.width)])
        post = post[0]["predicted_depth"]
        assert tuple(post.shape) == (image.height, image.width)
        idx, val, stats = sample(post, 1024, 10 + k)
        ref[f"{case}.post.idx"], ref[f"{case}.post.val"], ref[f"{case}.post.stats"] = idx, val, stats
        p518 = proc518(images=image, return_tensors="pt")["pixel_values"]
        idx, val, stats = sample(p518, 1024, 20 + k)
        ref[f"{case}.p518.idx"], ref[f"{case}.p518.val"], ref[f"{case}.p518.stats"] = idx, val, stats
        ref[f"{case}.p518.shape"] = torch.tensor(list(p518.shape[2:]), dtype=torch.float32)
        d = out.predicted_depth
        print(
            f"{case}: pixel_values {tuple(pv.shape)}, depth {tuple(d.shape)} "
            f"range [{d.min():.3f}, {d.max():.3f}], zeros {(d == 0).float().mean():.2%}, "
            f"518 input {tuple(p518.shape)}"
        )
    # The same weights with a metric head (sigmoid times max_depth).
    metric = build(24, 2, 4, [1, 2, 3, 4], 56, [8, 12, 16, 24], 12, 8, seed=0, mlp_ratio=2)
    metric.config.depth_estimation_type, metric.config.max_depth = "metric", 20
    metric.head = type(metric.head)(metric.config)
    metric.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref["astronaut-256.metric_depth"] = metric(pixel_values=ref["astronaut-256.pixel_values"]).predicted_depth
    g = torch.Generator().manual_seed(5)
    pv = torch.randn(1, 3, 56, 56, generator=g)
    _, out = run(model, pv)
    ref["square56.pixel_values"] = pv
    ref["square56.predicted_depth"] = out.predicted_depth.contiguous()
    save_file(ref, out_dir / "reference.safetensors")

    # Resize rule cases (the processor's own function on a dummy array of each shape).
    cases = []
    shapes = [(300, 451), (256, 256), (518, 49), (518, 63), (49, 518), (1, 1), (13, 700), (1080, 1920),
              (480, 640), (333, 517), (777, 518), (21, 35), (7, 7), (1000, 3)]
    shapes += [(h, w) for h in range(20, 400, 37) for w in range(15, 500, 53)]
    for target, mult, keep in [(518, 14, True), (70, 14, True), (518, 14, False), (384, 32, True), (384, 1, True)]:
        for h, w in shapes:
            s = get_resize_output_image_size(np.zeros((3, h, w)), (target, target), keep, mult)
            cases.append({"in": [h, w], "target": target, "multiple": mult, "keep_aspect_ratio": keep,
                          "out": [int(s.height), int(s.width)]})
    (out_dir / "resize_cases.json").write_text(json.dumps(cases) + "\n")
    for f in sorted(out_dir.iterdir()):
        print(f"  {f.name}: {f.stat().st_size} bytes")


def full(out_dir, variant):
    hidden, heads, neck, fusion = VARIANTS[variant]
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build(hidden, heads, 12 if variant != "large" else 24,
                  [3, 6, 9, 12] if variant != "large" else [5, 12, 18, 24], 518, neck, fusion, 32, seed=1)
    model.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_518, indent=2) + "\n")
    proc = processor(PREPROCESSOR_518)
    image = Image.open(IMAGES / "chelsea.png").convert("RGB")
    # The 518x518 input: chelsea through the real processor settings, then resized exactly.
    sq = dict(PREPROCESSOR_518, keep_aspect_ratio=False)
    pv = processor(sq)(images=image, return_tensors="pt")["pixel_values"]
    assert tuple(pv.shape) == (1, 3, 518, 518)
    torch.set_num_threads(2)
    maps, out = run(model, pv)
    t = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            model(pixel_values=pv)
            t.append(time.perf_counter() - t0)
    ref = {"pixel_values": pv.contiguous(), "predicted_depth": out.predicted_depth.contiguous()}
    for i, m in enumerate(maps):
        ref[f"feature_map.{i}"] = m.contiguous()
    save_file(ref, out_dir / "reference.safetensors")
    (out_dir / "torch_timing.json").write_text(json.dumps({"forward_s_min": min(t), "runs": t}) + "\n")
    d = out.predicted_depth
    print(f"{variant}: depth {tuple(d.shape)} range [{d.min():.3f}, {d.max():.3f}], "
          f"zeros {(d == 0).float().mean():.2%}; torch forward min {min(t):.2f} s (2 threads)")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if mode == "tiny":
        tiny(Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-scene/tests/fixtures/depth-anything-tiny")
    elif mode == "full":
        full(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "small")
    else:
        sys.exit(__doc__)
