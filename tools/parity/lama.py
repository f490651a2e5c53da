#!/usr/bin/env python3
"""Reference values for cielr's LaMa port, from LaMa's own module code (advimman/lama,
`saicinpainting/training/modules/ffc.py`) on random weights.

The official files are copied at run time from a LaMa checkout or mirror ($LAMA_REPO: a work
tree, or a git directory read with `git show HEAD:<path>`) into a temporary package; nothing of
LaMa is committed here. `spatial_transform.py` (needs kornia) and `saicinpainting/utils.py`
(needs pytorch_lightning) are replaced by stand-ins that raise if called: the generator
imports but never uses them (no learnable spatial transforms in LaMa's generator configs).

    tiny  OUT_DIR          the committed fixture (tests/fixtures/lama-tiny): a tiny
                           FFCResNetGenerator (ngf 8, 2 downsamplings, 2 residual blocks,
                           big-lama's ratios, no LFU) saved as a Lightning-like checkpoint and
                           converted with tools/lama/convert_checkpoint.py; rfft2 / irfft2
                           values of torch.fft for even and odd sizes; the generator on a
                           52x44 photo crop (odd 13x11 bottleneck) and LaMa's prediction
                           (symmetric padding to 8, composite) on a 61x47 crop.
    full  OUT_DIR SIZE     big-lama's generator (ngf 64, 3 downsamplings, 18 blocks) with
                           random weights on a SIZE x SIZE photo: checkpoint, reference
                           output and torch's time per forward.

Python: /work/venv-ref/bin/python (torch, safetensors, numpy, Pillow, PyYAML).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
PHOTO = os.path.join(ROOT, "crates/cielr-diffusion/tests/data/chelsea-150x100.png")
LAMA_REPO = os.environ.get("LAMA_REPO", "/work/.mirror/advimman+lama/repo")

OFFICIAL = [
    "saicinpainting/training/modules/ffc.py",
    "saicinpainting/training/modules/base.py",
    "saicinpainting/training/modules/depthwise_sep_conv.py",
    "saicinpainting/training/modules/multidilated_conv.py",
    "saicinpainting/training/modules/squeeze_excitation.py",
]
STAND_INS = {
    "saicinpainting/__init__.py": "",
    "saicinpainting/training/__init__.py": "",
    "saicinpainting/training/modules/__init__.py": "",
    "saicinpainting/training/modules/spatial_transform.py":
        "class LearnableSpatialTransformWrapper:\n"
        "    def __init__(self, *a, **k):\n"
        "        raise NotImplementedError('stand-in: kornia is not installed')\n",
    "saicinpainting/utils.py":
        "def get_shape(t):\n    raise NotImplementedError('stand-in')\n",
}


def read_official(path):
    p = os.path.join(LAMA_REPO, path)
    if os.path.isfile(p):
        with open(p) as f:
            return f.read()
    return subprocess.run(["git", "-C", LAMA_REPO, "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def import_lama(tmp):
    for path, text in list(STAND_INS.items()) + [(p, read_official(p)) for p in OFFICIAL]:
        dst = os.path.join(tmp, path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w") as f:
            f.write(text)
    sys.path.insert(0, tmp)
    from saicinpainting.training.modules.ffc import FFCResNetGenerator
    return FFCResNetGenerator


TRAIN_YAML = """\
generator:
  kind: ffc_resnet
  input_nc: 4
  output_nc: 3
  ngf: {ngf}
  n_downsampling: {n_down}
  n_blocks: {n_blocks}
  add_out_act: sigmoid
  init_conv_kwargs:
    ratio_gin: 0
    ratio_gout: 0
    enable_lfu: false
  downsample_conv_kwargs:
    ratio_gin: ${{generator.init_conv_kwargs.ratio_gout}}
    ratio_gout: ${{generator.downsample_conv_kwargs.ratio_gin}}
    enable_lfu: false
  resnet_conv_kwargs:
    ratio_gin: 0.75
    ratio_gout: ${{generator.resnet_conv_kwargs.ratio_gin}}
    enable_lfu: false
losses:
  resnet_pl:
    weights_path: ${{env:TORCH_HOME}}
