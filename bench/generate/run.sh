#!/usr/bin/env bash
# Generation speed (prefill, then greedy decoding from the KV cache, LoRA r=16
# attached): fedlora's decoder vs transformers' generate() + PEFT, same
# shapes, same threads, one run.
# Usage: bench/generate/run.sh [--quick] [BUILD_DIR] [THREADS]
# --quick: the tiny presets, 8 prompt and 8 new tokens, one repeat; the
# reference only where torch, transformers and peft are installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-build}
threads=${2:-2}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
field() { sed -n "s|.*$1=\([0-9.]*\).*|\1|p" <<<"$2"; }
specs=("gpt2 124m" "llama 100m") sizes=() vocabs=(50257 32000) draws=()
reference=1
if [ "$quick" = 1 ]; then
  specs=("gpt2 tiny" "llama tiny") sizes=(--prompt 8 --new 8 --repeats 1) vocabs=(320)
  draws=(--draws 20)
  have_python torch transformers peft || reference=0
fi
for spec in "${specs[@]}"; do
  # shellcheck disable=SC2086 # "arch preset": two words on purpose
  set -- $spec
  f=$("$build/bench/generate/bench_generate" --arch "$1" --preset "$2" "${sizes[@]}")
  echo "$f"
  [ "$reference" = 1 ] || continue
  p=$(python3 "$here/ref_hf_generate.py" --arch "$1" --preset "$2" --threads "$threads" \
        "${sizes[@]}" 2>/dev/null)
  echo "$p"
  awk -v a="$(field prefill_s "$f")" -v b="$(field prefill_s "$p")" \
      -v c="$(field decode_tokens/s "$f")" -v d="$(field decode_tokens/s "$p")" -v n="$1-$2" \
      'BEGIN { printf "%s: prefill speed fedlora/hf = %.2fx, decode speed = %.2fx\n", n, b / a, c / d }'
done
# Choosing a token by nucleus sampling (temperature 0.7, top_p 0.9): the
# heap of generate/sampler.c against a full sort, GPT-2's and Llama's vocabularies.
for v in "${vocabs[@]}"; do "$build/bench/generate/bench_sampler" --vocab "$v" "${draws[@]}"; done
