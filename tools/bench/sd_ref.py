#!/usr/bin/env python3
"""diffusers side of tools/bench/sd.sh: builds a random Stable Diffusion inpainting folder (SD
1.5 layout), writes the benchmark inputs and diffusers' outputs, and times diffusers (torch,
CPU, float32) on them. cielr-diffusion's `sd_bench` example then times the same operations on
the same weights and inputs and checks its outputs against these.

Configs (CONFIG):
  reduced  SD-1.5 layout at a quarter of the widths: UNet [80, 160, 320, 320], 2 ResNets per
           block, 8 heads, cross_attention_dim 768; VAE [32, 64, 128, 128] (factor 8,
           4 latent channels); CLIP text encoder 768 wide, 4 layers. ~55M UNet parameters.
  full     the real SD-1.5-inpainting widths: UNet [320, 640, 1280, 1280] (860M), VAE
           [128, 256, 512, 512], CLIP text 768 wide, 12 layers.
The tokenizer is the tiny CLIP-style vocabulary of crates/cielr-diffusion/tests/fixtures/
clip-bpe-tiny (vocab.json + merges.txt, no tokenizer.json, as released folders ship it).

Writes OUT/model (the folder), OUT/bench.safetensors (sample [2,9,h,w], ehs [2,77,768],
unet_out at t=501, latents [1,4,h,w], decoded, final image of the 20-step run from injected
noise) and OUT/torch_timings.json.

Usage: /work/venv-diff/bin/python tools/bench/sd_ref.py OUT [reduced|full] [SIZE] [STEPS]
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as sd_inpaint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
TOK = ROOT / "crates/cielr-diffusion/tests/fixtures/clip-bpe-tiny"
PROMPT = "a red ball on a table"
NEGATIVE = "blurry"


def timed(fn, repeat):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, min(ts)


def main():
    out = Path(sys.argv[1])
    config = sys.argv[2] if len(sys.argv) > 2 else "reduced"
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", torch.get_num_threads())))
    full = config == "full"
    model = out / "model"
    if model.exists():
        shutil.rmtree(model)
    model.mkdir(parents=True)

    tok = CLIPTokenizer(vocab=str(TOK / "vocab.json"), merges=str(TOK / "merges.txt"),
                        pad_token="!", model_max_length=77)
    vocab = tok.get_vocab()
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12 if full else 4, num_attention_heads=12, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["!"])).eval()
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=9, out_channels=4,
        block_out_channels=[320, 640, 1280, 1280] if full else [80, 160, 320, 320],
        layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
        norm_num_groups=32 if full else 8).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=[128, 256, 512, 512] if full else [32, 64, 128, 128],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2, norm_num_groups=32 if full else 8, sample_size=size).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    unet.save_pretrained(str(model / "unet"))
    vae.save_pretrained(str(model / "vae"))
    text_encoder.save_pretrained(str(model / "text_encoder"))
    scheduler.save_pretrained(str(model / "scheduler"))
    (model / "tokenizer").mkdir()
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"]:
        shutil.copy(TOK / f, model / "tokenizer" / f)
    with open(model / "model_index.json", "w") as f:
        json.dump({"_class_name": "StableDiffusionInpaintPipeline",
                   "_diffusers_version": diffusers.__version__,
                   "scheduler": ["diffusers", "DDIMScheduler"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"],
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    # transformers 5 may save `text_model.`-less names; the SD checkpoints use them.
    from safetensors.torch import load_file
    for p in (model / "text_encoder").glob("*.safetensors"):
        sd = load_file(str(p))
        save_file({(k if k.startswith("text_model.") else "text_model." + k): v.contiguous()
                   for k, v in sd.items()}, str(p))

    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok,
                                          unet=unet, scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sd_inpaint.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()

    h = size // 8
    g = torch.Generator().manual_seed(7)
    sample = torch.randn((2, 9, h, h), generator=g)
    ehs = torch.randn((2, 77, 768), generator=g)
    latents = torch.randn((1, 4, h, h), generator=g)
    noise = torch.randn((1, 4, h, h), generator=g)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 128)], -1).astype(np.uint8)
    m = np.zeros((size, size), np.uint8)
    m[size // 4:size * 3 // 4, size // 4:size * 3 // 4] = 255
    Image.fromarray(img).save(out / "image.png")
    Image.fromarray(m).save(out / "mask.png")

    timings = {"config": config, "size": size, "steps": steps, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "diffusers": diffusers.__version__}
    with torch.no_grad():
        unet_out, timings["unet_step_s"] = timed(
            lambda: unet(sample, 501, encoder_hidden_states=ehs).sample, 3)
        decoded, timings["vae_decode_s"] = timed(lambda: vae.decode(latents).sample, 3)
        run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=Image.fromarray(img),
                           mask_image=Image.fromarray(m), height=size, width=size,
                           num_inference_steps=steps, guidance_scale=7.5,
                           latents=noise.clone(), output_type="np").images
        t = time.perf_counter()
        final = run()
        timings["inpaint_s"] = time.perf_counter() - t
    save_file({"sample": sample, "ehs": ehs, "unet_out": unet_out.contiguous(),
               "latents": latents, "decoded": decoded.contiguous(), "noise": noise,
               "final": torch.from_numpy(final).permute(0, 3, 1, 2).contiguous().float()},
              str(out / "bench.safetensors"))
    with open(out / "torch_timings.json", "w") as f:
        json.dump(timings, f, indent=1)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
