#!/usr/bin/env python3
"""Reference for cielr-diffusion's Stable Diffusion inpainting pipeline (`sd_inpaint.rs`).

Builds a TINY random inpainting pipeline with diffusers and writes it as a diffusers folder
to `crates/cielr-diffusion/tests/fixtures/sd-inpaint-tiny/`:

  model_index.json, unet/ (9 input channels, SD 1.x layout), vae/ (2 blocks, factor 2),
  text_encoder/ (CLIPTextModel, hidden 12, 2 layers, 16 positions), tokenizer/ (a tiny
  CLIP-style BPE tokenizer.json, the one of tools/parity/clip.py), scheduler/ (DDIM, SD 1.x
  inpainting settings), and reference.safetensors:

  image [1,3,H,W] f32 in [0,1] (the input, also image.png), mask [1,1,H,W] f32 (0/1),
  noise [1,4,h,w] (the injected `latents`), latents_<i> after each of the STEPS steps,
  final [1,3,H,W] (output_type="np", in [0,1]) of a run with prompt + negative prompt,
  guidance 5, strength 1; and s075_noise, s075_latents_<i>, s075_final of a run at strength
  0.75 (3 steps, from the image latents noised with s075_noise) with guidance 1.

Weights are rounded to f16 values and stored as f16 (the Rust loader reads them exactly).
diffusers samples the VAE posterior of the masked image with its torch generator; cielr uses
the posterior's mean, so this script patches `retrieve_latents` to use the mode (the mean):
the only departure from the stock pipeline.

Run with diffusers 0.42 / torch (e.g. /work/venv-diff/bin/python tools/parity/diffusers_inpaint.py).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as sd_inpaint
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

H = W = 32
STEPS = 4
GUIDANCE = 5.0
PROMPT = "a blue cup"
NEGATIVE = "a photo of a dog"
MAX_LEN = 16


def make_tokenizer():
    # Imported lazily: clip.py builds the same tiny CLIP-style tokenizer for the CLIP tests.
    import clip  # noqa: E402

    return clip.make_tokenizer(with_pad=False)


def round_f16(module, seed, perturb_norms=False):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if perturb_norms and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif perturb_norms and name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())


def save_f16(module, folder: Path, weights_name: str, prefix: str = ""):
    module.save_pretrained(str(folder), safe_serialization=True)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    # transformers 5's CLIPTextModel.state_dict() drops `text_model.`; published SD
    # checkpoints (and transformers' own loading) use it.
    save_file({(k if k.startswith(prefix) else prefix + k): v.half().contiguous()
               for k, v in module.state_dict().items()}, str(folder / weights_name))


def main():
    out = ROOT / "crates/cielr-diffusion/tests/fixtures/sd-inpaint-tiny"
    out.mkdir(parents=True, exist_ok=True)

    tok = make_tokenizer()
    vocab = tok.get_vocab()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=MAX_LEN,
    )

    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=12, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(text_config).eval()
    round_f16(text_encoder, 2)

    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        sample_size=H // 2, in_channels=9, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[8, 16], layers_per_block=1, attention_head_dim=2,
        cross_attention_dim=12, norm_num_groups=4, norm_eps=1e-5,
    ).eval()
    round_f16(unet, 4)

    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16],
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=H,
    ).eval()
    round_f16(vae, 6, perturb_norms=True)

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )

    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=fast, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    # The folder layout.
    save_f16(unet, out / "unet", "diffusion_pytorch_model.safetensors")
    save_f16(vae, out / "vae", "diffusion_pytorch_model.safetensors")
    save_f16(text_encoder, out / "text_encoder", "model.safetensors", "text_model.")
    fast.save_pretrained(str(out / "tokenizer"))
    scheduler.save_pretrained(str(out / "scheduler"))
    with open(out / "model_index.json", "w") as f:
        json.dump({
            "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None], "requires_safety_checker": False,
            "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        }, f, indent=2)
        f.write("\n")
    # Keep the fixture small: drop what the Rust loader does not read.
    for extra in ["special_tokens_map.json", "vocab.json", "merges.txt"]:
        p = out / "tokenizer" / extra
        if p.exists():
            p.unlink()

    # Inputs: a smooth colourful image and a box mask.
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 7 % 256, yy * 6 % 256, (xx + yy) * 3 % 256], -1).astype(np.uint8)
    Image.fromarray(img).save(out / "image.png")
    m = np.zeros((H, W), np.uint8)
    m[8:22, 10:26] = 255
    Image.fromarray(m).save(out / "mask.png")

    g = torch.Generator().manual_seed(7)
    noise = torch.randn((1, 4, H // 2, W // 2), generator=g)

    # cielr uses the posterior mean of the masked image.
    sd_inpaint.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()

    saved = {}

    def on_step(p, i, t, kw):
        saved[f"latents_{i}"] = kw["latents"].detach().clone().contiguous()
        return {}

    with torch.no_grad():
        res = pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE, image=Image.fromarray(img),
            mask_image=Image.fromarray(m), height=H, width=W, num_inference_steps=STEPS,
            guidance_scale=GUIDANCE, latents=noise.clone(), output_type="np",
            callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"],
        )
    final = torch.from_numpy(res.images).permute(0, 3, 1, 2).contiguous().float()

    # A second run: strength 0.75 (3 of 4 steps, from the image's latents noised to the first
    # kept timestep), no guidance, noise from the generator (reproduced here: with the patched
    # retrieve_latents, the noise is the generator's first draw).
    saved2 = {}

    def on_step2(p, i, t, kw):
        saved2[f"s075_latents_{i}"] = kw["latents"].detach().clone().contiguous()
        return {}

    noise2 = torch.randn((1, 4, H // 2, W // 2), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        res2 = pipe(
            prompt=PROMPT, image=Image.fromarray(img), mask_image=Image.fromarray(m), height=H,
            width=W, num_inference_steps=STEPS, strength=0.75, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(11), output_type="np",
            callback_on_step_end=on_step2, callback_on_step_end_tensor_inputs=["latents"],
        )
    saved2["s075_noise"] = noise2.contiguous()
    saved2["s075_final"] = torch.from_numpy(res2.images).permute(0, 3, 1, 2).contiguous().float()
    saved.update(saved2)
    tensors = {
        "image": torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).contiguous(),
        "mask": torch.from_numpy(m > 127)[None, None].float().contiguous(),
        "noise": noise.contiguous(),
        "final": final,
        **saved,
    }
    save_file(tensors, str(out / "reference.safetensors"))
    with open(out / "reference.json", "w") as f:
        json.dump({"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": STEPS,
                   "guidance_scale": GUIDANCE, "height": H, "width": W,
                   "timesteps": [int(t) for t in pipe.scheduler.timesteps],
                   "diffusers": diffusers.__version__, "torch": torch.__version__}, f, indent=1)
        f.write("\n")
    print("written", out, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
