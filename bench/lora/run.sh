#!/usr/bin/env bash
# LoRA training (r=16, all linear layers) tokens/s and peak memory, fedlora's
# CPU backend vs PyTorch + PEFT, same shapes, same threads, one run, in fp32
# (both sides fp32) and bf16 (fedlora --precision bf16 on a bf16 checkpoint
# vs PyTorch + PEFT with the base in bf16 under torch.autocast("cpu",
# dtype=torch.bfloat16)); bf16 rows only where oneDNN multiplies bf16.
# mixtral 400m is #16's MoE shape (8 experts, top-2, 402M parameters).
# Usage: bench/lora/run.sh [--quick] [BUILD_DIR] [THREADS]
# --quick: the tiny presets, r=2, one sequence of 16 tokens, 2 steps; the
# reference only where torch, transformers and peft are installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-build}
threads=${2:-2}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
field() { sed -n "s|.*$1=\([0-9.]*\).*|\1|p" <<<"$2"; }
specs=("gpt2 124m" "llama 100m" "mixtral 400m") shape=(--rank 16 --batch 4 --seq 256)
reference=1
if [ "$quick" = 1 ]; then
  specs=("gpt2 tiny" "llama tiny" "mixtral tiny") shape=(--rank 2 --batch 1 --seq 16 --steps 2)
  have_python torch transformers peft || reference=0
fi
for precision in fp32 bf16; do
  for spec in "${specs[@]}"; do
    # shellcheck disable=SC2086 # "arch preset": two words on purpose
    set -- $spec
    if ! f=$("$build/bench/lora/bench_lora" --arch "$1" --preset "$2" "${shape[@]}" \
             --precision "$precision"); then
      echo "$1-$2 $precision: not run here"; continue
    fi
    echo "$f"
    [ "$reference" = 1 ] || continue
    p=$(python3 "$here/ref_peft.py" --arch "$1" --preset "$2" "${shape[@]}" \
          --threads "$threads" --precision "$precision" 2>/dev/null)
    echo "$p"
    awk -v a="$(field tokens/s "$f")" -v b="$(field tokens/s "$p")" \
        -v c="$(field peak_rss_mib "$f")" -v d="$(field peak_rss_mib "$p")" -v n="$1-$2 $precision" \
        'BEGIN { printf "%s: speed fedlora/pytorch+peft = %.2fx, memory = %.2fx\n", n, a / b, c / d }'
  done
done
