#!/usr/bin/env python3
"""Writes the tokenizer fixtures of cielr-planner and their reference token ids.

Outputs (in crates/cielr-planner/tests/fixtures/):
  tokenizer_tiny_bpe.gguf            a GGUF (no tensors) holding a small byte-level BPE
                                     tokenizer trained here on a built-in corpus: llama.cpp's
                                     `tokenizer.ggml.*` keys (model "gpt2", pre "smollm"), with
                                     <|endoftext|>, <|im_start|>, <|im_end|> as control tokens
                                     and a ChatML chat template
  tokenizer_tiny_bpe.json            the same tokenizer as a Hugging Face tokenizer.json
  tokenizer_tiny_reference.json      test strings with their ids from (a) the `tokenizers`
                                     library on tokenizer_tiny_bpe.json and (b) transformers'
                                     GGUF tokenizer conversion of tokenizer_tiny_bpe.gguf
  tokenizer_tiny_spm.gguf            a GGUF (no tensors) holding a small SentencePiece BPE model
                                     with byte fallback, trained here with `sentencepiece`, written
                                     the way llama.cpp's converter writes Llama 2 vocabularies
                                     (model "llama", tokens, scores, token types, no merges)
  tokenizer_tiny_spm_reference.json  test strings with their ids from (a) sentencepiece itself
                                     (with BOS) and (b) transformers' GGUF conversion
  tokenizer_smollm2_reference.json   (only with --smollm2 PATH) the same strings with the ids
                                     transformers' GGUF conversion gives for SmolLM2-135M-Instruct

transformers' `AutoTokenizer.from_pretrained(dir, gguf_file=...)` needs PyTorch only to read the
GGUF metadata; this script reads the metadata with gguf-py instead, assembles the same
dictionaries as transformers' `get_gguf_tokenizer`, and calls transformers' own
`convert_gguf_tokenizer` on them, so no PyTorch is needed.

Usage:
  python3 -m venv /work/venv-tok
  /work/venv-tok/bin/pip install gguf numpy transformers tokenizers sentencepiece
  /work/venv-tok/bin/python tools/planner/make_tokenizer_fixtures.py \
      [--smollm2 ~/.cache/cielr/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import json
import os
import sys

import numpy as np
import gguf
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "cielr-planner", "tests", "fixtures")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Move the red cup to the left of the plate, then remove the small blue bottle.",
    "Replace the cat on the sofa with a dog. Make the sky look like a sunset.",
    "Which objects are on the table? The cup, the plate and the bottle are on the table.",
    '{"action": "move", "target": 3, "relation": "left_of", "reference": 5}',
    '{"targets": [1, 2, 3], "answer": "yes", "objects": ["cup", "plate"]}',
    '{"op": "remove", "ids": [12, 7], "reason": "the user asked for it"}',
    "fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x); }",
    "def f(x):\n    return x * 2  # doubles\n\nprint(f(21))",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159",
    "It's a test. Don't stop, we'll see. I'm sure they've done it; you'd know.",
    "Café, naïve, résumé, über, smörgåsbord, 日本語, 中文, emoji 🎉🙂.",
    "yes no yes no true false null none left right above below inside",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi, how can I help?<|im_end|>",
] * 3

TEST_STRINGS = [
    "Hello world",
    "hello  world  ",
    " leading space",
    "The quick brown fox.",
    "Move the cup to the left of the plate.",
    "12345 and 3.14159, 2024!",
    "  two  spaces\n\n\ttab\r\nCRLF",
    "It's don't we'll I'M THEY'RE",
    "Café naïve 日本語 🎉🙂 ünïcödé",
    '{"targets": [1, 2], "answer": "yes"}',
    "fn main() {\n    println!(\"hi\");\n}",
    "<|im_start|>user\nWhat is on the table?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after eos",
    "a<|im_end|>b",
    "",
    " ",
    "\n",
    "x" * 40,
    "@#$%^&*()_+-=[]{};':\",./<>?`~",
]


def read_gguf_metadata(path):
    """The metadata of a GGUF file as plain Python values (gguf-py's reader)."""
    r = gguf.GGUFReader(path)
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        v = field.contents()
        if isinstance(v, np.ndarray):
            v = v.tolist()
        meta[key] = v
    return meta


def transformers_gguf_backend(path):
    """transformers' GGUF tokenizer conversion, with the metadata read by gguf-py."""
    metadata = read_gguf_metadata(path)
    architecture = metadata["general.architecture"]
    grouped = {
        group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in metadata}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    backend, _ = convert_gguf_tokenizer(architecture, grouped["tokenizer"])
    return backend, metadata


def encode_all(backend):
    out = []
    for s in TEST_STRINGS:
        ids = backend.encode(s, add_special_tokens=True).ids
        out.append(
            {
                "text": s,
                "ids": ids,
                "decoded": backend.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": backend.decode(ids, skip_special_tokens=True),
            }
        )
    return out


def train_tiny():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def write_tiny_gguf(tok, path):
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("cielr tiny byte-level BPE tokenizer")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_unk_token_id(vocab["<|endoftext|>"])
    w.add_pad_token_id(vocab["<|im_end|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens), len(merges)


def write_tiny_spm(path):
    import tempfile

    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "spm")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS),
            model_prefix=prefix,
            vocab_size=400,
            model_type="bpe",
            byte_fallback=True,
            character_coverage=1.0,
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("cielr tiny sentencepiece BPE tokenizer")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)

    tok = train_tiny()
    json_path = os.path.join(OUT, "tokenizer_tiny_bpe.json")
    tok.save(json_path, pretty=False)
    gguf_path = os.path.join(OUT, "tokenizer_tiny_bpe.gguf")
    n_tokens, n_merges = write_tiny_gguf(tok, gguf_path)

    # Reference (a): the tokenizers library on the tokenizer.json. Specials are added tokens.
    lib = Tokenizer.from_file(json_path)
    ref_lib = encode_all(lib)
    # Reference (b): transformers' conversion of the GGUF.
    backend, _ = transformers_gguf_backend(gguf_path)
    ref_hf = encode_all(backend)
    agree = sum(a["ids"] == b["ids"] for a, b in zip(ref_lib, ref_hf))
    print(f"tiny: {n_tokens} tokens, {n_merges} merges; tokenizers and transformers agree on "
          f"{agree}/{len(TEST_STRINGS)} strings", file=sys.stderr)
    with open(os.path.join(OUT, "tokenizer_tiny_reference.json"), "w") as f:
        json.dump(
            {
                "generator": f"tools/planner/make_tokenizer_fixtures.py (tokenizers {tokenizers.__version__}, "
                f"transformers {transformers.__version__}, gguf-py)",
                "vocab_size": n_tokens,
                "tokenizers_json": ref_lib,
                "transformers_gguf": ref_hf,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )
        f.write("\n")

    spm_path = os.path.join(OUT, "tokenizer_tiny_spm.gguf")
    sp = write_tiny_spm(spm_path)
    backend, _ = transformers_gguf_backend(spm_path)
    ref_hf = encode_all(backend)
    ref_sp = [{"text": s, "ids": [1] + sp.encode(s)} for s in TEST_STRINGS]
    agree = sum(a["ids"] == b["ids"] for a, b in zip(ref_sp, ref_hf))
    print(f"tiny spm: {sp.get_piece_size()} pieces; sentencepiece and transformers agree on "
          f"{agree}/{len(TEST_STRINGS)} strings", file=sys.stderr)
    with open(os.path.join(OUT, "tokenizer_tiny_spm_reference.json"), "w") as f:
        json.dump(
            {
                "generator": f"tools/planner/make_tokenizer_fixtures.py (sentencepiece, transformers "
                f"{transformers.__version__})",
                "vocab_size": sp.get_piece_size(),
                "sentencepiece": ref_sp,
                "transformers_gguf": ref_hf,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )
        f.write("\n")

    if args.smollm2:
        backend, meta = transformers_gguf_backend(args.smollm2)
        ref = encode_all(backend)
        with open(os.path.join(OUT, "tokenizer_smollm2_reference.json"), "w") as f:
            json.dump(
                {
                    "generator": f"tools/planner/make_tokenizer_fixtures.py --smollm2 (transformers "
                    f"{transformers.__version__} convert_gguf_tokenizer, gguf-py metadata)",
                    "model": os.path.basename(args.smollm2),
                    "vocab_size": len(meta["tokenizer.ggml.tokens"]),
                    "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
                    "strings": ref,
                },
                f,
                ensure_ascii=False,
                indent=1,
            )
            f.write("\n")
        print(f"smollm2: {len(ref)} strings", file=sys.stderr)


if __name__ == "__main__":
    main()
