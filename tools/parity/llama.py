#!/usr/bin/env python3
"""Reference checkpoints and logits for the Llama-family decoder in `cielr-planner`.

Builds randomly initialised checkpoints with HuggingFace transformers, saves each as a
checkpoint folder (config.json + model.safetensors, as `save_pretrained` writes them) and a
`reference.safetensors` with:

  input_ids       [P] int64     the prompt
  decode_ids      [D] int64     tokens fed one at a time after the prompt
  prefill_logits  [P, V] f32    logits of every prompt position (one forward, causal mask)
  decode_logits   [D, V] f32    logits after each decode step (with the KV cache)
  greedy_ids      [G] int64     greedy continuation of the prompt (G = 8, argmax only)

The references are computed in float32 from the weights as saved (bf16/f16 checkpoints are
rounded first), with eager attention.

Usage:
  tools/parity/llama.py tiny  [OUT_DIR]      # the committed fixtures (default
                                             # crates/cielr-planner/tests/fixtures)
  tools/parity/llama.py full  OUT_DIR        # one Qwen2.5-0.5B-sized random checkpoint
                                             # (not committed; see llama_full.sh)
  tools/parity/llama.py batch [OUT_DIR]      # batch_reference.safetensors in each tiny
                                             # fixture folder (left-padded batched prefill
                                             # and decode; the checkpoints are only read)

`batch` writes, for prompts of different lengths in one left-padded batch (pad id 0):
  batch_ids             [B, S] int64    the left-padded prompts
  batch_mask            [B, S] int64    1 for real tokens, 0 for padding
  batch_logits          [B, S, V] f32   logits of every position (padding rows: garbage)
  batch_decode_ids      [D, B] int64    one token per row per step, fed with the cache
  batch_decode_logits   [D, B, V] f32   logits after each step
Position ids follow the attention mask (cumsum - 1, as `generate` computes them), so every
row's logits equal those of its prompt alone; the script checks that.

Needs: torch, transformers (4.4x or 5.x), safetensors, numpy. Deterministic (seeded).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

REPO = Path(__file__).resolve().parents[2]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def perturb(model, seed):
    """Random RMSNorm gains and biases, so that every parameter matters for the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def greedy(model, prompt, n):
    """Plain greedy decoding with the KV cache (no logits processors: EOS is not special)."""
    out = model(prompt[None], use_cache=True)
    tokens = []
    for _ in range(n):
        t = out.logits[0, -1].argmax()
        tokens.append(t)
        out = model(t.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(tokens)


def build(name, cls, config, dtype, out_dir, seed, prompt_len=7, decode_len=3):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = cls(config).eval()
    perturb(model, seed + 1)
    # Round the parameters (not the rotary buffers, which transformers recomputes in f32 on
    # loading) to the storage dtype; the reference is computed in f32 from the rounded values.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(DTYPES[dtype]).to(torch.float32))
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)

    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, config.vocab_size, (prompt_len + decode_len,), generator=g)
    prompt, decode = ids[:prompt_len], ids[prompt_len:]
    with torch.no_grad():
        out = model(prompt[None], use_cache=True)
        prefill = out.logits[0].float()
        cache = out.past_key_values
        steps = []
        for t in decode:
            out = model(t.view(1, 1), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[0, -1].float())
        decode_logits = torch.stack(steps)
        # Sanity: the cached decode agrees with one forward over the whole sequence.
        full = model(ids[None]).logits[0].float()
        assert torch.allclose(full[prompt_len:], decode_logits, atol=1e-4), name
        gen = greedy(model, prompt, 8)
        # The greedy path must not hinge on near-ties, or f32 rounding could flip it.
        path = model(torch.cat([prompt, gen])[None]).logits[0, prompt_len - 1 : -1]
        top2 = path.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        assert margin > 1e-3, f"{name}: greedy margin {margin}"
    model.to(DTYPES[dtype]).save_pretrained(folder, safe_serialization=True)
    (folder / "generation_config.json").unlink(missing_ok=True)
    # The checkpoint as saved, loaded back in f32, gives the same logits.
    reloaded = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        again = reloaded(prompt[None]).logits[0].float()
    assert torch.allclose(again, prefill, atol=1e-5), f"{name}: reloaded checkpoint differs"
    save_file(
        {
            "input_ids": prompt.to(torch.int64).contiguous(),
            "decode_ids": decode.to(torch.int64).contiguous(),
            "prefill_logits": prefill.contiguous(),
            "decode_logits": decode_logits.contiguous(),
            "greedy_ids": gen.to(torch.int64).contiguous(),
        },
        str(folder / "reference.safetensors"),
    )
    for f in folder.iterdir():
        f.chmod(0o644)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(
        f"{name}: {sum(p.numel() for p in model.parameters())} parameters, {dtype}, "
        f"{size / 1024:.0f} KiB, logits std {prefill.std():.3f}, greedy margin {margin:.3f}"
    )


