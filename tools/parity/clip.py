#!/usr/bin/env python3
"""Reference checkpoints, preprocessing and outputs for the CLIP port in `cielr-scene`.

Modes:

  tools/parity/clip.py tiny [OUT_DIR]   # the committed fixtures (default
                                        # crates/cielr-scene/tests/fixtures)
  tools/parity/clip.py full OUT_DIR     # one clip-vit-base-patch32-sized random checkpoint
                                        # (not committed; see clip_full.sh)
  tools/parity/clip.py time OUT_DIR     # torch timings on that checkpoint -> torch_timings.json

`tiny` writes four folders:

  clip-tiny-quickgelu/  CLIPModel, quick_gelu, float32 weights, legacy `eos_token_id: 2`
                        (text pooling at argmax(input_ids)), preprocessor 32 -> crop 32
  clip-tiny-gelu/       CLIPModel, gelu, float16 weights, real `eos_token_id` and a pad token
                        with a larger id than EOS (pooling at the first EOS), 40 -> crop 32
  clip-text/            CLIPTextModelWithProjection as Stable Diffusion checkpoints ship their
                        text encoders (top-level text config, `text_model.` prefixes)
  clip-preprocess/      CLIPImageProcessor (PIL backend) outputs for real photos

Each model folder holds what `save_pretrained` writes (config.json, model.safetensors), a
`preprocessor_config.json`, a synthetic CLIP-style `tokenizer.json` (BPE with `</w>`
suffixes, CLIP's normaliser, split regex, byte-level pre-tokeniser and RobertaProcessing, the
same pipeline as the real checkpoints' tokenizer.json, trained on a few sentences), `texts.json`
and:

  inputs.safetensors     pixel_values [2,3,32,32] f32 (assets/coffee.png and
                         clip-preprocess/chelsea_crop.png through the processor),
                         input_ids [3,S] i64, attention_mask [3,S] i64 (the tokenizer, padded
                         to max_position_embeddings, truncated)
  reference.safetensors  float32 outputs of transformers (references are computed in float32
                         from the weights as saved: float16 weights are rounded first)

Image processing uses transformers' PIL backend (`CLIPImageProcessorPil`, what
`AutoImageProcessor` returns when torchvision is not installed, and what the original OpenAI
preprocessing did). The torchvision backend differs from it by up to a few uint8 levels on a
small share of pixels; `tiny` prints how much, for coffee.png at 224.

Needs: torch, transformers 5.x, safetensors, tokenizers, numpy, pillow. Deterministic (seeded;
the tokenizer's BPE merges are learnt by a small deterministic trainer here).
chelsea.png is read from scikit-image's data folder (CLIP_SKIMAGE_DATA overrides the default
/work/venv/lib/python3.11/site-packages/skimage/data).
"""

import json
import os
import re
import string
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

REPO = Path(__file__).resolve().parents[2]
SKIMAGE_DATA = Path(os.environ.get("CLIP_SKIMAGE_DATA", "/work/venv/lib/python3.11/site-packages/skimage/data"))
COFFEE = REPO / "assets" / "coffee.png"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# Region of chelsea.png (451x300) committed as clip-preprocess/chelsea_crop.png.
CHELSEA_BOX = (150, 30, 310, 170)

TEXTS = [
    "a photo of a cat",
    "Two CUPS of   coffee!",
    "a blue cup next to the lazy dog, sleeping on the sofa",
]

# --------------------------------------------------------------------------- tokenizer

SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _clip_pipeline(tok):
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()


def train_bpe(corpus, vocab_size):
    """A tiny deterministic BPE trainer (ties broken by the pair's spelling), CLIP-style:
    the last symbol of each word carries `</w>`. The corpus is plain ASCII, for which the
    byte-level alphabet is the characters themselves."""
    words = {}
    for line in corpus:
        for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower()):
            words[w] = words.get(w, 0) + 1
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    vocab = sorted({s for seq in seqs.values() for s in seq}, key=lambda s: (s.endswith("</w>"), s))
    merges = []
    while len(vocab) < vocab_size:
        pairs = {}
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return {s: i for i, s in enumerate(vocab)}, merges


