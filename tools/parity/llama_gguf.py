#!/usr/bin/env python3
"""Writes a HuggingFace Llama/Qwen3 checkpoint folder as a GGUF file the way llama.cpp's
`convert_hf_to_gguf.py` does for these architectures, so that the GGUF loader of
`cielr-planner` can be checked against the same weights saved both ways:

  * tensor names: token_embd, blk.N.attn_q/attn_k/attn_v/attn_output, attn_q_norm,
    attn_k_norm, ffn_gate/ffn_up/ffn_down, attn_norm, ffn_norm, output_norm, output
    (absent when the embeddings are tied);
  * for the `llama` architecture the rows of attn_q and attn_k are permuted to the
    interleaved rotary layout (`LlamaModel.permute`); qwen2/qwen3 are stored unpermuted;
  * Llama 3's rope scaling becomes the `rope_freqs.weight` tensor of per-frequency factors;
  * metadata keys `<arch>.block_count`, `.embedding_length`, `.feed_forward_length`,
    `.attention.head_count(_kv)`, `.attention.key_length`, `.attention.layer_norm_rms_epsilon`,
    `.rope.freq_base`, `.rope.dimension_count`, `.context_length`, `.vocab_size`.

Tensors keep the checkpoint's precision (f32 -> F32, f16 -> F16, bf16 -> BF16), so the GGUF
holds exactly the same numbers as the safetensors file. No tokenizer is written.

Usage: tools/parity/llama_gguf.py CHECKPOINT_DIR OUT.gguf
Needs: torch, safetensors, numpy, gguf (pip install gguf).
"""

import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file


def permute(weights, n_head, n_head_kv):
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(name):
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    _, _, i, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{LAYER[module]}.{kind}"


def add(writer, name, t):
    if t.dtype == torch.bfloat16:
        raw = t.contiguous().view(torch.int16).numpy().view(np.uint16)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
    elif t.dtype == torch.float16:
        writer.add_tensor(name, t.contiguous().numpy())
    else:
        writer.add_tensor(name, t.to(torch.float32).contiguous().numpy())


def main(src, out):
    cfg = json.loads((src / "config.json").read_text())
    arch = cfg["model_type"]
    assert arch in ("llama", "qwen2", "qwen3"), arch
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head

    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(src.name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])

    tensors = load_file(str(src / "model.safetensors"))
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    if rope.get("rope_type", rope.get("type")) == "llama3":
        # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
        freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        factor = rope["factor"]
        low, high = rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        factors = []
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < old / high:
                factors.append(1)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        add(w, "rope_freqs.weight", torch.tensor(factors, dtype=torch.float32))
    for name, t in tensors.items():
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            t = permute(t, n_head, n_head if ".q_proj." in name else n_kv)
        add(w, gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{out}: {len(tensors)} tensors, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
