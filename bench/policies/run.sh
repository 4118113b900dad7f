#!/usr/bin/env bash
# Aggregation throughput (GB/s of factor bytes in) and memory of one round,
# 3 to 64 members, each rule, next to a memcpy of the same bytes in the same
# process (docs/benchmarks.md, "Policies / aggregation throughput").
# Usage: bench/policies/run.sh [--quick] [BUILD_DIR] [THREADS]
# --quick: each rule once with 5 members of rank 2 on a model of hidden 128.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-build}
threads=${2:-2}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive
if [ "$quick" = 1 ]; then
  for rule in mean median krum dp svd; do
    "$build/bench/policies/bench_policies" --members 5 --rule "$rule" --rank 2 --reps 1 --hidden 128
  done
  exit 0
fi
for rule in mean median krum dp svd; do
  for k in 3 8 16 32 64; do
    [ "$rule" = krum ] && [ "$k" -lt 5 ] && continue # multi-Krum (f = 1) needs 2f + 3 members
    "$build/bench/policies/bench_policies" --members "$k" --rule "$rule" --rank 16 --reps 3
  done
done
