"""The torch side of the `e2e` row (tools/gpu/ref.py e2e): the same CIELR edit, stage by stage,
run with the reference libraries' own stage implementations on the checkpoints `build_e2e`
wrote, so each of our stage times gets a ratio.

Stages (the same work as gpu_check's `run_e2e`, same image, same settings):

- `e2e-ssr`: OWLv2 (transformers `Owlv2Processor` + `Owlv2ForObjectDetection` on the 4 queries,
  `post_process_grounded_object_detection` at threshold 0), SAM automatic masks (the official
  `segment_anything` `SamAutomaticMaskGenerator` on the same weights, with the paper's
  generator settings and ours' zero score thresholds: 16 points per side, one crop layer with
  half the points, stability offset 0.7, NMS 0.7, 64 points per batch, small-region removal
  when cv2 is there) and Depth Anything V2 (`post_process_depth_estimation` back to the image
  size).  Our SSR also labels, merges and samples depth per mask on the host; torch has no
  counterpart of that part, so our row does a little more work than torch's.  transformers'
  `mask-generation` pipeline cannot stand in: it needs the same number of points in every crop
  layer (the paper halves them).  With `E2E_SEGMENTER=sam2` no torch segmenter runs (the
  official `sam2` package is not carried) and the SSR row says so.
- `e2e-plan-round-N`: transformers `Qwen2ForCausalLM` with the LLM's `config.json` (random
  init on the device), `generate` greedy from the same number of pseudo-random prompt tokens
  for exactly `generate` new tokens (no stop token), a fresh KV cache each round.
- `e2e-sd-inpaint-N`: diffusers `StableDiffusionInpaintPipeline` from the written folder (no
  safety checker), the same prompt, central mask, steps and guidance as ours, the image back
  as numpy.

Protocol as ours: one cold pass, then one timed pass; each stage is device-synchronised.
"""

import time

import numpy as np
import torch
from PIL import Image

from devutil import on_device, sync

PROMPT = "a red armchair"  # gpu_check's e2e prompt
GUIDANCE = 7.5


def _timed(dev, fn):
    sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn()
    sync(dev)
    return (time.perf_counter() - t0) * 1e3


