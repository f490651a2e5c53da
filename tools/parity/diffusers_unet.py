#!/usr/bin/env python3
"""Reference checkpoints and outputs for the UNet2DConditionModel port in `cielr-diffusion`.

  tools/parity/diffusers_unet.py [tiny] [OUT_DIR]   # default crates/cielr-diffusion/tests/fixtures
  tools/parity/diffusers_unet.py full OUT_DIR [sd15|sd2] [LATENT]
      # the real SD-1.5-inpainting or SD-2-inpainting UNet config (860M parameters) with random
      # weights stored in float16, a batch of 2 latents LATENT x LATENT (default 32, i.e.
      # 256 px) with 77 text tokens, references and the torch time of one forward after a
      # warm-up (not committed; see unet_full.sh)

`tiny` writes two folders of randomly initialised tiny inpainting UNets (9 input channels), each with
config.json, diffusion_pytorch_model.safetensors (float16; the weights are rounded to float16
values before anything is computed, so the float32 references are exact for those weights) and
reference.safetensors:

  sample [2,9,8,8], timesteps [2] f64 (one fractional, as Euler schedulers give),
  encoder_hidden_states [2,5,CROSS], out [2,4,8,8] (forward with per-sample timesteps),
  out_t [2,4,8,8] (forward with the single timestep 501 for the batch), t_emb [2,T]
  (get_timestep_embedding, for the embedding alone)

  unet-tiny-sd15/  SD 1.x layout: CrossAttnDownBlock2D + DownBlock2D, UpBlock2D +
                   CrossAttnUpBlock2D, 2 heads everywhere (attention_head_dim: 2), 1x1-conv
                   projections, block_out_channels [8, 16], cross_attention_dim 12
  unet-tiny-sd2/   SD 2.x layout: three blocks (two cross-attention, one plain, as SD),
                   use_linear_projection, heads per block [2, 2, 4], transformer layers per block
                   [2, 1, 1] (as a list), block_out_channels [8, 16, 16], cross_attention_dim 10

Needs torch, diffusers 0.42, safetensors. Deterministic (seeded).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    "unet-tiny-sd15": dict(
        sample_size=8, in_channels=9, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[8, 16], layers_per_block=1, attention_head_dim=2,
        cross_attention_dim=12, norm_num_groups=4, norm_eps=1e-5,
    ),
    "unet-tiny-sd2": dict(
        sample_size=8, in_channels=9, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[8, 16, 16], layers_per_block=1, attention_head_dim=[2, 2, 4],
        cross_attention_dim=10, norm_num_groups=4, use_linear_projection=True,
        transformer_layers_per_block=[2, 1, 1], upcast_attention=True,
    ),
}


def write(name: str, config: dict, out_dir: Path, seed: int):
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for pname, p in unet.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    unet.save_pretrained(str(out_dir), safe_serialization=True)
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()},
              str(out_dir / "diffusion_pytorch_model.safetensors"))
    g = torch.Generator().manual_seed(seed + 1)
    cross = config["cross_attention_dim"]
    sample = torch.randn((2, 9, 8, 8), generator=g)
    ehs = torch.randn((2, 5, cross), generator=g)
    timesteps = torch.tensor([981.0, 37.5], dtype=torch.float64)
    with torch.no_grad():
        out = unet(sample, timesteps.float(), ehs).sample
        out_t = unet(sample, 501, ehs).sample
        t_emb = get_timestep_embedding(timesteps.float(), config["block_out_channels"][0],
                                       flip_sin_to_cos=True, downscale_freq_shift=0)
    save_file({"sample": sample, "timesteps": timesteps, "encoder_hidden_states": ehs,
               "out": out.contiguous(), "out_t": out_t.contiguous(), "t_emb": t_emb.contiguous()},
              str(out_dir / "reference.safetensors"))
    n = sum(p.numel() for p in unet.parameters())
    print(f"{name}: {n} parameters -> {out_dir}")


SD15_INPAINTING_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=9, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
SD2_INPAINTING_UNET = dict(
    SD15_INPAINTING_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
    use_linear_projection=True, dual_cross_attention=False, num_class_embeds=None,
    upcast_attention=False,
)


def write_full(out_dir: Path, which: str, latent: int):
    import json
    import time
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"sd15": SD15_INPAINTING_UNET, "sd2": SD2_INPAINTING_UNET}[which]
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(p.half().float())
    unet.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="100GB")
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()},
              str(out_dir / "diffusion_pytorch_model.safetensors"))
    g = torch.Generator().manual_seed(4)
    sample = torch.randn((2, 9, latent, latent), generator=g)
    ehs = torch.randn((2, 77, config["cross_attention_dim"]), generator=g)
    with torch.inference_mode():
        unet(sample, 501, ehs)
        t0 = time.perf_counter()
        out = unet(sample, 501, ehs).sample
        elapsed = time.perf_counter() - t0
    save_file({"sample": sample, "encoder_hidden_states": ehs, "out": out.contiguous()},
              str(out_dir / "reference.safetensors"))
    with open(out_dir / "torch_timings.json", "w") as f:
        json.dump({"forward_s": elapsed, "latent": latent, "config": which,
                   "torch_threads": torch.get_num_threads()}, f, indent=1)
    print(f"torch ({torch.get_num_threads()} threads): forward {elapsed:.2f} s "
          f"({which}, batch 2, {latent}x{latent} latents, 77 tokens)")


def main():
    args = sys.argv[1:]
    if args and args[0] == "full":
        write_full(Path(args[1]), args[2] if len(args) > 2 else "sd15",
                   int(args[3]) if len(args) > 3 else 32)
        return
    if args and args[0] == "tiny":
        args = args[1:]
    out = Path(args[0]) if args else ROOT / "crates/cielr-diffusion/tests/fixtures"
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        write(name, cfg, out / name, 20 + i)


if __name__ == "__main__":
    main()
