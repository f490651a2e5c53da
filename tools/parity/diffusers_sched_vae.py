#!/usr/bin/env python3
"""Reference trajectories and checkpoints for the scheduler and VAE ports in `cielr-diffusion`.

Modes:

  tools/parity/diffusers_sched_vae.py tiny [OUT_DIR]   # the committed fixtures (default
                                                      # crates/cielr-diffusion/tests/fixtures)
  tools/parity/diffusers_sched_vae.py full OUT_DIR [SIZE]
                                       # SD's real VAE config with random weights, a SIZE x SIZE
                                       # input (default 256), references and torch timings
                                       # (not committed; see vae_full.sh)

`tiny` writes two folders:

  schedulers/   configs/*.json         scheduler configs: the published values of
                                       runwayml/stable-diffusion-inpainting (PNDM) and
                                       stabilityai/stable-diffusion-2-inpainting (DDIM), and
                                       variants of them that exercise other options
                manifest.json          one entry per trajectory: config, class, steps, eta
                trajectories.safetensors
                    x_init [1,4,4,4], model_outputs [21,1,4,4,4], noises [21,1,4,4,4],
                    x0 / noise [1,4,4,4] (add_noise inputs); per trajectory `NAME/...`:
                    timesteps f64, sigmas f32 (sigma schedulers), init_noise_sigma f64 [1],
                    samples [steps,1,4,4,4] (the sample after every step), scaled
                    [steps,1,4,4,4] (scale_model_input, Euler schedulers only), add_noise
                    [1,4,4,4] at timesteps[add_noise_index]
  vae-tiny/     config.json + diffusion_pytorch_model.safetensors of a randomly initialised
                AutoencoderKL (block_out_channels [8, 16], layers_per_block 1, norm_num_groups 4,
                latent_channels 4; weights rounded to float16 values before anything is
                computed, then stored with the decoder's tensors in float16 and the others in
                float32, so one file exercises both readers), and reference.safetensors:
                    input [2,3,24,24], mean / logvar [2,4,12,12] (encode's latent_dist),
                    noise / sampled [2,4,12,12] (mean + std * noise), decoded [2,3,24,24]
                    (decode(mean))

Every scheduler class is built from every config with `from_config`, as a pipeline does when a
user swaps schedulers, so missing keys take each class's own defaults. Model outputs are fixed
random tensors fed step by step; the noise of Euler ancestral, SDE DPM-Solver++ and DDIM with
eta > 0 is injected (randn_tensor is replaced by a queue of the saved noises).

Needs torch, diffusers 0.42, safetensors, numpy. Deterministic (seeded).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
import diffusers.schedulers.scheduling_ddim as m_ddim
import diffusers.schedulers.scheduling_dpmsolver_multistep as m_dpm
import diffusers.schedulers.scheduling_euler_ancestral_discrete as m_ea

ROOT = Path(__file__).resolve().parents[2]

# Published scheduler/scheduler_config.json contents of the two inpainting checkpoints.
SD15_INPAINTING = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD2_INPAINTING = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

CLASSES = {
    "DDIMScheduler": DDIMScheduler,
    "PNDMScheduler": PNDMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}
ALL = list(CLASSES)

# (config name, config, classes, steps)
CONFIGS = [
    ("sd15_inpainting", SD15_INPAINTING, ALL, 10),
    ("sd2_inpainting", SD2_INPAINTING, ALL, 10),
    ("sd2_v_prediction", {**SD2_INPAINTING, "prediction_type": "v_prediction"}, ALL, 10),
    ("sd15_trailing", {**SD15_INPAINTING, "timestep_spacing": "trailing"}, ALL, 7),
    ("sd15_linspace", {**SD15_INPAINTING, "timestep_spacing": "linspace"}, ALL, 7),
    ("sd15_leading", {**SD15_INPAINTING, "timestep_spacing": "leading"},
     ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"], 10),
    ("sd15_karras", {**SD15_INPAINTING, "use_karras_sigmas": True},
     ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"], 10),
    ("linear_clip", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                     "clip_sample": True, "set_alpha_to_one": True, "skip_prk_steps": True},
     ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"], 10),
    ("dpm_order3_20", {**SD15_INPAINTING, "solver_order": 3}, ["DPMSolverMultistepScheduler"], 20),
    ("dpm_2m_20", SD15_INPAINTING, ["DPMSolverMultistepScheduler"], 20),
    ("dpm_heun", {**SD15_INPAINTING, "solver_type": "heun"}, ["DPMSolverMultistepScheduler"], 10),
    ("dpm_sde", {**SD15_INPAINTING, "algorithm_type": "sde-dpmsolver++"},
     ["DPMSolverMultistepScheduler"], 10),
    ("dpm_v1", {**SD15_INPAINTING, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
     ["DPMSolverMultistepScheduler"], 10),
]
MAX_STEPS = 21
SHAPE = (1, 4, 4, 4)


class NoiseQueue:
    def __init__(self, noises):
        self.noises = list(noises)

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        t = self.noises.pop(0)
        assert tuple(t.shape) == tuple(shape), (t.shape, shape)
        return t.clone()


def trajectory(name, cls_name, cfg, steps, shared, eta=0.0):
    cls = CLASSES[cls_name]
    sched = cls.from_config(cfg)
    queue = NoiseQueue(shared["noises"])
    m_ea.randn_tensor = queue
    m_dpm.randn_tensor = queue
    m_ddim.randn_tensor = queue
    sched.set_timesteps(steps)
    ts = sched.timesteps.clone()
    out = {}
    out["timesteps"] = ts.to(torch.float64)
    if hasattr(sched, "sigmas") and cls_name not in ("DDIMScheduler", "PNDMScheduler"):
        out["sigmas"] = torch.as_tensor(sched.sigmas).to(torch.float32).clone()
    init = float(sched.init_noise_sigma)
    out["init_noise_sigma"] = torch.tensor([init], dtype=torch.float64)
    sample = shared["x_init"] * sched.init_noise_sigma
    samples, scaled = [], []
    for i, t in enumerate(ts):
        scaled_in = sched.scale_model_input(sample, t)
        scaled.append(scaled_in)
        mo = shared["model_outputs"][i]
        kwargs = {}
        if cls_name == "DDIMScheduler" and eta > 0:
            kwargs = {"eta": eta}
        sample = sched.step(mo, t, sample, **kwargs).prev_sample
        samples.append(sample)
    out["samples"] = torch.stack(samples).to(torch.float32)
    if cls_name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        out["scaled"] = torch.stack(scaled).to(torch.float32)
    # add_noise on a fresh scheduler at a middle timestep.
    fresh = cls.from_config(cfg)
    fresh.set_timesteps(steps)
    k = len(fresh.timesteps) // 2
    out["add_noise"] = fresh.add_noise(shared["x0"], shared["noise"], fresh.timesteps[k:k + 1]).to(torch.float32)
    return {f"{name}/{key}": v.contiguous() for key, v in out.items()}, k, len(ts)


def write_schedulers(out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    shared = {
        "x_init": torch.randn(SHAPE, generator=g),
        "model_outputs": torch.randn((MAX_STEPS,) + SHAPE, generator=g),
        "noises": torch.randn((MAX_STEPS,) + SHAPE, generator=g),
        "x0": torch.randn(SHAPE, generator=g),
        "noise": torch.randn(SHAPE, generator=g),
    }
    tensors = {k: v.contiguous() for k, v in shared.items()}
    manifest = []
    runs = [(c, cfg, classes, steps, 0.0) for (c, cfg, classes, steps) in CONFIGS]
    runs.append(("sd2_ddim_eta", SD2_INPAINTING, ["DDIMScheduler"], 10, 0.5))
    for cfg_name, cfg, classes, steps, eta in runs:
        cfg_file = f"configs/{cfg_name}.json"
        if cfg_name != "sd2_ddim_eta":
            with open(out_dir / cfg_file, "w") as f:
                json.dump(cfg, f, indent=2)
                f.write("\n")
        else:
            cfg_file = "configs/sd2_inpainting.json"
        for cls_name in classes:
            name = f"{cfg_name}/{cls_name}"
            t, k, n = trajectory(name, cls_name, cfg, steps, shared, eta)
            tensors.update(t)
            manifest.append({"name": name, "config": cfg_file, "class": cls_name, "steps": steps,
                             "eta": eta, "add_noise_index": k, "model_calls": n})
    save_file(tensors, str(out_dir / "trajectories.safetensors"))
    with open(out_dir / "manifest.json", "w") as f:
        json.dump({"diffusers": diffusers.__version__, "torch": torch.__version__,
                   "trajectories": manifest}, f, indent=1)
        f.write("\n")
    print(f"schedulers: {len(manifest)} trajectories -> {out_dir}")


def random_vae(config: dict, seed: int, f16_values: bool) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            if f16_values:
                p.copy_(p.half().float())
    return vae


def write_vae_tiny(out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(
        in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[8, 16], layers_per_block=1, act_fn="silu", latent_channels=4,
        norm_num_groups=4, sample_size=32, scaling_factor=0.18215,
    )
    vae = random_vae(config, 7, f16_values=True)
    vae.save_pretrained(str(out_dir), safe_serialization=True)
    # One file, both dtypes: the decoder in float16, the rest in float32 (same values).
    mixed = {k: (v.half() if k.startswith("decoder.") else v).contiguous()
             for k, v in vae.state_dict().items()}
    save_file(mixed, str(out_dir / "diffusion_pytorch_model.safetensors"))
    g = torch.Generator().manual_seed(99)
    x = torch.rand((2, 3, 24, 24), generator=g) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        noise = torch.randn(dist.mean.shape, generator=g)
        sampled = dist.mean + dist.std * noise
        decoded = vae.decode(dist.mean).sample
    save_file({"input": x, "mean": dist.mean.contiguous(), "logvar": dist.logvar.contiguous(),
               "noise": noise, "sampled": sampled.contiguous(), "decoded": decoded.contiguous()},
              str(out_dir / "reference.safetensors"))
    print(f"vae-tiny -> {out_dir}")


SD_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu",
    latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)


def write_vae_full(out_dir: Path, size: int):
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = random_vae(SD_VAE, 11, f16_values=False)
    vae.save_pretrained(str(out_dir), safe_serialization=True)
    g = torch.Generator().manual_seed(5)
    x = torch.rand((1, 3, size, size), generator=g) * 2 - 1
    timings = {}
    with torch.inference_mode():
        vae.encode(x)  # warm-up
        t0 = time.perf_counter()
        dist = vae.encode(x).latent_dist
        timings["encode_s"] = time.perf_counter() - t0
        mean = dist.mean
        vae.decode(mean)
        t0 = time.perf_counter()
        decoded = vae.decode(mean).sample
        timings["decode_s"] = time.perf_counter() - t0
    save_file({"input": x, "mean": mean.contiguous(), "logvar": dist.logvar.contiguous(),
               "decoded": decoded.contiguous()}, str(out_dir / "reference.safetensors"))
    timings["size"] = size
    timings["torch_threads"] = torch.get_num_threads()
    with open(out_dir / "torch_timings.json", "w") as f:
        json.dump(timings, f, indent=1)
    print(f"torch ({torch.get_num_threads()} threads): encode {timings['encode_s']:.2f} s, "
          f"decode {timings['decode_s']:.2f} s at {size}x{size}")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    torch.set_grad_enabled(False)
    if mode == "tiny":
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "crates/cielr-diffusion/tests/fixtures"
        write_schedulers(out / "schedulers")
        write_vae_tiny(out / "vae-tiny")
    elif mode == "full":
        write_vae_full(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 256)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
