#!/usr/bin/env bash
# Forward+backward tokens/s, fedlora CPU backend vs PyTorch fp32, same shapes,
# same threads, one run. Usage: bench/model/run.sh [BUILD_DIR] [THREADS]
set -euo pipefail
build=${1:-build}
threads=${2:-2}
here=$(dirname "$0")
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
for spec in "gpt2 124m" "llama 100m"; do
  set -- $spec
  f=$("$build/bench/model/bench_model" --arch "$1" --preset "$2" --batch 4 --seq 256)
  echo "$f"
  p=$(python3 "$here/ref_torch.py" --arch "$1" --preset "$2" --batch 4 --seq 256 --threads "$threads" 2>/dev/null)
  echo "$p"
  ft=$(sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p' <<<"$f")
  pt=$(sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p' <<<"$p")
  awk -v a="$ft" -v b="$pt" -v n="$1-$2" 'BEGIN { printf "%s: fedlora/pytorch = %.2fx\n", n, a / b }'
done