"""


def kwargs(ngf, n_down, n_blocks):
    r0 = dict(ratio_gin=0, ratio_gout=0, enable_lfu=False)
    return dict(input_nc=4, output_nc=3, ngf=ngf, n_downsampling=n_down, n_blocks=n_blocks,
                add_out_act="sigmoid", init_conv_kwargs=r0, downsample_conv_kwargs=dict(r0),
                resnet_conv_kwargs=dict(ratio_gin=0.75, ratio_gout=0.75, enable_lfu=False))


def build(Gen, ngf, n_down, n_blocks, seed, calibration):
    """A random generator in eval mode whose activations stay at unit scale: He-normal
    convolutions, random BatchNorm affines, and BatchNorm running statistics set from one
    train-mode pass over `calibration` (as a trained network's are consistent with its data),
    then perturbed (means shifted by 0.05 std, variances scaled by 0.8-1.25) so that eval mode
    differs from train mode. (Torch's default init shrinks activations ~3x per layer, and
    random statistics let them grow ~3x per residual block at big-lama's depth: either leaves
    the sigmoid constant or saturated, and the comparison uninformative.)"""
    torch.manual_seed(seed)
    g = Gen(**kwargs(ngf, n_down, n_blocks))
    bns = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = 1.0
        g.train()
        g(calibration)
        for m in bns:
            m.momentum = 0.1
            std = m.running_var.sqrt()
            m.running_mean.add_(0.05 * std * torch.randn_like(std))
            m.running_var.mul_(torch.empty_like(std).uniform_(0.8, 1.25))
    return g.eval()


def save_and_convert(gen, out_dir, ngf, n_down, n_blocks):
    """Saves `gen` the way LaMa's Lightning checkpoints hold it and converts it."""
    with tempfile.TemporaryDirectory() as tmp:
        state = {"generator." + k: v for k, v in gen.state_dict().items()}
        state["discriminator.model0.0.weight"] = torch.randn(4, 3, 3, 3)
        ckpt = os.path.join(tmp, "models", "best.ckpt")
        os.makedirs(os.path.dirname(ckpt))
        # Lightning checkpoints also pickle objects of other libraries (hyper-parameters in
        # OmegaConf / Lightning classes): one from a module the converter cannot import makes
        # it take its lenient path, as the real big-lama checkpoint does.
        with open(os.path.join(tmp, "fake_lightning.py"), "w") as f:
            f.write("class AttributeDict(dict):\n    pass\n")
        sys.path.insert(0, tmp)
        import fake_lightning
        hparams = fake_lightning.AttributeDict(generator={"kind": "ffc_resnet"})
        torch.save({"state_dict": state, "epoch": 3, "pytorch-lightning_version": "1.2.9",
                    "hyper_parameters": hparams}, ckpt)
        sys.path.remove(tmp)
        del sys.modules["fake_lightning"]
        with open(os.path.join(tmp, "config.yaml"), "w") as f:
            f.write(TRAIN_YAML.format(ngf=ngf, n_down=n_down, n_blocks=n_blocks))
        subprocess.run([sys.executable, os.path.join(ROOT, "tools/lama/convert_checkpoint.py"),
                        ckpt, out_dir], check=True)
    with open(os.path.join(out_dir, "config.json")) as f:
        cfg = json.load(f)
    want = kwargs(ngf, n_down, n_blocks)
    for k, v in want.items():
        assert cfg[k] == v, (k, cfg[k], v)


def photo(x, y, w, h, size=None):
    img = Image.open(PHOTO).convert("RGB")
    if size is not None:
        img = img.resize(size, Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)[y:y + h, x:x + w] / 255.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]


def ellipse_mask(w, h, cx, cy, rx, ry):
    yy, xx = np.mgrid[0:h, 0:w]
    m = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.float32)
    m[int(cy):int(cy) + 3, :] = 1.0  # a thin stroke to the edges: masks touching the border
    return torch.from_numpy(m)[None, None]


def predict(gen, image, mask, modulo=8):
    """LaMa's bin/predict.py on tensors: symmetric padding (evaluation/data.py's
    pad_img_to_modulo), (mask > 0), the training module's forward (masked image + mask,
    composite), unpadding."""
    _, _, h, w = image.shape
    ph, pw = (-h) % modulo, (-w) % modulo
    img = torch.from_numpy(np.pad(image[0].numpy(), ((0, 0), (0, ph), (0, pw)), mode="symmetric"))[None]
    msk = torch.from_numpy(np.pad(mask[0].numpy(), ((0, 0), (0, ph), (0, pw)), mode="symmetric"))[None]
    msk = (msk > 0) * 1
    masked = img * (1 - msk)
    pred = gen(torch.cat([masked, msk], dim=1))
    inpainted = msk * pred + (1 - msk) * img
    return inpainted[:, :, :h, :w]


