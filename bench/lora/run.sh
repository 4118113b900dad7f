#!/usr/bin/env bash
# LoRA training (r=16, all linear layers) tokens/s and peak memory, fedlora's
# CPU backend vs PyTorch + PEFT, same shapes, same threads, in fp32
# (both sides fp32) and bf16 (fedlora --precision bf16 on a bf16 checkpoint
# vs PyTorch + PEFT with the base in bf16 under torch.autocast("cpu",
# dtype=torch.bfloat16)); bf16 rows only where oneDNN multiplies bf16.
# mixtral 400m is #16's MoE shape (8 experts, top-2, 402M parameters).
# Usage: [REPEAT=N] [PRECISIONS="fp32 bf16"] [SHAPES="gpt2 llama mixtral"]
#        bench/lora/run.sh [--quick] [BUILD_DIR] [THREADS]
# PRECISIONS and SHAPES (architectures) choose a subset of the rows.
# Each pair runs REPEAT times (default 3), the two sides alternating, and
# the ratios are of the medians: one run of either side moves by up to
# ±15 % on the shared development machine (docs/benchmarks.md).
# --quick: the tiny presets, r=2, one sequence of 16 tokens, 2 steps, one
# repeat; the reference only where torch, transformers and peft are
# installed.
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
repeat=${REPEAT:-3}
[ "$quick" = 1 ] && repeat=1
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for precision in ${PRECISIONS:-fp32 bf16}; do
  for spec in "${specs[@]}"; do
    # shellcheck disable=SC2086 # "arch preset": two words on purpose
    set -- $spec
    [[ " ${SHAPES:-gpt2 llama mixtral} " == *" $1 "* ]] || continue
    ours=() theirs=() f="" p=""
    for ((i = 0; i < repeat; i++)); do
      if ! f=$("$build/bench/lora/bench_lora" --arch "$1" --preset "$2" "${shape[@]}" \
               --precision "$precision"); then
        echo "$1-$2 $precision: not run here"; continue 2
      fi
      echo "$f"
      ours+=("$(field tokens/s "$f")")
      [ "$reference" = 1 ] || continue
      p=$(python3 "$here/ref_peft.py" --arch "$1" --preset "$2" "${shape[@]}" \
            --threads "$threads" --precision "$precision" 2>/dev/null)
      echo "$p"
      theirs+=("$(field tokens/s "$p")")
    done
    [ "$reference" = 1 ] || continue
    a=$(printf '%s\n' "${ours[@]}" | median) b=$(printf '%s\n' "${theirs[@]}" | median)
    awk -v a="$a" -v b="$b" -v c="$(field peak_rss_mib "$f")" -v d="$(field peak_rss_mib "$p")" \
        -v n="$1-$2 $precision" -v k="$repeat" \
        'BEGIN { printf "%s: median of %d: fedlora %.1f, pytorch+peft %.1f tokens/s; speed fedlora/pytorch+peft = %.2fx, memory = %.2fx\n", n, k, a, b, a / b, c / d }'
  done
done
