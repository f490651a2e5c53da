#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time, then prints a
# table: target, seconds, runs executed, crashes (inputs libFuzzer saved: crash-, timeout-,
# oom-, slow-unit-), peak RSS.
#
#   tools/fuzz/run.sh [seconds-per-target] [target...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Built without a
# sanitizer (Rust code; much faster to build and run): panics, overflow checks
# (debug assertions are on), timeouts (> 10 s per input), RSS over 2 GiB and any single
# allocation over 1 GiB (`CIELR_FUZZ_ALLOC_LIMIT_MB`, enforced by the targets' allocator)
# count as crashes. The seed corpora in fuzz/corpus/<target>/ are read, never written; the
# growing corpus and crashing inputs go to $CIELR_FUZZ_DIR (default /work/target-fuzz, also
# the cargo target dir). Reproduce a crash with `<binary> <crash file>`; keep it as a
# regression test in crates/<crate>/tests/fuzz_regressions.rs. CIELR_FUZZ_NO_BUILD=1 skips
# the build and runs the binaries already in $CIELR_FUZZ_DIR.
set -euo pipefail

SECS=${1:-60}
shift || true
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${CIELR_FUZZ_DIR:-/work/target-fuzz}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
ALL=(gguf safetensors tfjs ssr_json plan_json coco_rle llm_answer constrained_json reasoning_loop image_decode datasets)
TARGETS=("${@:-${ALL[@]}}")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

cd "$ROOT"
if [ -z "${CIELR_FUZZ_NO_BUILD:-}" ]; then
  # The build takes ~5 GB; refuse to start it on a nearly full disk.
  free_gb=$(df -BG --output=avail "$(dirname "$WORK")" | tail -1 | tr -dc '0-9')
  if [ "${free_gb:-0}" -lt 8 ]; then
    echo "only ${free_gb} GB free on $(dirname "$WORK"): not building" \
      "(CIELR_FUZZ_NO_BUILD=1 runs the binaries already built)" >&2
    exit 2
  fi
  cargo +nightly fuzz build --sanitizer none --debug-assertions --target-dir "$WORK" >&2
fi
BIN="$WORK/$TRIPLE/release"

printf '%-18s %8s %12s %8s %10s\n' target seconds runs crashes peak_rss_mb
for t in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$t"
  artifacts="$WORK/artifacts/$t"
  log="$WORK/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  before=$(find "$artifacts" -type f | wc -l)
  case $t in
    gguf | safetensors | tfjs | image_decode) max_len=65536 ;;
    *) max_len=16384 ;;
  esac
  set +e
  "$BIN/$t" "$corpus" "$ROOT/fuzz/corpus/$t" \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  after=$(find "$artifacts" -type f | wc -l)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  printf '%-18s %8s %12s %8s %10s\n' "$t" "$SECS" "${runs:-?}" "$((after - before))" "${rss:-?}"
  if [ "$rc" -ne 0 ]; then
    echo "  $t stopped (exit $rc): $(grep -m1 -E 'panicked|ERROR|cielr-fuzz:|Timeout|out-of-memory' "$log" || true)"
    echo "  log: $log; inputs: $artifacts/"
  fi
done
