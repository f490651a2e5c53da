#!/usr/bin/env python3
"""Reference side of the GPU check harness (issue 8; driven by tools/gpu/check.sh).

    ref.py MODEL SIZE DEVICE OUT_DIR [REPEATS]

MODEL: clip | owlv2 | sam | sam-decoder | depth | unet | vae | lama | llm | e2e | sd-inpaint.
SIZE: reduced | full.
DEVICE: cpu | cuda.  Builds the model with the reference library (transformers, diffusers,
LaMa's own module code) from a fixed seed with random weights, writes its checkpoint in the
format cielr loads (config.json + safetensors) and `inputs.safetensors`, runs it on DEVICE in
f32 (reference outputs -> `reference.safetensors`), times it (warm-up, device-synchronised,
median of REPEATS) in f32 and in half precision (fp16 on CUDA, bf16 on CPU) and writes
`torch.json`: one row per (name, precision) with torch_ms and, for half, the half output's
max abs / rel error against the f32 output.  Nothing big is committed or carried: everything is
generated at run time.

A case may split its outputs over several rows (`sam-decoder`: mask logits and IoU scores);
the first row carries the case's time, the others `torch_ms: null`.  `e2e` writes the
random-weight checkpoints of the whole CIELR edit (OWLv2, SAM, Depth Anything V2, SD inpainting,
the LLM's config.json: our side initialises the LLM's random weights itself) and the image,
then times the same edit stage by stage with the reference libraries (tools/gpu/e2e_torch.py;
`E2E_TORCH=0` skips it): time-only rows, no outputs compared.
"""

import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from devutil import on_device, sync

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "parity"))


def timed_ms(fn, dev, repeats, warmup=2):
    """Median wall time in ms of `fn()` after `warmup` calls, synchronised on `dev`."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync(dev)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(dev)
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def errors(a, b):
    a = a.detach().float().cpu()
    b = b.detach().float().cpu()
    d = (a - b).abs()
    return float(d.max()), float((d / b.abs().clamp_min(1e-3)).max())


def half_dtype(dev):
    return torch.float16 if dev.type == "cuda" else torch.bfloat16


def seed_all(seed):
    torch.manual_seed(seed)


def perturb(model, seed, scale=0.02):
    """Random (non-default) norm affines and biases, so they are tested too; weights that the
    library's init leaves (near) constant (transformers 5 leaves some of SamModel's at ~0) get
    N(0, 1/fan_in) values, so no output degenerates to a constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and p.numel() > 1 and float(p.float().std()) < 1e-6:
                fan_in = p[0].numel() if "pos" not in name else 1
                p.copy_(torch.randn(p.shape, generator=g) * (fan_in ** -0.5 if "pos" not in name else scale))
            elif name.endswith("bias"):
                p.copy_(scale * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- models
# Each builder returns (cases, inputs) where cases is a list of
# (row_name, model, fn(model, inputs) -> {output_name: tensor}); inputs a dict of f32 tensors.

def build_clip(size, out):
    from transformers import CLIPConfig, CLIPModel
    if size == "full":  # openai/clip-vit-base-patch32 dimensions (CLIPConfig defaults)
        cfg = CLIPConfig()
        batch = 8
    else:
        cfg = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, vocab_size=100, max_position_embeddings=16),
            vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, image_size=64, patch_size=16),
            projection_dim=32)
        batch = 2
    seed_all(1)
    m = CLIPModel(cfg).eval()
    perturb(m, 2)
    m.save_pretrained(out)
    s = cfg.vision_config.image_size
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(3))
    def fn(m, i):
        f = m.get_image_features(pixel_values=i["pixel_values"])
        return {"image_embeds": getattr(f, "pooler_output", f)}
    return [("clip-vision", m, fn)], \
        {"pixel_values": x}


def tiny_owlv2_config(vocab_size):
    """The reduced-size OWLv2: a 64-wide, 2-layer vision tower at 64 px, a 1-layer text tower."""
    from transformers import Owlv2Config
    return Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=vocab_size, max_position_embeddings=16),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=16),
        projection_dim=32)


