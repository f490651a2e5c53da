#!/usr/bin/env python3
"""Writes the tiny GGUF test fixture of cielr-planner and its reference values.

Outputs (in crates/cielr-planner/tests/fixtures/):
  gguf_tiny.gguf           a GGUF v3 file with metadata of every scalar type, arrays, and
                           tensors stored as F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
                           Q2_K, Q3_K, Q4_K, Q5_K and Q6_K
  gguf_tiny_expected.json  for each tensor: its GGML type, shape in PyTorch order, and the
                           values gguf-py's own `gguf.quants.dequantize` gives, as float32 bit
                           patterns (so the comparison can be bit-exact)

Quantised blocks are random bytes with the f16 scale fields overwritten by sane finite
values, so every bit pattern of the packed values is exercised.

With --smollm2 PATH it also writes gguf_smollm2_reference.json: for a few tensors of
SmolLM2-135M-Instruct.Q4_1.gguf (Q8_0 embedding, Q4_1 projections, F32 norm) the shape, the
float64 sum of all values, and the float32 bit patterns of the first 64 values and of 64 values
at seeded random positions, all from gguf-py's dequantisation.

Usage: python3 -m venv /work/venv-tok && /work/venv-tok/bin/pip install gguf numpy
       /work/venv-tok/bin/python tools/planner/make_gguf_fixture.py \
           [--smollm2 ~/.cache/cielr/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse

import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cielr-planner", "tests", "fixtures")

rng = np.random.default_rng(20240611)


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8)


def random_blocks(qtype, n_blocks):
    """Random blocks of a quantised type with finite f16 scales at the right places."""
    block, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for i in range(n_blocks):
        d = rng.uniform(0.001, 0.05) * rng.choice([-1, 1])
        m = rng.uniform(0.0005, 0.02)
        if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
            b[i, 0:2] = f16_bytes([d])
        elif qtype in (T.Q4_1, T.Q5_1):
            b[i, 0:4] = f16_bytes([d, -m])
        elif qtype in (T.Q2_K,):
            # scales[16], qs[64], d, dmin
            b[i, 80:84] = f16_bytes([abs(d), m])
        elif qtype == T.Q3_K:
            # hmask[32], qs[64], scales[12], d
            b[i, 108:110] = f16_bytes([d])
        elif qtype in (T.Q4_K, T.Q5_K):
            # d, dmin, scales[12], ...
            b[i, 0:4] = f16_bytes([abs(d), m])
        elif qtype == T.Q6_K:
            # ql[128], qh[64], scales[16], d
            b[i, 208:210] = f16_bytes([d])
        else:
            raise ValueError(qtype)
    return b


def smollm2_reference(path):
    r = gguf.GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    out = {}
    pick = np.random.default_rng(7)
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"]:
        t = by_name[name]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        flat = deq.reshape(-1)
        assert flat.size == int(np.prod(shape)), name
        idx = sorted(int(i) for i in pick.integers(0, flat.size, size=64))
        out[name] = {
            "type": t.tensor_type.name,
            "shape": shape,
            "sum": float(flat.astype(np.float64).sum()),
            "first_bits": [int(x) for x in flat[:64].view(np.uint32)],
            "sample_index": idx,
            "sample_bits": [int(x) for x in flat[idx].view(np.uint32)],
        }
    with open(os.path.join(OUT, "gguf_smollm2_reference.json"), "w") as f:
        json.dump({"generator": "tools/planner/make_gguf_fixture.py --smollm2 (gguf-py dequantize)",
                   "model": os.path.basename(path), "tensors": out}, f, separators=(",", ":"))
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.smollm2:
        smollm2_reference(args.smollm2)
    path = os.path.join(OUT, "gguf_tiny.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("cielr tiny gguf fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**40 + 3)
    w.add_int64("test.i64", -(2**40))
    w.add_float32("test.f32", 0.25)
    w.add_float64("test.f64", -1.5e-3)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓ wörld")
    w.add_array("test.str_array", ["a", "bc", "", "日本"])
    w.add_array("test.i32_array", [1, -2, 3])
    w.add_array("test.f32_array", [0.5, -1.25, 3.0])

    expected = {}

    def record(name, qtype, shape, values):
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        expected[name] = {
            "type": qtype.name,
            "shape": list(shape),
            "bits": [int(x) for x in values.view(np.uint32)],
        }

    # Plain types. Shapes are in numpy (= PyTorch) order.
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w.add_tensor("plain.f32", x)
    record("plain.f32", T.F32, x.shape, x)

    x = rng.standard_normal((3, 8)).astype(np.float16)
    w.add_tensor("plain.f16", x)
    record("plain.f16", T.F16, x.shape, x.astype(np.float32))

    x = rng.standard_normal((2, 8)).astype(np.float32)
    bf = gguf.quants.quantize(x, T.BF16)
    w.add_tensor("plain.bf16", bf, raw_dtype=T.BF16)
    record("plain.bf16", T.BF16, x.shape, gguf.quants.dequantize(bf, T.BF16))

    # Quantised types: (rows, bytes per row) uint8 arrays, dequantised by gguf-py.
    for qtype, rows, row_len in [
        (T.Q8_0, 2, 64),
        (T.Q4_0, 2, 64),
        (T.Q4_1, 3, 32),
        (T.Q5_0, 1, 64),
        (T.Q5_1, 1, 64),
        (T.Q2_K, 1, 256),
        (T.Q3_K, 1, 256),
        (T.Q4_K, 2, 256),
        (T.Q5_K, 1, 256),
        (T.Q6_K, 2, 256),
    ]:
        block, size = GGML_QUANT_SIZES[qtype]
        per_row = row_len // block
        raw = random_blocks(qtype, rows * per_row).reshape(rows, per_row * size)
        name = "quant." + qtype.name.lower()
        w.add_tensor(name, raw, raw_dtype=qtype)
        deq = gguf.quants.dequantize(raw, qtype)
        assert deq.shape == (rows, row_len), (name, deq.shape)
        assert np.all(np.isfinite(deq)), name
        record(name, qtype, deq.shape, deq)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    with open(os.path.join(OUT, "gguf_tiny_expected.json"), "w") as f:
        json.dump(
            {
                "generator": "tools/planner/make_gguf_fixture.py with gguf-py " + gguf.__version__
                if hasattr(gguf, "__version__")
                else "tools/planner/make_gguf_fixture.py with gguf-py",
                "tensors": expected,
            },
            f,
            indent=None,
            separators=(",", ":"),
        )
        f.write("\n")

    # Read the file back with gguf-py as a sanity check of the writer.
    r = gguf.GGUFReader(path)
    names = [t.name for t in r.tensors]
    assert set(names) == set(expected), names
    print(f"wrote {path} ({os.path.getsize(path)} bytes), {len(expected)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