def make_tokenizer(with_pad):
    """A CLIP-style BPE tokenizer with ~130 tokens; specials last like CLIP's 49406/49407."""
    letters, punct = string.ascii_lowercase, "!?.,'-"
    corpus = [
        "a photo of a cat",
        "a photo of a dog",
        "two cups of coffee on a table",
        "the cat is sleeping on the sofa",
        "a spoon next to the cup",
        "a blue cup",
        "the quick brown fox jumps over the lazy dog",
        letters,
        letters[::-1],
        " ".join(letters),
        " ".join(string.digits),
        " ".join(punct),
        punct,
        punct[::-1],
    ]
    vocab, merges = train_bpe(corpus, 128)
    n = len(vocab)
    vocab["<|startoftext|>"] = n
    vocab["<|endoftext|>"] = n + 1
    out = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token="<|endoftext|>",
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
            fuse_unk=False,
            dropout=None,
        )
    )
    _clip_pipeline(out)
    specials = ["<|startoftext|>", "<|endoftext|>"] + (["<|pad|>"] if with_pad else [])
    out.add_special_tokens(specials)
    out.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", n + 1), ("<|startoftext|>", n), trim_offsets=False, add_prefix_space=False
    )
    return out


def encode(tok, pad_token, max_length):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token=pad_token,
    )
    enc = fast(TEXTS, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


# --------------------------------------------------------------------------- images


def chelsea_crop():
    return Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB").crop(CHELSEA_BOX)


def processor(shortest_edge, crop, **kw):
    return CLIPImageProcessorPil(
        size={"shortest_edge": shortest_edge},
        crop_size={"height": crop, "width": crop},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
        **kw,
    )


def pixel_values(proc, images):
    out = proc(images=images, return_tensors="np")["pixel_values"]
    return torch.from_numpy(np.ascontiguousarray(out)).to(torch.float32)


# --------------------------------------------------------------------------- weights


def perturb(model, seed):
    """Weights of unit-ish scale, LayerNorm gains around 1 and non-zero biases, so that every
    parameter changes the outputs (transformers' own init is too close to trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("logit_scale"):
                p.fill_(2.3)
            elif name.endswith("class_embedding"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "position_embedding" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "token_embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def save_model(model, out, dtype):
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):
        old.unlink()
    model.to(dtype).save_pretrained(out)
    model.to(torch.float32)


def size_kb(folder):
    return sum(f.stat().st_size for f in folder.iterdir()) / 1024


# --------------------------------------------------------------------------- CLIPModel fixtures


def clip_fixture(out, name, text_cfg, vision_cfg, projection_dim, proc, dtype, pad_token, with_pad, seed):
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(with_pad)
    tok.save(str(folder / "tokenizer.json"))
    text_cfg = dict(text_cfg, vocab_size=tok.get_vocab_size() + 3)
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    perturb(model, seed + 1)
    round_to(model, dtype)
    save_model(model, folder, dtype)
    proc.save_pretrained(folder)

    images = [Image.open(COFFEE).convert("RGB"), chelsea_crop()]
    pixels = pixel_values(proc, images)
    ids, mask = encode(tok, pad_token, text_cfg["max_position_embeddings"])
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)
        text_noproj = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        vision_noproj = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    ref = {
        "image_embeds": o.image_embeds,
        "text_embeds": o.text_embeds,
        "logits_per_image": o.logits_per_image,
        "logits_per_text": o.logits_per_text,
        "vision_last_hidden_state": vision_noproj.last_hidden_state,
        "vision_pooler_output": vision_noproj.pooler_output,
        "vision_hidden_state_penultimate": vision_noproj.hidden_states[-2],
        "text_last_hidden_state": text_noproj.last_hidden_state,
        "text_pooler_output": text_noproj.pooler_output,
        "text_hidden_state_penultimate": text_noproj.hidden_states[-2],
    }
    save_file({k: v.contiguous().to(torch.float32) for k, v in ref.items()}, folder / "reference.safetensors")
    save_file(
        {"pixel_values": pixels.contiguous(), "input_ids": ids.contiguous(), "attention_mask": mask.contiguous()},
        folder / "inputs.safetensors",
    )
    (folder / "texts.json").write_text(
        json.dumps({"texts": TEXTS, "pad_token": pad_token, "max_length": text_cfg["max_position_embeddings"]}, indent=1)
        + "\n"
    )
    print(f"{name}: {size_kb(folder):.0f} KB, input_ids {ids.tolist()}")
    return model


def text_fixture(out, seed):
    folder = out / "clip-text"
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(False)
    tok.save(str(folder / "tokenizer.json"))
    config = CLIPTextConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=16,
        hidden_act="gelu",
        projection_dim=20,
        bos_token_id=tok.token_to_id("<|startoftext|>"),
        eos_token_id=tok.token_to_id("<|endoftext|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config).eval()
    perturb(model, seed + 1)
    save_model(model, folder, torch.float32)
    ids, mask = encode(tok, "<|endoftext|>", 16)
    with torch.no_grad():
        # Stable Diffusion calls its text encoder without an attention mask.
        o = model(input_ids=ids, output_hidden_states=True)
        inner = model.text_model(input_ids=ids, output_hidden_states=True)
    save_file({"input_ids": ids.contiguous()}, folder / "inputs.safetensors")
    ref = {
        "last_hidden_state": inner.last_hidden_state,
        "pooler_output": inner.pooler_output,
        "text_embeds": o.text_embeds,
        "hidden_state_penultimate": inner.hidden_states[-2],
    }
    save_file({k: v.contiguous() for k, v in ref.items()}, folder / "reference.safetensors")
    (folder / "texts.json").write_text(
        json.dumps({"texts": TEXTS, "pad_token": "<|endoftext|>", "max_length": 16}, indent=1) + "\n"
    )
    print(f"clip-text: {size_kb(folder):.0f} KB")


# --------------------------------------------------------------------------- preprocessing fixture


def preprocess_fixture(out):
    folder = out / "clip-preprocess"
    folder.mkdir(parents=True, exist_ok=True)
    chelsea_crop().save(folder / "chelsea_crop.png", optimize=True)
    coffee = Image.open(COFFEE)
    # Small synthetic-from-photo inputs: a tiny crop (upscaling), RGBA with an alpha ramp
    # (composited on white as transformers does), greyscale.
    tiny = chelsea_crop().crop((60, 40, 83, 57))
    tiny.save(folder / "tiny.png")
    rgba = chelsea_crop().resize((40, 30), Image.BICUBIC).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    alpha[:5, :] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    grey = chelsea_crop().crop((0, 0, 90, 60)).convert("L")
    grey.save(folder / "grey.png")

    legacy_224 = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_MEAN,
        "image_std": OPENAI_STD,
        "resample": 3,
        "size": 224,
    }

    def cfg(size, crop, resample=3, **kw):
        c = {
            "do_resize": True,
            "size": size,
            "resample": resample,
            "do_center_crop": crop is not None,
            "crop_size": crop if crop is not None else {"height": 224, "width": 224},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": OPENAI_MEAN,
            "image_std": OPENAI_STD,
            "do_convert_rgb": True,
        }
        c.update(kw)
        return c

    sq = lambda n: {"height": n, "width": n}  # noqa: E731
    # (name, image, crop box applied to the image first or None, processor config)
    cases = [
        ("coffee-bicubic-32", "coffee", None, cfg({"shortest_edge": 32}, sq(32))),
        ("chelsea-bicubic-40-crop-32", "chelsea_crop", None, cfg({"shortest_edge": 40}, sq(32))),
        ("coffee-portrait-bicubic-24", "coffee", [200, 0, 400, 400], cfg({"shortest_edge": 24}, sq(24))),
        ("tiny-upscale-bicubic-32", "tiny", None, cfg({"shortest_edge": 32}, sq(32))),
        ("coffee-bilinear-20", "coffee", None, cfg({"shortest_edge": 20}, sq(20), resample=2)),
        ("coffee-lanczos-20", "coffee", None, cfg({"shortest_edge": 20}, sq(20), resample=1)),
        ("coffee-box-20", "coffee", None, cfg({"shortest_edge": 20}, sq(20), resample=4)),
        ("coffee-hamming-20", "coffee", None, cfg({"shortest_edge": 20}, sq(20), resample=5)),
        ("coffee-nearest-20", "coffee", None, cfg({"shortest_edge": 20}, sq(20), resample=0)),
        ("tiny-nearest-upscale-32", "tiny", None, cfg({"shortest_edge": 32}, sq(32), resample=0)),
        ("rgba-upscale-32", "rgba", None, cfg({"shortest_edge": 32}, sq(32))),
        (
            "grey-hw-30x20-half",
            "grey",
            None,
            cfg({"height": 30, "width": 20}, None, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
        ),
        ("chelsea-crop-larger-than-image", "tiny", None, cfg({"shortest_edge": 16}, {"height": 20, "width": 30})),
    ]
    sources = {
        "coffee": lambda: Image.open(COFFEE),
        "chelsea_crop": lambda: Image.open(folder / "chelsea_crop.png"),
        "tiny": lambda: Image.open(folder / "tiny.png"),
        "rgba": lambda: Image.open(folder / "rgba.png"),
        "grey": lambda: Image.open(folder / "grey.png"),
    }
    refs, listing = {}, []
    for name, src, box, c in cases:
        img = sources[src]()
        if box is not None:
            img = img.crop(tuple(box))
        proc = CLIPImageProcessorPil(**c)
        refs[name] = pixel_values(proc, [img])[0].contiguous()
        listing.append({"name": name, "image": src, "crop_box": box, "processor": c})

    # The 224 case: uint8 output of resize + centre crop (exact-match check) and statistics of
    # the normalised values (too large to commit in full).
    big = []
    for src, box in [("coffee", None)]:
        img = sources[src]()
        proc = CLIPImageProcessorPil(**legacy_224)
        raw = CLIPImageProcessorPil(**dict(legacy_224, do_rescale=False, do_normalize=False))
        u8 = raw(images=[img], return_tensors="np")["pixel_values"][0]
        assert np.all(u8 == np.round(u8))
        png = f"{src}_224.png"
        Image.fromarray(np.moveaxis(u8.astype(np.uint8), 0, -1)).save(folder / png, optimize=True)
        pv = proc(images=[img], return_tensors="np")["pixel_values"][0].astype(np.float64)
        big.append(
            {
                "image": src,
                "uint8_reference": png,
                "sum": float(pv.sum()),
                "abs_sum": float(np.abs(pv).sum()),
                "first": [float(x) for x in pv.reshape(-1)[:16]],
            }
        )
    (folder / "cases.json").write_text(
        json.dumps({"cases": listing, "legacy_224": {"processor": legacy_224, "images": big}}, indent=1) + "\n"
    )
    save_file(refs, folder / "reference.safetensors")
    print(f"clip-preprocess: {size_kb(folder):.0f} KB")

    # How far the torchvision backend (transformers' default when torchvision is installed) is
    # from the PIL backend, emulated with torch's own antialiased bicubic resize.
    img = np.array(coffee.convert("RGB"))
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    pil = np.array(Image.fromarray(img).resize((336, 224), Image.BICUBIC)).astype(np.int64)
    for label, x in [("uint8", t), ("float32", t.float())]:
        r = torch.nn.functional.interpolate(x, size=(224, 336), mode="bicubic", antialias=True, align_corners=False)
        r = r.float().clamp(0, 255).round()[0].permute(1, 2, 0).numpy().astype(np.int64)
        d = np.abs(r - pil)
        print(
            f"torch antialiased bicubic ({label} input) vs PIL, coffee 600x400 -> 336x224: max {d.max()} uint8 "
            f"levels, {100 * (d > 0).mean():.2f}% of values differ, max normalised diff "
            f"{d.max() / 255 / min(OPENAI_STD):.4f}"
        )


def tiny(out):
    out.mkdir(parents=True, exist_ok=True)
    preprocess_fixture(out)
    clip_fixture(
        out,
        "clip-tiny-quickgelu",
        text_cfg=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            # The legacy value of openai/clip-vit-*: pooling at argmax(input_ids).
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_cfg=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=24,
        proc=processor(32, 32),
        dtype=torch.float32,
        pad_token="<|endoftext|>",
        with_pad=False,
        seed=1,
    )
    tok = make_tokenizer(True)
    clip_fixture(
        out,
        "clip-tiny-gelu",
        text_cfg=dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=20,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            bos_token_id=tok.token_to_id("<|startoftext|>"),
            eos_token_id=tok.token_to_id("<|endoftext|>"),
            pad_token_id=tok.token_to_id("<|pad|>"),
        ),
        vision_cfg=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
        ),
        projection_dim=16,
        proc=processor(40, 32),
        dtype=torch.float16,
        pad_token="<|pad|>",
        with_pad=True,
        seed=2,
    )
    text_fixture(out, seed=3)


# --------------------------------------------------------------------------- full size


def full(out):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # clip-vit-base-patch32's dimensions (transformers' defaults) with its legacy eos_token_id.
    config = CLIPConfig(text_config={"eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1}, vision_config={})
    t0 = time.perf_counter()
    model = CLIPModel(config).eval()
    perturb(model, 1)
    save_model(model, out, torch.float32)
    legacy_224 = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": OPENAI_MEAN,
        "image_std": OPENAI_STD,
        "resample": 3,
        "size": 224,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(legacy_224, indent=1) + "\n")
    proc = CLIPImageProcessorPil(**legacy_224)
    chelsea = chelsea_crop()
    chelsea.save(out / "chelsea_crop.png")
    images = [Image.open(COFFEE).convert("RGB"), chelsea]
    pixels = pixel_values(proc, images)
    # Token ids as the real tokenizer lays them out: BOS, words, EOS, padding with EOS, 77 long.
    g = torch.Generator().manual_seed(5)
    ids = torch.full((3, 77), 49407, dtype=torch.int64)
    for row, n in enumerate([7, 12, 75]):
        ids[row, 0] = 49406
        ids[row, 1 : n + 1] = torch.randint(0, 49406, (n,), generator=g)
    mask = (torch.arange(77)[None, :] <= torch.tensor([8, 13, 76])[:, None]).to(torch.int64)
    print(f"built and saved in {time.perf_counter() - t0:.1f} s")

    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        vis = model.vision_model(pixel_values=pixels)
        txt = model.text_model(input_ids=ids, attention_mask=mask)
    save_file(
        {"pixel_values": pixels.contiguous(), "input_ids": ids, "attention_mask": mask},
        out / "inputs.safetensors",
    )
    save_file(
        {
            "image_embeds": o.image_embeds.contiguous(),
            "text_embeds": o.text_embeds.contiguous(),
            "logits_per_image": o.logits_per_image.contiguous(),
            "vision_last_hidden_state": vis.last_hidden_state.contiguous(),
            "text_last_hidden_state": txt.last_hidden_state.contiguous(),
        },
        out / "reference.safetensors",
    )


def time_torch(out, runs=7):
    """Times transformers on the checkpoint in OUT (CPU, torch's default threads): two warm-up
    calls, then median and minimum of `runs`. Writes torch_timings.json."""
    from safetensors.torch import load_file

    model = CLIPModel.from_pretrained(out, dtype=torch.float32).eval()
    inputs = load_file(out / "inputs.safetensors")
    pixels, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    proc = CLIPImageProcessorPil.from_pretrained(out)
    images = [Image.open(COFFEE).convert("RGB"), Image.open(out / "chelsea_crop.png").convert("RGB")]

    def timed(f):
        f()
        f()
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return {"median": sorted(ts)[len(ts) // 2], "min": min(ts)}

    with torch.no_grad():
        timings = {
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "preprocess_2_images_s": timed(lambda: proc(images=images, return_tensors="np")),
            "vision_2_images_s": timed(lambda: model.get_image_features(pixel_values=pixels)),
            "text_3x77_s": timed(lambda: model.get_text_features(input_ids=ids, attention_mask=mask)),
            "clip_forward_s": timed(lambda: model(input_ids=ids, attention_mask=mask, pixel_values=pixels)),
        }
    (out / "torch_timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    print(json.dumps(timings, indent=1))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if mode == "tiny":
        tiny(Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-scene/tests/fixtures")
    elif mode in ("full", "time"):
        if len(sys.argv) < 3:
            sys.exit(f"usage: clip.py {mode} OUT_DIR")
        (full if mode == "full" else time_torch)(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
