"""CLIP tokenizer parity fixture: a tiny CLIP-style BPE vocabulary as released SD folders ship
it (`vocab.json` + `merges.txt` + `tokenizer_config.json`, no `tokenizer.json`) and the ids
transformers' `CLIPTokenizer` gives for tricky strings (unicode, punctuation, whitespace,
contractions, digits, special-token text, long prompts truncated at 77).

The vocabulary has CLIP's layout: the 256 byte-level characters, the same with `</w>`, merges
learned here from a small corpus by plain BPE (most frequent pair first, ties broken by the
pair's text), then `<|startoftext|>` and `<|endoftext|>`. `tokenizer_config.json` pads with
`!` as the SD 2 folders do.

Usage: /work/venv-ref/bin/python tools/parity/diffusers_tokenizer.py OUT_DIR [N_MERGES]
(the committed fixture: crates/cielr-diffusion/tests/fixtures/clip-bpe-tiny, 300 merges).
With --real DIR it instead reads a real vocab.json + merges.txt from DIR and writes only
reference.json there (tools/parity/diffusers_tokenizer_real.sh).
"""

import collections
import json
import sys
from pathlib import Path

import tokenizers
import transformers
from transformers import CLIPTokenizer

CORPUS = """
a photo of a cat sitting on a red chair next to the window
a blue cup of coffee on a wooden table with a silver spoon
the dog is running in the park with a ball, photorealistic, high quality
remove the spoon and make the cup green; replace the chair with a sofa
an oil painting of mountains at sunset, trending on artstation, 4k, highly detailed
blurry, low quality, distorted, text, watermark, ugly, deformed
portrait of a woman with long hair, studio lighting, 85mm, sharp focus
there's a bird on the tree and it's singing; we've seen the birds before
""" * 3

STRINGS = [
    "a blue cup",
    "A Photo of a CAT, sitting on a Chair!!!",
    "Café naïve résumé — déjà vu",
    "e\u0301 versus \u00e9 (NFC)",
    "Straße ǅ ligature ﬁ",
    "ＡＢＣ full-width ｆｕｌｌ",
    "日本語のテキスト and 中文",
    "emoji 🐶🍕 ok 👍🏽!!",
    "  multiple   spaces\tand\nnewlines\r\n ",
    "don't you'll we've I'M she'd they're it's",
    "1234567 numbers 3.14 and 2nd/3rd",
    "punctuation!!! ??? ...,;: (brackets) [x] {y} @#$%^&*",
    "<|startoftext|> inside <|endoftext|> text",
    "",
    " ".join(["word"] * 100),
    "a very long prompt " + ", ".join(f"detail {i}" for i in range(60)),
    "x" * 300,
]


def learn_merges(words, n_merges):
    """Plain BPE over byte-level words ending in </w>."""
    seqs = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in words.items()}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for seq, c in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = {}
        for seq, c in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        seqs = new
    return merges


def byte_chars():
    return [tokenizers.pre_tokenizers.ByteLevel.alphabet()]


def build(out: Path, n_merges: int):
    out.mkdir(parents=True, exist_ok=True)
    # The byte-level alphabet in CLIP's order (bytes_to_unicode).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    alphabet = [chr(c) for c in cs]
    pre = tokenizers.pre_tokenizers.Sequence(
        [
            tokenizers.pre_tokenizers.Split(
                tokenizers.Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    words = collections.Counter(w for w, _ in pre.pre_tokenize_str(CORPUS.lower()))
    merges = learn_merges(words, n_merges)
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {}
    for t in vocab_list:
        vocab.setdefault(t, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "!",
                "model_max_length": 77,
                "tokenizer_class": "CLIPTokenizer",
            },
            indent=1,
        )
    )
    reference(out, out / "reference.json")


def reference(src: Path, dest: Path):
    tok = CLIPTokenizer(
        vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"), **_special(src)
    )
    assert not (src / "tokenizer.json").exists()
    enc = tok(STRINGS, padding="max_length", max_length=77, truncation=True)
    dest.write_text(
        json.dumps(
            {
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "max_length": 77,
                "strings": STRINGS,
                "input_ids": enc["input_ids"],
            },
            ensure_ascii=False,
            indent=0,
        ),
        encoding="utf-8",
    )


def _special(src: Path):
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    keys = ("bos_token", "eos_token", "unk_token", "pad_token")
    out = {}
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, dict):
            v = v.get("content")
        if v is not None:
            out[k] = v
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--real":
        d = Path(sys.argv[2])
        reference(d, d / "reference.json")
    else:
        build(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 300)
