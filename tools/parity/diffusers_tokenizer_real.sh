#!/usr/bin/env bash
# The CLIP tokenizer from vocab.json + merges.txt on the REAL CLIP BPE vocabulary (49408
# tokens; the one SD 1.x and SD 2.x ship), against transformers' CLIPTokenizer on the tricky
# strings of tools/parity/diffusers_tokenizer.py. Not run by `cargo test`.
#
# The vocabulary comes from the open_clip_torch wheel on PyPI (open_clip/bpe_simple_vocab_16e6.txt.gz,
# the BPE file of OpenAI's CLIP); vocab.json and merges.txt are derived from it as OpenAI's
# simple_tokenizer does (256 byte characters, the same with </w>, the first 48894 merges, then
# <|startoftext|> and <|endoftext|>), which is the layout of the SD folders' tokenizer/.
#
# Usage: tools/parity/diffusers_tokenizer_real.sh [CACHE_DIR]   (default ~/.cache/cielr/clip-bpe)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/work/venv-ref/bin/python}
DIR=${1:-$HOME/.cache/cielr/clip-bpe}
mkdir -p "$DIR"
if [ ! -f "$DIR/bpe_simple_vocab_16e6.txt.gz" ]; then
  "$PY" -m pip download open_clip_torch --no-deps -d "$DIR/wheel" >/dev/null
  "$PY" - "$DIR" <<'PYEOF'
import glob, sys, zipfile
d = sys.argv[1]
whl = sorted(glob.glob(f"{d}/wheel/open_clip_torch-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    open(f"{d}/bpe_simple_vocab_16e6.txt.gz", "wb").write(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
PYEOF
fi
"$PY" - "$DIR" <<'PYEOF'
import gzip, json, sys
d = sys.argv[1]
lines = gzip.open(f"{d}/bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
merges = [tuple(l.split()) for l in lines[1 : 49152 - 256 - 2 + 1]]
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
alphabet = [chr(c) for c in cs]
vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
json.dump({t: i for i, t in enumerate(vocab)}, open(f"{d}/vocab.json", "w", encoding="utf-8"), ensure_ascii=False)
open(f"{d}/merges.txt", "w", encoding="utf-8").write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>", "model_max_length": 77}, open(f"{d}/tokenizer_config.json", "w"))
print(f"vocab.json: {len(vocab)} tokens, merges.txt: {len(merges)} merges")
PYEOF
"$PY" tools/parity/diffusers_tokenizer.py --real "$DIR"
cargo run -q -p cielr-diffusion --example sd_tokenizer_check -- "$DIR"