def build_owlv2(size, out):
    from transformers import Owlv2Config, Owlv2ForObjectDetection
    if size == "full":  # google/owlv2-base-patch16-ensemble dimensions, 960x960
        cfg = Owlv2Config(vision_config=dict(image_size=960, patch_size=16))
    else:
        cfg = tiny_owlv2_config(vocab_size=100)
    seed_all(1)
    m = Owlv2ForObjectDetection(cfg).eval()
    perturb(m, 2)
    m.save_pretrained(out)
    s = cfg.vision_config.image_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(3))

    def fn(m, i):
        feats = m.image_embedder(pixel_values=i["pixel_values"])[0]
        return {"image_feats": feats.reshape(-1, feats.shape[-1])}
    return [("owlv2-vision", m, fn)], {"pixel_values": x}


def sam_model(size, out):
    """A random SamModel (ViT-B at full size), its checkpoint and preprocessor config in `out`."""
    from transformers import SamConfig, SamModel
    if size == "full":  # facebook/sam-vit-base, 1024x1024
        vc = dict()
    else:
        vc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                  image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1], num_pos_feats=16,
                  output_channels=32)
    cfg = SamConfig(vision_config=vc,
                    prompt_encoder_config=dict(hidden_size=vc.get("output_channels", 256),
                                               image_size=vc.get("image_size", 1024),
                                               patch_size=vc.get("patch_size", 16)),
                    mask_decoder_config=dict(hidden_size=vc.get("output_channels", 256)))
    seed_all(1)
    m = SamModel(cfg).eval()
    perturb(m, 2)
    m.save_pretrained(out)
    s = cfg.vision_config.image_size
    # SamImageProcessor's keys, sized to this image_size (the loader checks they agree)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SamImageProcessor", "size": {"longest_edge": s},
        "pad_size": {"height": s, "width": s}, "do_pad": True, "do_normalize": True,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, indent=1))
    return m, cfg


def build_sam(size, out):
    m, cfg = sam_model(size, out)
    s = cfg.vision_config.image_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(3))
    return [("sam-encoder", m, lambda m, i: {"image_embeddings": m.get_image_embeddings(i["pixel_values"])})], \
        {"pixel_values": x}


def build_sam_decoder(size, out):
    """Prompt encoder + mask decoder on given image embeddings: a batch of one-point prompts
    (64 at full size), multimask output; low-resolution logits and IoU predictions."""
    m, cfg = sam_model(size, out)
    s = cfg.vision_config.image_size
    c, g = cfg.mask_decoder_config.hidden_size, cfg.prompt_encoder_config.image_embedding_size
    n = 64 if size == "full" else 4
    gen = torch.Generator().manual_seed(8)
    inputs = {"image_embeddings": torch.randn(1, c, g, g, generator=gen),
              # points in the model's input frame (what SamProcessor hands the model)
              "input_points": torch.rand(1, n, 1, 2, generator=gen) * s,
              # labels travel as f32 (the harness's inputs are f32); 1 = foreground
              "input_labels": torch.ones(1, n, 1)}

    def fn(m, i):
        o = m(image_embeddings=i["image_embeddings"], input_points=i["input_points"],
              input_labels=i["input_labels"].long(), multimask_output=True)
        return {"pred_masks": o.pred_masks[0], "iou_scores": o.iou_scores[0]}
    return [("sam-decoder", m, fn, {"sam-decoder": "pred_masks", "sam-decoder-iou": "iou_scores"})], inputs


def build_depth(size, out):
    import depth_anything as da
    if size == "full":  # Depth-Anything-V2-Small, 518x518
        hidden, heads, neck, fusion = da.VARIANTS["small"]
        m = da.build(hidden, heads, 12, [3, 6, 9, 12], 518, neck, fusion, 32, seed=1)
        s = 518
    else:
        m = da.build(64, 2, 4, [1, 2, 3, 4], 112, [16, 32, 64, 64], 32, 16, seed=1)
        s = 112
    m.eval()
    m.save_pretrained(out)
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(3))
    return [("depth-anything", m, lambda m, i: {"predicted_depth": m(pixel_values=i["pixel_values"]).predicted_depth})], \
        {"pixel_values": x}


