#!/usr/bin/env python3
"""Reference logits and timings for a real GGUF model, from transformers' own GGUF loading
(`from_pretrained(dir, gguf_file=...)`, which dequantises to float32 and undoes llama.cpp's
q/k permutation itself).

Writes OUT_DIR/reference.safetensors with
  input_ids       [P] int64   the chat-formatted prompt (the GGUF's own chat template)
  prefill_logits  [P, V] f32  logits of every prompt position
  decode_ids      [3] int64   the first three greedy tokens, fed one at a time
  decode_logits   [3, V] f32  logits after each of them (KV cache)
  greedy_ids      [16] int64  greedy continuation (argmax; EOS not special)
and, with --fixture FILE, a small copy with only the last prompt position's logits (for a
committed test fixture). Prints torch's prefill and decode tokens per second (float32, eager
attention, all CPU threads) as a JSON line starting with TORCH_TIMINGS.

Usage: tools/parity/llama_real.py MODEL.gguf OUT_DIR [--fixture FILE]
Needs: torch, transformers, gguf, safetensors, numpy.
"""

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]


def main():
    args = sys.argv[1:]
    fixture = None
    if "--fixture" in args:
        i = args.index("--fixture")
        fixture = Path(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    gguf_path, out = Path(args[0]), Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - t0

    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    n = len(ids)
    with torch.no_grad():
        out0 = model(ids[None], use_cache=True)
        prefill = out0.logits[0].float()
        # Plain greedy decoding (argmax, no logits processors, EOS not special).
        o, gen = out0, []
        for _ in range(16):
            gen.append(o.logits[0, -1].argmax())
            o = model(gen[-1].view(1, 1), past_key_values=o.past_key_values, use_cache=True)
        gen = torch.stack(gen)
        # A fresh prefill: the greedy loop above extended out0's cache in place.
        cache = model(ids[None], use_cache=True).past_key_values
        steps = []
        for t in gen[:3]:
            o = model(t.view(1, 1), past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            steps.append(o.logits[0, -1].float())
        decode_logits = torch.stack(steps)

        # Timings: best of three prefills (head on the last position only, as generation
        # needs); 32 cached greedy decode steps.
        def timed_prefill():
            s = time.perf_counter()
            model(ids[None], logits_to_keep=1)
            return time.perf_counter() - s

        prefill_s = min(timed_prefill() for _ in range(3))
        o = model(ids[None], use_cache=True, logits_to_keep=1)
        cache, nxt = o.past_key_values, o.logits[0, -1].argmax()
        steps_n = 32
        s = time.perf_counter()
        for _ in range(steps_n):
            o = model(nxt.view(1, 1), past_key_values=cache, use_cache=True)
            cache, nxt = o.past_key_values, o.logits[0, -1].argmax()
        decode_s = time.perf_counter() - s

    save_file(
        {
            "input_ids": ids.to(torch.int64).contiguous(),
            "prefill_logits": prefill.contiguous(),
            "decode_ids": gen[:3].to(torch.int64).clone(),
            "decode_logits": decode_logits.contiguous(),
            "greedy_ids": gen.to(torch.int64).clone(),
        },
        str(out / "reference.safetensors"),
    )
    if fixture is not None:
        save_file(
            {
                "input_ids": ids.to(torch.int64).contiguous(),
                "prefill_logits": prefill[-1].contiguous(),
                "greedy_ids": gen.to(torch.int64).clone(),
            },
            str(fixture),
        )
        fixture.chmod(0o644)
    print("prompt:", repr(text))
    print("greedy:", repr(tok.decode(gen)))
    print(
        "TORCH_TIMINGS "
        + json.dumps(
            {
                "threads": torch.get_num_threads(),
                "load_s": round(load_s, 2),
                "prompt_tokens": n,
                "prefill_tokens_per_s": round(n / prefill_s, 1),
                "decode_tokens_per_s": round(steps_n / decode_s, 1),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