def batch(out_dir, names=("llama-tiny-llama3", "llama-tiny-qwen2", "llama-tiny-qwen3")):
    from transformers import AutoModelForCausalLM

    for i, name in enumerate(names):
        folder = out_dir / name
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(100 + i)
        lengths = [6, 2, 4]
        prompts = [torch.randint(1, vocab, (n,), generator=g) for n in lengths]
        steps = 3
        decode = torch.randint(1, vocab, (steps, len(lengths)), generator=g)
        width = max(lengths)
        ids = torch.zeros(len(lengths), width, dtype=torch.int64)
        mask = torch.zeros(len(lengths), width, dtype=torch.int64)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = p
            mask[r, width - len(p) :] = 1
        with torch.no_grad():
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
            logits = out.logits.float()
            cache, m, last = out.past_key_values, mask, pos[:, -1]
            dec = []
            for t in decode:
                m = torch.cat([m, torch.ones(len(lengths), 1, dtype=torch.int64)], dim=1)
                last = last + 1
                o = model(t[:, None], attention_mask=m, position_ids=last[:, None],
                          past_key_values=cache, use_cache=True)
                cache = o.past_key_values
                dec.append(o.logits[:, -1].float())
            dec = torch.stack(dec)
            # Each row alone (no padding) gives the same logits.
            for r, p in enumerate(prompts):
                seq = torch.cat([p, decode[:, r]])
                alone = model(seq[None]).logits[0].float()
                n = len(p)
                assert torch.allclose(alone[:n], logits[r, width - n :], atol=1e-4), (name, r)
                assert torch.allclose(alone[n:], dec[:, r], atol=1e-4), (name, r)
        path = folder / "batch_reference.safetensors"
        save_file(
            {
                "batch_ids": ids.contiguous(),
                "batch_mask": mask.contiguous(),
                "batch_logits": logits.contiguous(),
                "batch_decode_ids": decode.to(torch.int64).contiguous(),
                "batch_decode_logits": dec.contiguous(),
            },
            str(path),
        )
        path.chmod(0o644)
        print(f"{name}: batch of {lengths}, {steps} decode steps, {path.stat().st_size / 1024:.0f} KiB")


def tiny(out_dir):
    common = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
    )
    # Llama 3.x: llama3 rope scaling (the band 64..256 positions is smoothed), untied, bf16.
    llama3_rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    rope_kw = (
        {"rope_parameters": dict(llama3_rope, rope_theta=10000.0)}
        if hasattr(LlamaConfig(), "rope_parameters")
        else {"rope_scaling": llama3_rope, "rope_theta": 10000.0}
    )
    build(
        "llama-tiny-llama3",
        LlamaForCausalLM,
        LlamaConfig(intermediate_size=96, tie_word_embeddings=False, **rope_kw, **common),
        "bfloat16",
        out_dir,
        seed=1,
    )
    # Qwen2: bias on q/k/v, tied embeddings, f32.
    build(
        "llama-tiny-qwen2",
        Qwen2ForCausalLM,
        Qwen2Config(intermediate_size=64, tie_word_embeddings=True, rope_theta=1e6, **common),
        "float32",
        out_dir,
        seed=2,
    )
    # Qwen3: q/k RMSNorm per head, head_dim (32) != hidden / heads (16), untied, f16.
    build(
        "llama-tiny-qwen3",
        Qwen3ForCausalLM,
        Qwen3Config(
            intermediate_size=96, head_dim=32, tie_word_embeddings=False, rope_theta=1e6, **common
        ),
        "float16",
        out_dir,
        seed=3,
    )


def full(out_dir):
    # Qwen2.5-0.5B's dimensions (its config.json), random weights, bf16 as published.
    config = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        initializer_range=0.02,
    )
    build("qwen2.5-0.5b-random", Qwen2ForCausalLM, config, "bfloat16", out_dir, seed=5,
          prompt_len=12, decode_len=3)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if mode == "tiny":
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-planner/tests/fixtures"
        tiny(out)
    elif mode == "batch":
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "crates/cielr-planner/tests/fixtures"
        batch(out)
    elif mode == "full":
        if len(sys.argv) < 3:
            sys.exit("usage: llama.py full OUT_DIR")
        full(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
    print(json.dumps({"torch": torch.__version__, "transformers": __import__("transformers").__version__}))
