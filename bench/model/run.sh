#!/usr/bin/env bash
# Forward+backward tokens/s, fedlora CPU backend vs PyTorch fp32, same shapes,
# same threads, one run.
# Usage: bench/model/run.sh [--quick] [BUILD_DIR] [THREADS]
# --quick: the tiny GPT-2 (the program measures this machine's sgemm peak for
# each network, which takes seconds), one sequence of 16 tokens, 2 steps;
# the reference only where torch and transformers are installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-build}
threads=${2:-2}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
specs=("gpt2 124m" "llama 100m") shape=(--batch 4 --seq 256)
reference=1
if [ "$quick" = 1 ]; then
  specs=("gpt2 tiny") shape=(--batch 1 --seq 16 --steps 2)
  have_python torch transformers || reference=0
fi
for spec in "${specs[@]}"; do
  # shellcheck disable=SC2086 # "arch preset": two words on purpose
  set -- $spec
  f=$("$build/bench/model/bench_model" --arch "$1" --preset "$2" "${shape[@]}")
  echo "$f"
  [ "$reference" = 1 ] || continue
  p=$(python3 "$here/ref_torch.py" --arch "$1" --preset "$2" "${shape[@]}" --threads "$threads" 2>/dev/null)
  echo "$p"
  ft=$(sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p' <<<"$f")
  pt=$(sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p' <<<"$p")
  awk -v a="$ft" -v b="$pt" -v n="$1-$2" 'BEGIN { printf "%s: fedlora/pytorch = %.2fx\n", n, a / b }'
done
