#!/usr/bin/env python3
"""Writes the tiny K-quant Llama fixture: a randomly initialised one-layer Llama whose
matrices are stored the way a Q4_K_M GGUF stores them (Q4_K, with Q6_K for attn_v,
ffn_down and the tied embedding/head), plus one matrix in each of the other block types
the decode path multiplies as stored (attn_k Q5_K, attn_output Q5_0, ffn_up Q5_1).

Every row width is a multiple of 256 (hidden 256, 4 heads of 64, intermediate 256), as
K-quants need. The GGUF layout (names, q/k row permutation, metadata) is
`tools/parity/llama_gguf.py`'s; only the storage types differ.

gguf-py quantises the 32-weight types but not the K-quants, so Q4_K, Q5_K and Q6_K are
quantised here (a plain min/max quantiser, not llama.cpp's search: the test compares two
decoders of the same stored bits, so only the bit layout has to be right). The script
checks that gguf-py's dequantiser reads every matrix back within its quantisation step.

The Rust test (crates/cielr-planner/tests/quant_kquant_model.rs) checks that decoding with
the matrices as stored matches decoding with candle's dequantised f32 weights.

Usage: tools/parity/llama_gguf_kquant.py [OUT_DIR]
  (default crates/cielr-planner/tests/fixtures/llama-tiny-kquant; writes config.json and
  model.gguf)
Needs: /work/venv-ref (torch, transformers, numpy, gguf).
"""

import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_gguf import gguf_name, permute  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "crates/cielr-planner/tests/fixtures/llama-tiny-kquant"
THETA = 10000.0  # transformers' default rope_theta for Llama

# Storage type per GGUF tensor-name suffix (norms stay F32).
TYPES = {
    "attn_q.weight": T.Q4_K,
    "attn_k.weight": T.Q5_K,
    "attn_v.weight": T.Q6_K,
    "attn_output.weight": T.Q5_0,
    "ffn_gate.weight": T.Q4_K,
    "ffn_up.weight": T.Q5_1,
    "ffn_down.weight": T.Q6_K,
    "token_embd.weight": T.Q6_K,
}


def f16(x):
    """Values rounded to f16 (as stored) and back to f32."""
    return x.astype(np.float16).astype(np.float32)


def f16_bytes(x):
    return x.astype("<f2").view(np.uint8).reshape(*x.shape, 2)


def safe_div(a, b):
    return np.where(b > 0, a / np.where(b > 0, b, 1), 0)


def quantize_q4k_q5k(w, bits):
    """Q4_K (bits 4) or Q5_K (bits 5) super-blocks of the rows of `w`: f16 d, f16 dmin,
    12 bytes of 6-bit sub-block scales/minimums, [32 bytes of 5th bits], 128 bytes of
    nibbles; weight = d*sc_j*q - dmin*m_j."""
    nmax = (1 << bits) - 1
    x = w.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(x.min(-1), 0)
    hi = x.max(-1)
    scale = (hi - lo) / nmax
    mins = -lo
    d = f16(scale.max(-1) / 63)
    dmin = f16(mins.max(-1) / 63)
    sc = np.clip(np.round(safe_div(scale, d[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.round(safe_div(mins, dmin[:, None])), 0, 63).astype(np.uint8)
    eff_d = d[:, None] * sc
    eff_m = dmin[:, None] * m
    q = np.clip(np.round(safe_div(x + eff_m[..., None], eff_d[..., None])), 0, nmax)
    q = q.astype(np.uint8)  # [n, 8, 32]
    packed = np.zeros((x.shape[0], 12), np.uint8)
    for j in range(4):
        packed[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        packed[:, j + 4] = (m[:, j] & 63) | ((m[:, j + 4] >> 4) << 6)
        packed[:, j + 8] = (sc[:, j + 4] & 15) | ((m[:, j + 4] & 15) << 4)
    # Each 32 bytes hold sub-blocks 2c (low nibbles) and 2c+1 (high nibbles).
    qs = ((q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)).reshape(-1, 128)
    parts = [f16_bytes(d), f16_bytes(dmin), packed]
    if bits == 5:
        qh = np.zeros((x.shape[0], 32), np.uint8)
        for j in range(8):
            qh |= ((q[:, j] >> 4) & 1) << j
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1).reshape(w.shape[0], -1)


def quantize_q6k(w):
    """Q6_K super-blocks: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales
    (one per 16 weights), f16 d; weight = d*sc*(q-32)."""
    x = w.reshape(-1, 16, 16).astype(np.float32)
    amax = np.abs(x).max(-1)
    scale = amax / 31
    d = f16(scale.max(-1) / 127)
    sc = np.clip(np.round(safe_div(scale, d[:, None])), -128, 127).astype(np.int8)
    eff = d[:, None] * sc
    q = np.clip(np.round(safe_div(x, eff[..., None])), -32, 31) + 32
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)  # [n, half, k, l]: weight 128h + 32k + l
    ql = np.concatenate(
        [(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4), (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)],
        axis=2,
    ).reshape(-1, 128)
    qh = sum(((q[:, :, k] >> 4) & 3) << (2 * k) for k in range(4)).astype(np.uint8)
    qh = qh.reshape(-1, 64)
    parts = [ql, qh, sc.view(np.uint8), f16_bytes(d)]
    return np.concatenate(parts, axis=1).reshape(w.shape[0], -1)


def quantize(w, qtype):
    if qtype == T.Q4_K:
        raw = quantize_q4k_q5k(w, 4)
    elif qtype == T.Q5_K:
        raw = quantize_q4k_q5k(w, 5)
    elif qtype == T.Q6_K:
        raw = quantize_q6k(w)
    else:
        raw = gguf.quants.quantize(w, qtype)
    back = gguf.quants.dequantize(raw, qtype)
    assert back.shape == w.shape, (qtype, back.shape)
    # Within one quantisation step of the largest sub-block range.
    step = np.abs(w).max() / {T.Q4_K: 7, T.Q5_K: 15, T.Q6_K: 31, T.Q5_0: 15, T.Q5_1: 15}[qtype]
    err = np.abs(back - w).max()
    assert err <= step, (qtype.name, err, step)
    return raw, err


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(20261127)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.config.save_pretrained(out)
    n_head, n_kv, head_dim = 4, 1, 64

    w = gguf.GGUFWriter(str(out / "model.gguf"), "llama")
    w.add_name("llama-tiny-kquant")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(THETA)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)

    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        t = t.detach().to(torch.float32)
        if ".q_proj." in name or ".k_proj." in name:
            t = permute(t, n_head, n_head if ".q_proj." in name else n_kv)
        gname = gguf_name(name)
        a = t.contiguous().numpy()
        qtype = next((q for suffix, q in TYPES.items() if gname.endswith(suffix)), None)
        if qtype is None:
            w.add_tensor(gname, a)
            continue
        raw, err = quantize(a, qtype)
        w.add_tensor(gname, raw, raw_dtype=qtype)
        print(f"{gname:28} {qtype.name:5} {list(a.shape)} max |w - dequantised| {err:.3g}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = (out / "model.gguf").stat().st_size
    print(f"{out / 'model.gguf'}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]) if len(sys.argv) == 2 else DEFAULT_OUT)
