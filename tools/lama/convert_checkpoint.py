#!/usr/bin/env python3
"""Convert a LaMa checkpoint (PyTorch Lightning `.ckpt`, e.g. big-lama's `models/best.ckpt`)
into what cielr's Burn port loads: `model.safetensors` (the generator's weights only, named as
in the checkpoint under its `generator.` prefix, without the prefix: `model.1.ffc.convl2l.weight`
...; BatchNorm's `num_batches_tracked` dropped; f32) and `config.json` (the generator's keyword
arguments, from the training `config.yaml` next to the checkpoint when there is one, with
OmegaConf's `${...}` references resolved; big-lama's otherwise).

Usage:
    python tools/lama/convert_checkpoint.py big-lama/models/best.ckpt OUT_DIR [--config big-lama/config.yaml]

Needs torch, safetensors and PyYAML (no pytorch_lightning / omegaconf: classes of other
libraries inside the pickle are replaced by inert stand-ins, nothing of theirs is executed,
but only convert files you trust, as with any pickle).
"""

import argparse
import json
import os
import pickle
import re
import sys
import types

import torch
from safetensors.torch import save_file

# big-lama's generator (configs/training/big-lama.yaml), with the references resolved.
BIG_LAMA = {
    "kind": "ffc_resnet",
    "input_nc": 4,
    "output_nc": 3,
    "ngf": 64,
    "n_downsampling": 3,
    "n_blocks": 18,
    "add_out_act": "sigmoid",
    "init_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
    "downsample_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
    "resnet_conv_kwargs": {"ratio_gin": 0.75, "ratio_gout": 0.75, "enable_lfu": False},
}


class _Stand_in(dict):
    """What an unknown pickled class becomes: it accepts any arguments, items (as dict and
    list subclasses are pickled) and state, and does nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.__dict__.setdefault("items_", []).append(item)

    def extend(self, items):
        for item in items:
            self.append(item)


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stand_in,), {"__module__": module})


_lenient_pickle = types.ModuleType("lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = pickle.load
_lenient_pickle.__name__ = "pickle"


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # classes outside torch's allow-list (Lightning, OmegaConf)
        print(f"note: weights-only loading failed ({type(e).__name__}); "
              "loading with inert stand-ins for unknown classes", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_lenient_pickle)


_REF = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def _lookup(doc, dotted):
    cur = doc
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def _resolve(value, doc, depth=0):
    if depth > 20:
        raise ValueError("reference cycle in the config")
    if isinstance(value, dict):
        return {k: _resolve(v, doc, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, doc, depth) for v in value]
    if isinstance(value, str):
        m = _REF.match(value)
        if m:
            return _resolve(_lookup(doc, m.group(1)), doc, depth + 1)
        if "${" in value:
            raise ValueError(f"unsupported interpolation {value!r}")
    return value


def generator_config(config_path):
    if config_path is None:
        return dict(BIG_LAMA)
    import yaml

    with open(config_path) as f:
        doc = yaml.safe_load(f)
    if "generator" not in doc:
        raise SystemExit(f"{config_path}: no `generator` section")
    return _resolve(doc["generator"], doc)


def count_blocks(names):
    blocks = set()
    for n in names:
        m = re.match(r"^model\.(\d+)\.conv1\.ffc\.", n)
        if m:
            blocks.add(int(m.group(1)))
    return len(blocks)


def convert(ckpt_path, out_dir, config_path=None):
    ckpt = load_checkpoint(ckpt_path)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    tensors = {}
    for name, value in state.items():
        if not name.startswith("generator.") or name.endswith("num_batches_tracked"):
            continue
        if not torch.is_tensor(value):
            raise SystemExit(f"{name} is not a tensor")
        tensors[name[len("generator."):]] = value.detach().to(torch.float32).contiguous()
    if not tensors:
        raise SystemExit(f"{ckpt_path}: no `generator.` tensors in the state dict")
    config = generator_config(config_path)
    found = count_blocks(tensors)
    if config.get("n_blocks") != found:
        if config_path is not None:
            raise SystemExit(f"config says n_blocks {config.get('n_blocks')} but the checkpoint has {found}")
        print(f"note: no config given; the checkpoint has {found} residual blocks", file=sys.stderr)
        config["n_blocks"] = found
    config.setdefault("pad_out_to_modulo", 8)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    n = sum(t.numel() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({n / 1e6:.2f}M parameters) and config.json to {out_dir}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="the Lightning .ckpt (e.g. big-lama/models/best.ckpt)")
    p.add_argument("out_dir", help="where model.safetensors and config.json go")
    p.add_argument("--config", help="the training config.yaml (default: ../config.yaml of the "
                   "checkpoint's folder when present, else big-lama's generator)")
    a = p.parse_args()
    config = a.config
    if config is None:
        guess = os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), "..", "config.yaml")
        if os.path.isfile(guess):
            config = guess
            print(f"using {os.path.normpath(guess)}", file=sys.stderr)
    convert(a.checkpoint, a.out_dir, config)


if __name__ == "__main__":
    main()
