#!/usr/bin/env bash
# update_apply's kernel against the kernel it replaced, G multiply-adds/s,
# R = 16, 48, 256, on the llama-100m block and the 8B shapes: wall clock with
# 1 and 2 threads, then CPU time with 1 thread (what the code costs when it
# runs, however busy the machine); then the accuracy numbers behind its
# double accumulator (docs/benchmarks.md, "The merge kernel").
# Usage: bench/update/run.sh [--quick] [BUILD_DIR] [PATHS]   (PATHS: auto,avx2 by default)
# --quick: the llama-100m block at R = 16, every path, a short timing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-build}
paths=${2:-auto,avx2}
if [ "$quick" = 1 ]; then
  "$build/bench/update/bench_update" --threads 1 --ranks 16 --shapes 100m \
    --paths auto,avx2,muladd,fma --min-time 0.05
  exit 0
fi
cmake --build "$build" --target bench_update -j2 >/dev/null
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(load)"
"$build/bench/update/bench_update" --threads 1,2 --ranks 16,48,256 --shapes 100m,8b --paths "$paths"
echo "# load average $(load)"
"$build/bench/update/bench_update" --threads 1 --ranks 16,48,256 --shapes 100m,8b --paths "$paths" \
  --clock cpu
echo "# load average $(load)"
"$build/bench/update/bench_update" --accuracy --ranks 16,48,256
