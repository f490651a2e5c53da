#!/usr/bin/env python3
"""Reference prefill/decode speed for tools/bench/llm.sh: PyTorch transformers on the GGUF's
weights dequantised to float32, or llama.cpp (llama-cpp-python) on the GGUF itself.

Usage: llm_ref.py {torch|llamacpp} MODEL.gguf [--threads N] [--prompt-len N] [--decode N]
                  [--repeats N] [--warmup N]

Measures exactly what examples/llm_bench.rs measures, with the same synthetic prompt ids
((i * 7919 + 17) % vocab):
  prefill: the whole prompt into an empty cache, logits of the last position;
  decode:  after a prefill, greedy single-token steps (forward, logits, argmax).
Each is run --warmup times untimed, then --repeats times; the median (and the best) is printed
as one JSON line. torch: transformers' own GGUF loading (`from_pretrained(dir, gguf_file=...)`,
dequantised to float32), eager attention, torch.set_num_threads(N). llama.cpp: the GGUF as
stored (Q4_1 etc.), n_threads = n_threads_batch = N, n_batch >= prompt length.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def prompt_ids(n, vocab):
    return [(i * 7919 + 17) % vocab for i in range(n)]


def bench_torch(a):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    path = Path(a.model)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt_ids(a.prompt_len, model.config.vocab_size)])

    def prefill():
        s = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - s, out

    def decode():
        _, out = prefill()
        cache, nxt = out.past_key_values, out.logits[0, -1].argmax()
        s = time.perf_counter()
        for _ in range(a.decode):
            out = model(nxt.view(1, 1), past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[0, -1].argmax()
        return time.perf_counter() - s

    with torch.inference_mode():
        for _ in range(a.warmup):
            prefill()
            decode()
        p = [prefill()[0] for _ in range(a.repeats)]
        d = [decode() for _ in range(a.repeats)]
    return {
        "impl": f"transformers {__import__('transformers').__version__} (torch {torch.__version__}, f32, eager)",
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        **times(a, p, d),
    }


def bench_llamacpp(a):
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=max(512, a.prompt_len + a.decode + 8),
        n_batch=max(512, a.prompt_len),
        n_ubatch=max(512, a.prompt_len),
        n_threads=a.threads,
        n_threads_batch=a.threads,
        logits_all=False,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    ids = prompt_ids(a.prompt_len, llm.n_vocab())

    def prefill():
        llm.reset()
        s = time.perf_counter()
        llm.eval(ids)
        logits = llm.scores[llm.n_tokens - 1]
        return time.perf_counter() - s, int(np.argmax(logits))

    def decode():
        _, nxt = prefill()
        s = time.perf_counter()
        for _ in range(a.decode):
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return time.perf_counter() - s

    for _ in range(a.warmup):
        prefill()
        decode()
    p = [prefill()[0] for _ in range(a.repeats)]
    d = [decode() for _ in range(a.repeats)]
    return {
        "impl": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (GGUF as stored)",
        "threads": a.threads,
        "load_s": round(load_s, 2),
        **times(a, p, d),
    }


def times(a, p, d):
    pb, db = min(p), min(d)
    p, d = statistics.median(p), statistics.median(d)
    return {
        "prompt_tokens": a.prompt_len,
        "decode_tokens": a.decode,
        "repeats": a.repeats,
        "prefill_s": round(p, 4),
        "decode_s": round(d, 4),
        "prefill_tokens_per_s": round(a.prompt_len / p, 1),
        "decode_tokens_per_s": round(a.decode / d, 1),
        "prefill_best_tokens_per_s": round(a.prompt_len / pb, 1),
        "decode_best_tokens_per_s": round(a.decode / db, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["torch", "llamacpp"])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    r = bench_torch(a) if a.which == "torch" else bench_llamacpp(a)
    print(json.dumps(r))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
