#!/usr/bin/env bash
# Real-size memory, measured as a user meets it: an 8B-shaped bf16 Llama
# (bench/scale/llama-8b.json: hidden 4096, 32 layers, MLP 14336, 32/8
# heads, vocab 128256) made by `fedlora init-model --config`, then
#   - the peak resident memory (GNU time's %M, i.e. ru_maxrss) and wall time
#     of init-model, eval and train (batch 1 x 128, rank 16 on q, k, v, o,
#     2 steps: what a node's training holds) against the checkpoint's size;
#   - a federated round on it (bench/aggregator/bench_aggregator --scale): a
#     real aggregator imports the base, serves the full sync (its bytes
#     counted), takes 3 members' rank-16 deltas on q, k, v, o, merges and
#     publishes the bf16 version; a node's low-rank sync of it is made and
#     checked (its peak memory measured). The members' deltas are random (no
#     training: the training's memory is the row above).
# The same round with real nodes (the CLI's aggregator and three `fedlora
# node` processes that train, round 2 synced low-rank) is
# bench/scale/federation.sh, a command of its own: it makes its own base,
# since this script's round consumes the one made here, and two 16 GB bases
# at once would not fit the disk the two are measured on.
# Not in CI: it writes 16 GB files and needs ~50 GB free; the base is deleted
# by the round (run init again for another pass).
# Usage: bench/scale/run.sh [BUILD_DIR] [WORK_DIR] [PRECISION]
set -euo pipefail
build=$(realpath "${1:-build}")
work=${2:-/tmp/fedlora-scale}
precision=${3:-auto}
here=$(dirname "$(realpath "$0")")
fl="$build/fedlora"
mkdir -p "$work"
model="$work/llama-8b"
data="$work/data.txt"
measure() { # NAME CMD...: peak MiB and seconds on one line
  local name=$1; shift
  local t; t=$(mktemp)
  /usr/bin/time -f "%M %e" -o "$t" "$@" >"$work/$name.out" 2>"$work/$name.err"
  read -r kb s <"$t"; rm -f "$t"
  printf '%-10s peak %8.0f MiB  %8.1f s\n' "$name" "$(echo "$kb / 1024" | bc -l)" "$s"
}
if [ ! -f "$model/config.json" ]; then
  measure init-model "$fl" init-model --config "$here/llama-8b.json" --seed 1 --out "$model"
fi
bytes=$(du -cb "$model"/*.safetensors | tail -1 | cut -f1)
printf 'checkpoint %.0f MiB (%s shards)\n' "$(echo "$bytes / 1048576" | bc -l)" \
  "$(find "$model" -maxdepth 1 -name '*.safetensors' | wc -l)"
# 40 short documents: a few rows of 128 byte-level tokens
head -n 40 "$here/../../examples/corpus/mixed.txt" >"$data"
measure eval "$fl" eval --model "$model" --data "$data" --seq 128 --batch 1 --precision "$precision"
rm -rf "$work/adapter"
measure train "$fl" train --model "$model" --data "$data" --seq 128 --batch 1 --steps 2 \
  --rank 16 --targets q_proj,k_proj,v_proj,o_proj --eval-fraction 0.1 --save-every 0 \
  --precision "$precision" --out "$work/adapter"
grep -h "training on\|evaluating on" "$work"/eval.err "$work"/train.err || true
# The round (consumes the base: see above).
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$build/bench/aggregator/bench_aggregator" \
  --fedlora "$fl" --base "$model" --scale 1 --nodes 3 --rank 16 \
  --targets q_proj,k_proj,v_proj,o_proj --dir "$work/round"
