#!/usr/bin/env bash
# A federated round's non-training overhead (seal, transfer + checks, merge,
# publish), the aggregator's peak memory, and the next version's model sync
# (low-rank update against the full download) for 1, 3 and 16 nodes with
# rank-16 deltas on all seven linear layers of a ~100M-parameter Llama
# (preset 100m, random weights and adapters: no training), with the base in
# float32 and in bfloat16 (versions in the base's dtype: docs/formats.md).
# Usage: bench/aggregator/run.sh [--quick] [BUILD_DIR] [SCRATCH_DIR]
# --quick: 2 nodes, rank 2, the tiny preset (bench/lib.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-$here/../../build}
scratch=${2:-${TMPDIR:-/tmp}/fedlora-bench-aggregator-$$}
if [ "$quick" = 1 ]; then
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$build/bench/aggregator/bench_aggregator" \
    --fedlora "$build/fedlora" --nodes 2 --rank 2 --preset tiny --dir "$scratch"
  rm -rf "$scratch"
  exit 0
fi
cmake --build "$build" --target bench_aggregator fedlora -j2 >/dev/null
echo "# $(date -u +%Y-%m-%d) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for dtype in float32 bfloat16; do
  for n in 1 3 16; do
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$build/bench/aggregator/bench_aggregator" \
      --fedlora "$build/fedlora" --nodes "$n" --rank 16 --preset 100m --dtype "$dtype" \
      --dir "$scratch"
  done
done
rm -rf "$scratch"