def tiny(out_dir):
    torch.manual_seed(0)
    Gen = import_lama(tempfile.mkdtemp(prefix="lama-official-"))
    ngf, n_down, n_blocks = 8, 2, 2
    # The generator alone runs on a 52x44 crop: the bottleneck is 13x11 (odd sizes).
    image = photo(40, 20, 52, 44)
    mask = ellipse_mask(52, 44, 30.0, 20.0, 12.0, 9.0)
    gen_x = torch.cat([image * (1 - mask), mask], dim=1)
    calibration = torch.cat([photo(0, 0, 64, 64), ellipse_mask(64, 64, 30.0, 30.0, 10.0, 8.0)], dim=1)
    calibration[:, :3] *= 1 - calibration[:, 3:]
    gen = build(Gen, ngf, n_down, n_blocks, seed=1, calibration=calibration)
    os.makedirs(out_dir, exist_ok=True)
    save_and_convert(gen, out_dir, ngf, n_down, n_blocks)
    ref = {}
    g = torch.Generator().manual_seed(2)
    for h, w in [(6, 8), (5, 7), (7, 6), (4, 5), (13, 11)]:
        x = torch.randn(1, 2, h, w, generator=g)
        X = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
        ref[f"fft_{h}x{w}_x"] = x
        ref[f"fft_{h}x{w}_re"], ref[f"fft_{h}x{w}_im"] = X.real, X.imag
        # A spectrum that is not Hermitian, as LaMa's are after the Fourier unit's conv.
        yr = torch.randn(1, 2, h, w // 2 + 1, generator=g)
        yi = torch.randn(1, 2, h, w // 2 + 1, generator=g)
        ref[f"ifft_{h}x{w}_re"], ref[f"ifft_{h}x{w}_im"] = yr, yi
        ref[f"ifft_{h}x{w}_out"] = torch.fft.irfftn(torch.complex(yr, yi), s=(h, w),
                                                     dim=(-2, -1), norm="ortho")
    with torch.no_grad():
        ref["gen_input"] = gen_x
        ref["gen_logits"] = gen.model[:-1](gen_x)
        ref["gen_output"] = gen(gen_x)
        # LaMa's prediction on a 61x47 crop (padded to 64x48).
        image = photo(70, 35, 61, 47)
        mask = ellipse_mask(61, 47, 25.0, 26.0, 14.0, 10.0)
        ref["image"], ref["mask"] = image, mask
        ref["inpainted"] = predict(gen, image, mask)
        # bin/predict.py's bytes: clip(x * 255, 0, 255).astype(uint8), kept as f32.
        ref["inpainted_u8"] = torch.from_numpy(
            np.clip(ref["inpainted"].numpy() * 255, 0, 255).astype(np.uint8).astype(np.float32))
    logits = ref["gen_logits"]
    print(f"generator logits: mean {logits.mean():.3f} std {logits.std():.3f}; "
          f"output range [{ref['gen_output'].min():.3f}, {ref['gen_output'].max():.3f}]")
    save_file({k: v.contiguous().float() for k, v in ref.items()},
              os.path.join(out_dir, "reference.safetensors"))
    print(f"wrote {out_dir}")


def full(out_dir, size):
    Gen = import_lama(tempfile.mkdtemp(prefix="lama-official-"))
    image = photo(0, 0, size, size, size=(size, size))
    mask = ellipse_mask(size, size, size * 0.55, size * 0.45, size * 0.2, size * 0.15)
    x = torch.cat([image * (1 - mask), mask], dim=1)
    calibration = torch.cat([photo(0, 0, 256, 256, size=(256, 256)),
                             ellipse_mask(256, 256, 100.0, 120.0, 50.0, 40.0)], dim=1)
    calibration[:, :3] *= 1 - calibration[:, 3:]
    gen = build(Gen, 64, 3, 18, seed=1, calibration=calibration)
    os.makedirs(out_dir, exist_ok=True)
    save_and_convert(gen, out_dir, 64, 3, 18)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with torch.no_grad():
        gen(x)  # warm-up
        t0 = time.perf_counter()
        logits = gen.model[:-1](x)
        secs = time.perf_counter() - t0
        out = torch.sigmoid(logits)
    print(f"torch forward {size}x{size}: {secs:.2f} s ({torch.get_num_threads()} threads); "
          f"logits mean {logits.mean():.3f} std {logits.std():.3f}; output range "
          f"[{out.min():.3f}, {out.max():.3f}]")
    save_file({"gen_input": x.contiguous(), "gen_logits": logits.contiguous(),
               "gen_output": out.contiguous(), "torch_seconds": torch.tensor([secs])},
              os.path.join(out_dir, "reference.safetensors"))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "tiny":
        tiny(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "full":
        full(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