def build_unet(size, out):
    from diffusers import UNet2DConditionModel
    import diffusers_unet as du
    if size == "full":  # SD-1.5-inpainting UNet, 512x512 (64x64 latents), batch 2 (CFG), 77 tokens
        cfg, latent, tokens = du.SD15_INPAINTING_UNET, 64, 77
    else:
        cfg = dict(du.CONFIGS["unet-tiny-sd15"], block_out_channels=[16, 32], norm_num_groups=8,
                   cross_attention_dim=16)
        latent, tokens = 16, 8
    seed_all(3)
    m = UNet2DConditionModel(**cfg).eval()
    perturb(m, 4)
    m.save_pretrained(out, safe_serialization=True, max_shard_size="100GB")
    g = torch.Generator().manual_seed(4)
    inputs = {"sample": torch.randn(2, cfg["in_channels"], latent, latent, generator=g),
              "encoder_hidden_states": torch.randn(2, tokens, cfg["cross_attention_dim"], generator=g)}
    return [("unet-step", m, lambda m, i: {"out": m(i["sample"], 501, i["encoder_hidden_states"]).sample})], inputs


def build_vae(size, out):
    import diffusers_sched_vae as dv
    if size == "full":  # SD VAE decoder, 64x64 latents -> 512x512
        cfg, latent = dv.SD_VAE, 64
    else:
        cfg = dict(dv.SD_VAE, block_out_channels=[16, 32], norm_num_groups=8, layers_per_block=1,
                   down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
        latent = 16
    m = dv.random_vae(cfg, 11, f16_values=False)
    m.save_pretrained(out, safe_serialization=True)
    z = torch.randn(1, cfg.get("latent_channels", 4), latent, latent,
                    generator=torch.Generator().manual_seed(5))
    return [("vae-decode", m, lambda m, i: {"decoded": m.decode(i["latents"]).sample})], {"latents": z}


def build_lama(size, out):
    import tempfile
    import lama
    Gen = lama.import_lama(tempfile.mkdtemp(prefix="lama-official-"))
    if size == "full":  # big-lama's generator, 512x512
        ngf, n_down, n_blocks, s = 64, 3, 18, 512
    else:
        ngf, n_down, n_blocks, s = 8, 2, 2, 64
    g = torch.Generator().manual_seed(6)
    def sample(n):
        img = torch.rand(1, 3, n, n, generator=g)
        mask = (torch.rand(1, 1, n // 8, n // 8, generator=g) > 0.7).float()
        mask = torch.nn.functional.interpolate(mask, size=(n, n), mode="nearest")
        return torch.cat([img * (1 - mask), mask], dim=1)
    calibration = sample(min(s, 256))
    gen = lama.build(Gen, ngf, n_down, n_blocks, seed=1, calibration=calibration)
    lama.save_and_convert(gen, str(out), ngf, n_down, n_blocks)
    x = sample(s)
    return [("lama", gen, lambda m, i: {"logits": m.model[:-1](i["input"])})], {"input": x}


def qwen2_config(hidden, intermediate, layers, heads, tiny=False):
    """A Qwen2 configuration with Qwen2.5's fixed choices (2 key/value heads, tied head, rope
    theta 1e6); the real vocabulary and context unless `tiny`."""
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=512 if tiny else 151936, hidden_size=hidden,
                       intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=2,
                       max_position_embeddings=256 if tiny else 32768, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True)


def build_llm(size, out):
    from transformers import Qwen2ForCausalLM
    if size == "full":  # Qwen2.5-0.5B dimensions
        cfg = qwen2_config(896, 4864, 24, 14)
        prompt, decode = 128, 16
    else:
        cfg = qwen2_config(64, 128, 2, 4, tiny=True)
        prompt, decode = 16, 4
    seed_all(1)
    m = Qwen2ForCausalLM(cfg).eval()
    perturb(m, 2)
    m.save_pretrained(out)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (1, prompt + decode), generator=g)
    # token ids travel as f32 (exact below 2^24)
    inputs = {"input_ids": ids.float()}

    def prefill(m, i):
        ids = i["input_ids"].long()[:, :prompt]
        return {"prefill_logits": m(input_ids=ids).logits[0, -1:]}

    def decode_all(m, i):
        from transformers import DynamicCache
        ids = i["input_ids"].long()
        cache = DynamicCache(config=m.config)
        m(input_ids=ids[:, :prompt], past_key_values=cache, use_cache=True)
        outs = []
        for k in range(decode):
            o = m(input_ids=ids[:, prompt + k:prompt + k + 1], past_key_values=cache, use_cache=True)
            outs.append(o.logits[0, -1:])
        return {"decode_logits": torch.cat(outs, 0)}
    return [("llm-prefill", m, prefill), ("llm-decode", m, decode_all)], inputs, \
        {"prompt": prompt, "decode": decode}


def build_e2e(size, out, dev):
    """Random-weight checkpoints of the whole CIELR edit for the `e2e` timing (its torch side
    is tools/gpu/e2e_torch.py).  Full size: OWLv2 large/14 at 1008 (the paper's detector), SAM ViT-B
    (the harness's SAM; `E2E_SEGMENTER=sam2` writes the paper's SAM 2.1 hiera-large instead),
    Depth Anything V2 large (ViT-L,
    518), SD-1.5 inpainting (UNet, VAE, CLIP ViT-L/14 text encoder, 77 tokens) and the
    config.json of a Qwen2.5-1.5B-shaped LLM (our side initialises its random weights: a 6 GB
    checkpoint would cost more time to write and read than the edit itself).  The tokenizers
    are the repository's tiny test fixtures (token ids only have to be in range).  Returns
    the run's settings for torch.json."""
    import shutil
    import numpy as np
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel, Owlv2Config, Owlv2ForObjectDetection
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import depth_anything as da
    import diffusers_sched_vae as dv
    import diffusers_unet as du
    full = size == "full"
    fixtures = ROOT / "crates"
    owl_fx = fixtures / "cielr-scene/tests/fixtures/owlv2-tiny"
    sd_fx = fixtures / "cielr-diffusion/tests/fixtures/sd-inpaint-tiny"

    # OWLv2
    if full:
        ocfg = Owlv2Config(
            text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                             num_hidden_layers=12, vocab_size=49408),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                               num_hidden_layers=24, image_size=1008, patch_size=14),
            projection_dim=768)
    else:
        ocfg = tiny_owlv2_config(vocab_size=133)
    seed_all(1)
    d = out / "owlv2"
    on_device(dev, lambda: Owlv2ForObjectDetection(ocfg)).eval().save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(owl_fx / f, d / f)
    pp = json.loads((owl_fx / "preprocessor_config.json").read_text())
    s = ocfg.vision_config.image_size
    pp["size"] = {"height": s, "width": s}
    (d / "preprocessor_config.json").write_text(json.dumps(pp, indent=1))

    # The segmenter: SAM ViT-B (perturbed as in the sam rows, so no output is a constant), or
    # with E2E_SEGMENTER=sam2 the paper's SAM 2.1 (hiera-large at full size; the SSR builder
    # picks the model from config.json and runs its mask generator with `use_m2m`).
    if os.environ.get("E2E_SEGMENTER", "sam") == "sam2":
        import sam2
        seed_all(1)
        sam2.write_checkpoint(sam2.full_config() if full else sam2.tiny_config(), out / "sam")
    else:
        sam_model(size, out / "sam")

    # Depth Anything V2
    d = out / "depth"
    if full:
        hidden, heads, neck, fusion = da.VARIANTS["large"]
        m = da.build(hidden, heads, 24, [5, 12, 18, 24], 518, neck, fusion, 32, seed=1)
        pp = dict(da.PREPROCESSOR_518)
    else:
        m = da.build(64, 2, 4, [1, 2, 3, 4], 112, [16, 32, 64, 64], 32, 16, seed=1)
        pp = dict(da.PREPROCESSOR_518, size={"height": 112, "width": 112})
    m.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(pp, indent=1))
    del m

    # SD inpainting
    d = out / "sd"
    tok_vocab = len(json.loads((sd_fx / "tokenizer/tokenizer.json").read_text())["model"]["vocab"])
    if full:
        ucfg, vcfg = du.SD15_INPAINTING_UNET, dv.SD_VAE
        tcfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                              num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                              hidden_act="quick_gelu", bos_token_id=tok_vocab - 2, eos_token_id=tok_vocab - 1,
                              pad_token_id=tok_vocab - 1)
    else:
        ucfg = dict(du.CONFIGS["unet-tiny-sd15"], block_out_channels=[16, 32], norm_num_groups=8,
                    cross_attention_dim=16, attention_head_dim=8)
        vcfg = dict(dv.SD_VAE, block_out_channels=[16, 32], norm_num_groups=8, layers_per_block=1,
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
        tcfg = CLIPTextConfig(vocab_size=tok_vocab, hidden_size=16, intermediate_size=32,
                              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                              hidden_act="quick_gelu", bos_token_id=tok_vocab - 2, eos_token_id=tok_vocab - 1,
                              pad_token_id=tok_vocab - 1)
    seed_all(3)
    on_device(dev, lambda: UNet2DConditionModel(**ucfg)).eval().save_pretrained(
        d / "unet", safe_serialization=True, max_shard_size="100GB")
    on_device(dev, lambda: AutoencoderKL(**vcfg)).eval().save_pretrained(d / "vae", safe_serialization=True)
    te = on_device(dev, lambda: CLIPTextModel(tcfg)).eval()
    te.save_pretrained(d / "text_encoder")
    for f in (d / "text_encoder").glob("*.safetensors"):
        f.unlink()
    # Published SD checkpoints name the weights `text_model.*` (transformers 5 drops the prefix).
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v.detach().cpu().contiguous()
               for k, v in te.state_dict().items()}, str(d / "text_encoder" / "model.safetensors"))
    del te
    shutil.copytree(sd_fx / "tokenizer", d / "tokenizer")
    shutil.copytree(sd_fx / "scheduler", d / "scheduler")
    shutil.copy(sd_fx / "model_index.json", d / "model_index.json")

    # LLM: config only (Qwen2.5-1.5B dimensions at full size)
    if full:
        lcfg = qwen2_config(1536, 8960, 28, 12)
        prompt, generate = 256, 32
    else:
        lcfg = qwen2_config(64, 128, 2, 4, tiny=True)
        prompt, generate = 16, 4
    (out / "llm").mkdir(parents=True, exist_ok=True)
    lcfg.to_json_file(str(out / "llm" / "config.json"))

    # The image: smooth random colours, 512x512 (64x64 reduced)
    n = 512 if full else 64
    g = torch.Generator().manual_seed(9)
    low = torch.rand(1, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(n, n), mode="bilinear", align_corners=False)[0]
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out / "image.png")
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"prompt": prompt, "generate": generate, "rounds": 2, "steps": 20,
            "queries": ["cat", "dog", "chair", "lamp"], "image_size": n}


