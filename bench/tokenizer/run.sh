#!/usr/bin/env bash
# Tokenizer benchmark: fedlora vs Hugging Face tokenizers, same text, same
# tokenizer.json, one thread, same run. Usage:
#   bench/tokenizer/run.sh [--quick] BUILD_DIR [SECONDS] [CORPORA]
# BUILD_DIR holds bench/tokenizer/bench_tokenizer (cmake --build BUILD_DIR
# --target bench_tokenizer). Inputs are made by prepare.py in
# ${FEDLORA_BENCH_DIR:-/tmp/fedlora-bench-tokenizer} on the first run.
# CORPORA (or $FEDLORA_BENCH_CORPORA): a directory made by
# bench/data/make_corpora.sh; every tokenizer then also runs on the training
# documents of its English domains and of its German ones (rows "/en", "/de").
# For each tokenizer it prints both speeds, the ratio, and whether the ids
# hashes agree (the same ids, not only the same speed).
# --quick: the committed fixture tokenizers on the example corpus (no
# prepare.py), 0.2 s each; the reference only where the Python package
# tokenizers is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:?usage: run.sh [--quick] BUILD_DIR [SECONDS] [CORPORA]}
secs=${2:-3}
corpora=${3:-${FEDLORA_BENCH_CORPORA:-}}
root=$(cd "$here/../.." && pwd)
work=${FEDLORA_BENCH_DIR:-/tmp/fedlora-bench-tokenizer}
bin="$build/bench/tokenizer/bench_tokenizer"
[ -x "$bin" ] || { echo "no $bin: build the bench_tokenizer target first" >&2; exit 2; }
fx="$root/tests/fixtures/tokenizer"
toks=("$work/gpt2_32k.json" "$work/llama3_32k.json" "$fx/gpt2.json" "$fx/llama3.json"
      "$fx/qwen2.json" "$fx/spm.json")
corpus="$work/corpus.txt"
reference=1
if [ "$quick" = 1 ]; then
  secs=${2:-0.2}
  work=$(mktemp -d "${TMPDIR:-/tmp}/fedlora-bench-tokenizer-quick.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  corpus="$work/corpus.txt"
  cat "$root"/examples/corpus/*.txt >"$corpus"
  toks=("$fx/gpt2.json" "$fx/llama3.json" "$fx/qwen2.json" "$fx/spm.json")
  have_python tokenizers || reference=0
else
  [ -f "$corpus" ] || python3 "$here/prepare.py" "$work"
fi
texts=("$corpus")
if [ "$quick" = 0 ] && [ -n "$corpora" ]; then
  [ -f "$corpora/MANIFEST" ] || { echo "$corpora: no MANIFEST (bench/data/make_corpora.sh makes it)" >&2; exit 2; }
  for lang in en de; do
    awk -F'\t' -v l=$lang '!/^#/ && $2 == l && $3 == "train" { print $1 }' "$corpora/MANIFEST" |
      while read -r d; do cat "$corpora/$d/train.txt"; done >"$work/corpora-$lang.txt"
    texts+=("$work/corpora-$lang.txt")
  done
fi
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
if [ "$reference" = 0 ]; then
  printf '%-12s %10s\n' tokenizer fedlora
  for tok in "${toks[@]}"; do
    c=$("$bin" "$tok" "$corpus" "$secs")
    printf '%-12s %10s\n' "$(basename "$tok" .json)" "$(echo "$c" | awk '{print $3}')"
  done
  echo "MB/s of UTF-8 input, best pass, 1 thread"
  exit 0
fi
printf '%-12s %10s %12s %12s %9s %9s %s\n' tokenizer fedlora hf-per-doc hf-batch ratio-doc ratio-bat ids
status=0
for text in "${texts[@]}"; do
tag=$(basename "$text" .txt | sed -n 's/^corpora-/\//p')
for tok in "${toks[@]}"; do
  c=$("$bin" "$tok" "$text" "$secs")
  h=$(python3 "$here/ref_hf_tokenizers.py" "$tok" "$text" "$secs")
  c_mbs=$(echo "$c" | awk '{print $3}')
  hd_mbs=$(echo "$h" | awk '/per-doc/ {print $3}')
  hb_mbs=$(echo "$h" | awk '/batch/ {print $3}')
  c_hash=$(echo "$c" | sed 's/.*ids_hash=//')
  h_hashes=$(echo "$h" | sed 's/.*ids_hash=//' | sort -u)
  same=different
  if [ "$h_hashes" = "$c_hash" ]; then same=same; else status=1; fi
  printf '%-12s %10s %12s %12s %9.2f %9.2f %s\n' "$(basename "$tok" .json)$tag" "$c_mbs" "$hd_mbs" \
    "$hb_mbs" "$(echo "$c_mbs / $hd_mbs" | bc -l)" "$(echo "$c_mbs / $hb_mbs" | bc -l)" "$same"
done
done
echo "MB/s of UTF-8 input, best pass, 1 thread; ratio = fedlora / Hugging Face"
exit $status
