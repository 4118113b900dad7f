#!/usr/bin/env bash
# Generation speed (prefill, then greedy decoding from the KV cache, LoRA r=16
# attached): fedlora's decoder vs transformers' generate() + PEFT, same
# shapes, same threads, one run.
# Usage: bench/generate/run.sh [BUILD_DIR] [THREADS]
set -euo pipefail
build=${1:-build}
threads=${2:-2}
here=$(dirname "$0")
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
field() { sed -n "s|.*$1=\([0-9.]*\).*|\1|p" <<<"$2"; }
for spec in "gpt2 124m" "llama 100m"; do
  set -- $spec
  f=$("$build/bench/generate/bench_generate" --arch "$1" --preset "$2")
  echo "$f"
  p=$(python3 "$here/ref_hf_generate.py" --arch "$1" --preset "$2" --threads "$threads" \
        2>/dev/null)
  echo "$p"
  awk -v a="$(field prefill_s "$f")" -v b="$(field prefill_s "$p")" \
      -v c="$(field decode_tokens/s "$f")" -v d="$(field decode_tokens/s "$p")" -v n="$1-$2" \
      'BEGIN { printf "%s: prefill speed fedlora/hf = %.2fx, decode speed = %.2fx\n", n, b / a, c / d }'
done
# Choosing a token by nucleus sampling (temperature 0.7, top_p 0.9): the
# heap of lora/sampler.c against a full sort, GPT-2's and Llama's vocabularies.
for v in 50257 32000; do "$build/bench/generate/bench_sampler" --vocab "$v"; done