def build_sd_inpaint(size, out, dev, repeats):
    """The whole inpainting pipeline against diffusers' `StableDiffusionInpaintPipeline`:
    writes a random SD-1.5-inpainting-layout folder (model_index.json, unet/ with 9 input
    channels, vae/, text_encoder/ with `text_model.*` names, tokenizer/ as vocab.json +
    merges.txt (the tiny CLIP BPE fixture, 77 tokens), scheduler/ (DDIM, SD-1.5 settings)),
    `inputs.safetensors` (image [1,3,H,W] in [0,1], mask [1,1,H,W] of 0/1, noise [1,4,h,w]:
    the injected `latents`, so both sides start from the same noise), runs the pipeline (prompt
    + negative prompt, 20 steps, guidance 7.5, strength 1, `padding_mask_crop=None`, no
    safety checker, `output_type="np"`) and writes the final image and the final latents (from
    `callback_on_step_end`) to `reference.safetensors` and the rows to `torch.json`.

    Full size: the real SD-1.5 widths (UNet [320, 640, 1280, 1280], SD VAE, CLIP ViT-L/14 text
    encoder) at 512x512.  Reduced: the tiny widths of the `unet` / `vae` rows (factor-2 VAE) at
    64x64 (`SD_INPAINT_PX` in the environment sets another side).  diffusers samples the VAE
    posterior of the masked image with its generator; cielr uses its mean, so
    `retrieve_latents` is patched to the mean (as in tools/parity/diffusers_inpaint.py): the
    only departure from the stock pipeline.  The f32 reference runs with TF32 off (cuDNN and
    matmul), so it is f32 arithmetic on CUDA too.

    Timing: the reference run is the warm-up, then the median of `min(repeats, 2)` runs (full)
    or `min(repeats, 3)` (reduced); the same count is written as `timing_repeats` for our side.
    Half: the same pipeline cast in place (fp16 on CUDA, bf16 on CPU) after the f32 runs."""
    import shutil
    import numpy as np
    from PIL import Image
    import diffusers
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as sdi
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    import diffusers_sched_vae as dv
    import diffusers_unet as du
    full = size == "full"
    tok_dir = ROOT / "crates/cielr-diffusion/tests/fixtures/clip-bpe-tiny"
    steps, guidance = 20, 7.5
    prompt, negative = "a red armchair by the window", "blurry, low quality"
    # SD_INPAINT_PX: another image side (a multiple of 64 at full size, of 4 reduced), e.g. the
    # full widths at a small image for a CPU check of the full-size path.
    n = int(os.environ.get("SD_INPAINT_PX", 512 if full else 64))
    t_repeats = min(repeats, 2 if full else 3)

    tok = CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"),
                        pad_token="!", model_max_length=77)
    vocab = tok.get_vocab()
    if full:
        ucfg, vcfg = du.SD15_INPAINTING_UNET, dv.SD_VAE
        width, layers, heads, inter = 768, 12, 12, 3072
    else:
        ucfg = dict(du.CONFIGS["unet-tiny-sd15"], block_out_channels=[16, 32], norm_num_groups=8,
                    cross_attention_dim=16, sample_size=n // 2)
        vcfg = dict(dv.SD_VAE, block_out_channels=[16, 32], norm_num_groups=8, layers_per_block=1,
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                    sample_size=n)
        width, layers, heads, inter = 16, 2, 2, 32
    tcfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=inter,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["!"])
    seed_all(3)
    unet = on_device(dev, lambda: UNet2DConditionModel(**ucfg)).eval()
    perturb(unet, 4)
    vae = dv.random_vae(vcfg, 11, f16_values=False)
    seed_all(5)
    te = on_device(dev, lambda: CLIPTextModel(tcfg)).eval()
    perturb(te, 6)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1)

    # The folder, as diffusers lays out an inpainting checkpoint.
    unet.save_pretrained(out / "unet", safe_serialization=True, max_shard_size="100GB")
    vae.save_pretrained(out / "vae", safe_serialization=True)
    te.save_pretrained(out / "text_encoder")
    for f in (out / "text_encoder").glob("*.safetensors"):
        f.unlink()
    # Published SD checkpoints name the weights `text_model.*` (transformers 5 drops the prefix).
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v.detach().cpu().contiguous()
               for k, v in te.state_dict().items()}, str(out / "text_encoder" / "model.safetensors"))
    sched.save_pretrained(out / "scheduler")
    (out / "tokenizer").mkdir(exist_ok=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, out / "tokenizer" / f)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False, "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2) + "\n")

    # Inputs: smooth random colours, a box mask whose edges are not on the latent grid.
    g = torch.Generator().manual_seed(9)
    low = torch.rand(1, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(n, n), mode="bilinear", align_corners=False)[0]
    img_u8 = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    m_u8 = np.zeros((n, n), np.uint8)
    m_u8[n * 3 // 16 + 3:n * 11 // 16 + 5, n // 4 + 1:n * 13 // 16 + 2] = 255
    f = 2 ** (len(vcfg["block_out_channels"]) - 1)  # the VAE's downsampling factor
    noise = torch.randn(1, vae.config.latent_channels, n // f, n // f, generator=torch.Generator().manual_seed(10))
    save_file({"image": torch.from_numpy(img_u8).permute(2, 0, 1)[None].float().div(255).contiguous(),
               "mask": torch.from_numpy(m_u8 > 127)[None, None].float().contiguous(),
               "noise": noise.contiguous()}, str(out / "inputs.safetensors"))

    # The stock pipeline at the settings cielr runs, but the posterior mean (see above).
    sdi.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                          scheduler=sched, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev, torch.float32)
    assert pipe.unet.config.in_channels == 9 and pipe.safety_checker is None
    image, mask = Image.fromarray(img_u8), Image.fromarray(m_u8)
    last = {}

    def on_step(p, i, t, kw):
        if i == steps - 1:
            last["latents"] = kw["latents"].detach().float().cpu().contiguous()
        return {}

    def run(dtype):
        last.clear()
        res = pipe(prompt=prompt, negative_prompt=negative, image=image, mask_image=mask,
                   height=n, width=n, padding_mask_crop=None, strength=1.0,
                   num_inference_steps=steps, guidance_scale=guidance, eta=0.0,
                   latents=noise.to(dev, dtype), output_type="np",
                   callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
        return {"image": torch.from_numpy(res.images).permute(0, 3, 1, 2).float().contiguous(),
                "latents": last["latents"]}

    names = {"image": f"sd-inpaint-{steps}", "latents": f"sd-inpaint-{steps}-latents"}
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = run(torch.float32)
    cold_ms = (time.perf_counter() - t0) * 1e3
    ms = timed_ms(lambda: run(torch.float32), dev, t_repeats, warmup=0)
    rows = [{"name": names[k], "precision": "f32", "torch_ms": ms if k == "image" else None}
            for k in ("image", "latents")]
    save_file(ref, str(out / "reference.safetensors"))
    hd = half_dtype(dev)
    hname = str(hd).replace("torch.", "")
    try:
        pipe.to(dev, hd)
        with torch.inference_mode():
            hout = run(hd)
        hms = timed_ms(lambda: run(hd), dev, t_repeats, warmup=0)
        for k in ("image", "latents"):
            ha, hr = errors(hout[k], ref[k])
            rows.append({"name": names[k], "precision": hname, "torch_ms": hms if k == "image" else None,
                         "torch_half_vs_f32_abs": ha, "torch_half_vs_f32_rel": hr})
    except Exception as e:  # reported, not hidden
        for k in ("image", "latents"):
            rows.append({"name": names[k], "precision": hname,
                         "error": f"torch half failed: {type(e).__name__}: {e}"[:200]})
    meta = {"model": "sd-inpaint", "size": size, "device": dev.type, "repeats": repeats,
            "timing_repeats": t_repeats, "torch_cold_ms": cold_ms, "prompt": prompt,
            "negative_prompt": negative, "steps": steps, "guidance": guidance, "strength": 1.0,
            "image_size": n, "scheduler": type(sched).__name__, "f32_tf32": False,
            "diffusers": diffusers.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "rows": rows}
    (out / "torch.json").write_text(json.dumps(meta, indent=1) + "\n")
    for r in rows:
        print(f"[torch] {r}")


BUILDERS = dict(clip=build_clip, owlv2=build_owlv2, sam=build_sam, depth=build_depth,
                **{"sam-decoder": build_sam_decoder, "sd-inpaint": None}, e2e=None,
                unet=build_unet, vae=build_vae, lama=build_lama, llm=build_llm)


def main():
    if len(sys.argv) < 5 or sys.argv[1] not in BUILDERS:
        sys.exit(__doc__)
    name, size, device, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    t0 = time.perf_counter()
    if name == "e2e":
        meta = build_e2e(size, out, dev)
        print(f"[torch] e2e {size}: random-weight checkpoints written in {time.perf_counter() - t0:.1f} s")
        rows = [{"name": "e2e", "precision": "f32", "torch_ms": None, "time_only": True,
                 "note": "no torch run (E2E_TORCH=0)"}]
        if os.environ.get("E2E_TORCH", "1") != "0":
            import e2e_torch
            t1 = time.perf_counter()
            try:
                stages, segmenter = e2e_torch.run(out, dev, meta)
                rows = [{"name": k, "precision": "f32", "time_only": True, **v} for k, v in stages.items()]
                meta["torch_segmenter"] = segmenter
                print(f"[torch] e2e {size} on {device}: the torch edit (segmenter: {segmenter}) "
                      f"loaded and ran twice in {time.perf_counter() - t1:.1f} s")
            except Exception as e:  # our side still runs; the table says why torch has no times
                rows[0]["note"] = f"torch edit failed: {type(e).__name__}: {e}"[:200]
                print(f"[torch] e2e: {rows[0]['note']}")
        meta.update({"model": name, "size": size, "device": device, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "rows": rows})
        (out / "torch.json").write_text(json.dumps(meta, indent=1) + "\n")
        for r in rows:
            print(f"[torch] {r}")
        return
    if name == "sd-inpaint":
        build_sd_inpaint(size, out, dev, repeats)
        print(f"[torch] sd-inpaint {size} on {device}: {time.perf_counter() - t0:.1f} s")
        return
    built = BUILDERS[name](size, out)
    cases, inputs = built[0], built[1]
    meta = built[2] if len(built) > 2 else {}
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(out / "inputs.safetensors"))
    dev_inputs = {k: v.to(dev) for k, v in inputs.items()}
    refs, rows = {}, []
    for case in cases:
        row, model, fn = case[:3]
        # row name -> output key; by default one row over every output of the case
        split = case[3] if len(case) > 3 else None
        model = model.to(dev).float()
        with torch.inference_mode():
            ref = fn(model, dev_inputs)
        refs.update({k: v.float().cpu().contiguous() for k, v in ref.items()})
        ms = timed_ms(lambda: fn(model, dev_inputs), dev, repeats)
        names = list(split) if split else [row]
        for k, r in enumerate(names):
            rows.append({"name": r, "precision": "f32", "torch_ms": ms if k == 0 else None})
        hd = half_dtype(dev)
        hname = str(hd).replace("torch.", "")
        try:
            hmodel = copy.deepcopy(model).to(hd)  # a copy: `.to` in place would round the f32 weights
            h_in = {k: (v.to(hd) if k != "input_ids" else v) for k, v in dev_inputs.items()}
            with torch.inference_mode():
                hout = fn(hmodel, h_in)
            hms = timed_ms(lambda: fn(hmodel, h_in), dev, repeats)
            for k, r in enumerate(names):
                keys = [split[r]] if split else list(ref)
                ha, hr = max((errors(hout[key], ref[key]) for key in keys), key=lambda e: e[0])
                rows.append({"name": r, "precision": hname, "torch_ms": hms if k == 0 else None,
                             "torch_half_vs_f32_abs": ha, "torch_half_vs_f32_rel": hr})
            del hmodel
        except Exception as e:  # a reference op without half support: reported, not hidden
            for r in names:
                rows.append({"name": r, "precision": hname,
                             "error": f"torch half failed: {type(e).__name__}: {e}"[:200]})
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    # Decode time per token: (prefill + decode loop - prefill) / tokens, as gpu_check measures.
    prefill_ms = {r["precision"]: r.get("torch_ms") for r in rows if r["name"] == "llm-prefill"}
    for r in rows:
        if r["name"] == "llm-decode" and r.get("torch_ms") is not None:
            r["torch_ms"] = (r["torch_ms"] - prefill_ms[r["precision"]]) / meta["decode"]
    save_file(refs, str(out / "reference.safetensors"))
    meta.update({"model": name, "size": size, "device": device, "repeats": repeats,
                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "rows": rows})
    (out / "torch.json").write_text(json.dumps(meta, indent=1) + "\n")
    for r in rows:
        print(f"[torch] {r}")
    print(f"[torch] {name} {size} on {device}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