def central_mask(n):
    """The edit mask ours uses: the central box [n/4, 3n/4) on both axes."""
    m = np.zeros((n, n), np.uint8)
    m[n // 4:3 * n // 4, n // 4:3 * n // 4] = 255
    return Image.fromarray(m)


def _official_sam(d, dev):
    """The official `segment_anything` `Sam` holding the weights of our SAM checkpoint `d`
    (transformers names mapped back through tools/parity/sam.py's `official_to_hf`)."""
    import json
    from safetensors.torch import load_file
    import sam as sp  # tools/parity/sam.py; stands in for torchvision when it is missing
    cfg = json.loads((d / "config.json").read_text())
    v, pe, md = cfg["vision_config"], cfg["prompt_encoder_config"], cfg["mask_decoder_config"]
    c = dict(hidden=v["hidden_size"], depth=v["num_hidden_layers"], heads=v["num_attention_heads"],
             global_attn=v["global_attn_indexes"], window=v["window_size"], image_size=v["image_size"],
             patch=v["patch_size"], mlp_ratio=v["mlp_dim"] / v["hidden_size"], out_chans=v["output_channels"],
             mask_in_chans=pe["mask_input_channels"], dec_mlp=md["mlp_dim"], dec_heads=md["num_attention_heads"],
             iou_hidden=md["iou_head_hidden_dim"])
    sam = sp.build_official(c, 0)
    names = sp.official_to_hf({k: k for k in sam.state_dict()})  # transformers name -> official name
    hf = load_file(str(d / "model.safetensors"))
    # The positional Gaussian is saved once (transformers ties its two names): take either.
    missing, unexpected = sam.load_state_dict({o: hf[h] for h, o in names.items() if h in hf}, strict=False)
    assert set(missing) <= {"pixel_mean", "pixel_std"} and not unexpected, (missing, unexpected)
    return sam.to(dev).eval(), sp


def _segmenter(out, dev):
    """(what, generate(image)) for the SSR's automatic masks, or (what, reason) when the
    reference cannot run here.  SAM: the official `segment_anything` generator (the code our
    generator matches mask for mask), with the paper's settings and ours' zero thresholds."""
    import json
    d = out / "sam"
    kind = json.loads((d / "config.json").read_text()).get("model_type", "sam")
    if kind != "sam":
        return kind, (f"no torch segmenter for {kind}: the official sam2 package is not carried, and "
                      "transformers' mask-generation pipeline cannot use fewer points in the crop layer")
    try:
        sam, sp = _official_sam(d, dev)
        from segment_anything import SamAutomaticMaskGenerator
    except Exception as e:  # reported in the row, not hidden
        return kind, f"segment_anything unavailable: {type(e).__name__}: {e}"[:200]
    try:
        import cv2  # noqa: F401  (small-region removal)
        min_area, what = 1, "segment_anything"
    except ImportError:
        min_area, what = 0, "segment_anything without small-region removal (no cv2)"
    if sp._SHIMMED:
        what += ", torchvision stand-in NMS"
    gen = SamAutomaticMaskGenerator(sam, points_per_side=16, points_per_batch=64, pred_iou_thresh=0.0,
                                    stability_score_thresh=0.0, stability_score_offset=0.7,
                                    box_nms_thresh=0.7, crop_n_layers=1, crop_nms_thresh=0.7,
                                    crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=2,
                                    min_mask_region_area=min_area, output_mode="binary_mask")
    return what, lambda image: gen.generate(np.asarray(image))


def run(out, dev, meta):
    """Times the torch edit; returns the rows' `{stage: {"torch_ms": ..} | {"error": ..}}` and a
    note.  `meta` is build_e2e's settings (prompt, generate, rounds, steps, queries)."""
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import (AutoImageProcessor, AutoModelForDepthEstimation, Owlv2ForObjectDetection,
                              Owlv2Processor, Qwen2Config, Qwen2ForCausalLM)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    image = Image.open(out / "image.png").convert("RGB")
    n = image.width
    mask = central_mask(n)
    queries = meta["queries"]

    t0 = time.perf_counter()
    owl_proc = Owlv2Processor.from_pretrained(out / "owlv2")
    owl = Owlv2ForObjectDetection.from_pretrained(out / "owlv2").to(dev).eval()
    seg_kind, segment = _segmenter(out, dev)
    depth_proc = AutoImageProcessor.from_pretrained(out / "depth")
    depth = AutoModelForDepthEstimation.from_pretrained(out / "depth").to(dev).eval()
    lcfg = Qwen2Config.from_json_file(str(out / "llm" / "config.json"))
    torch.manual_seed(0)
    llm = on_device(dev, lambda: Qwen2ForCausalLM(lcfg)).to(dev).eval()
    sd = StableDiffusionInpaintPipeline.from_pretrained(out / "sd", safety_checker=None, feature_extractor=None,
                                                        requires_safety_checker=False).to(dev)
    sd.set_progress_bar_config(disable=True)
    load_ms = (time.perf_counter() - t0) * 1e3

    def ssr(img):
        inputs = owl_proc(text=[queries], images=img, return_tensors="pt").to(dev)
        res = owl(**inputs)
        owl_proc.post_process_grounded_object_detection(res, threshold=0.0, target_sizes=[(img.height, img.width)])
        if callable(segment):
            segment(img)
        d_in = depth_proc(images=img, return_tensors="pt").to(dev)
        d_out = depth(**d_in)
        depth_proc.post_process_depth_estimation(d_out, target_sizes=[(img.height, img.width)])

    g = torch.Generator().manual_seed(1)

    def plan_round():
        ids = torch.randint(0, lcfg.vocab_size, (1, meta["prompt"]), generator=g).to(dev)
        llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=meta["generate"],
                     min_new_tokens=meta["generate"], do_sample=False, eos_token_id=None, pad_token_id=0)

    def inpaint(img):
        sd(prompt=PROMPT, negative_prompt="", image=img, mask_image=mask, height=n, width=n, strength=1.0,
           num_inference_steps=meta["steps"], guidance_scale=GUIDANCE, output_type="np",
           generator=torch.Generator(dev).manual_seed(0))

    def one_pass(salt):
        img = np.array(image)
        img[0, 0, 0] ^= salt
        img = Image.fromarray(img)
        stages = {}
        stages["e2e-ssr"] = _timed(dev, lambda: ssr(img))
        for r in range(meta["rounds"]):
            stages[f"e2e-plan-round-{r + 1}"] = _timed(dev, plan_round)
        stages[f"e2e-sd-inpaint-{meta['steps']}"] = _timed(dev, lambda: inpaint(img))
        return stages

    cold = one_pass(1)
    warm = one_pass(2)
    rows = {k: {"torch_ms": v, "torch_cold_ms": cold[k]} for k, v in warm.items()}
    rows["e2e-total"] = {"torch_ms": sum(warm.values())}
    rows["e2e-total-cold"] = {"torch_ms": sum(cold.values())}
    rows["e2e-ssr"]["note"] = f"masks by {seg_kind}"
    if not callable(segment):
        # Without its segmenter torch's SSR (and so its total) is not the same work: no ratio.
        for k in ("e2e-ssr", "e2e-total", "e2e-total-cold"):
            rows[k] = {"torch_ms": None, "note": f"not comparable, torch ran the SSR without a segmenter ({segment})"}
    rows["e2e-load"] = {"torch_ms": load_ms}
    return rows, seg_kind
