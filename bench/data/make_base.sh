#!/usr/bin/env bash
# make_base.sh — pretrains the small base model the federation starts from.
#
#   bench/data/make_base.sh CORPORA OUT
#
# CORPORA is what make_corpora.sh wrote; the model learns from every domain's
# base.txt, a share that no university's training data and no held-out
# document overlaps (docs/corpora.md). OUT gets a Hugging Face directory
# (config.json, model.safetensors, tokenizer.json — fedlora's byte-level
# tokenizer, as `fedlora init-model` writes it) plus train_log.jsonl (the loss
# curve), TRAINING.json (settings, wall time, losses), heldout-sample.txt and
# EVAL (the held-out loss from PyTorch and from `fedlora eval`, which must
# agree within 1e-4 relative or the script fails and writes nothing).
#
# Environment:
#   FEDLORA_BIN   the fedlora binary (default: build/fedlora)
#   PYTHON        a Python with torch and transformers (pip install torch
#                 transformers safetensors; default python3)
#   STEPS BATCH SEQ LR LAYERS SEED THREADS   training settings (defaults
#                 600 8 256 0.002 8 1 2: about 12.7M parameters, about 25
#                 minutes on 2 cores); the same settings and thread count
#                 give the same weights bit for bit
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
corpora=${1:?usage: make_base.sh CORPORA OUT}
out=${2:?usage: make_base.sh CORPORA OUT}
fedlora=${FEDLORA_BIN:-$root/build/fedlora}
py=${PYTHON:-python3}
steps=${STEPS:-600} batch=${BATCH:-8} seq=${SEQ:-256} lr=${LR:-0.002}
layers=${LAYERS:-8} seed=${SEED:-1} threads=${THREADS:-2}

die() { echo "make_base.sh: $*" >&2; exit 1; }
[ -x "$fedlora" ] || die "no fedlora binary at $fedlora (build it, or set FEDLORA_BIN)"
[ -f "$corpora/MANIFEST" ] || die "$corpora has no MANIFEST: make it with bench/data/make_corpora.sh"
"$py" -c 'import torch, transformers, safetensors' 2>/dev/null ||
  die "$py cannot import torch, transformers and safetensors (pip install torch transformers safetensors, or set PYTHON)"
if [ -e "$out" ] && { [ ! -d "$out" ] || [ -n "$(ls -A "$out")" ]; }; then
  die "$out already exists and is not an empty directory; choose a new OUT"
fi

mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.base-tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The config and the tokenizer are fedlora's own (init-model's llama-small:
# hidden 384, 6 query / 2 key-value heads, SwiGLU 1024, tied embeddings, the
# 320-entry byte-level vocabulary with <|endoftext|> = 256); the script sets
# the depth and draws the weights.
"$fedlora" init-model --arch llama --preset small --seed "$seed" --out "$tmp/init" >/dev/null
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
start=$(date +%s)
"$py" "$here/train_base.py" --init "$tmp/init" --corpora "$corpora" --out "$tmp/model" \
  --steps "$steps" --batch "$batch" --seq "$seq" --lr "$lr" --layers "$layers" \
  --seed "$seed" --threads "$threads" 2>&1 | grep --line-buffered -v -E '^(Writing model shards|Loading weights)|Warning' >&2
wall=$(($(date +%s) - start))

# fedlora must read the model and compute the same held-out loss, packed
# the same way (docs/training.md: documents + EOS, rows of SEQ tokens).
line=$(OMP_NUM_THREADS=$threads "$fedlora" eval --model "$tmp/model" \
  --data "$tmp/model/heldout-sample.txt" --seq "$seq")
ours=$(echo "$line" | awk '{print $2}')
theirs=$("$py" -c 'import json, sys; print("%.9f" % json.load(open(sys.argv[1]))["heldout_loss"])' \
  "$tmp/model/TRAINING.json")
rel=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; printf "%.3g", d }')
{
  echo "held-out sample: heldout-sample.txt, seq $seq"
  echo "pytorch        $theirs"
  echo "fedlora eval   $ours"
  echo "relative diff  $rel"
  echo "fedlora says   $line"
  echo "wall seconds   $wall (training, evaluation and saving, $threads threads)"
} >"$tmp/model/EVAL"
cat "$tmp/model/EVAL" >&2
awk -v r="$rel" 'BEGIN { exit !(r <= 1e-4) }' ||
  die "fedlora eval ($ours) and PyTorch ($theirs) disagree by $rel relative (> 1e-4); nothing was written"

chmod 644 "$tmp/model"/*
[ -d "$out" ] && rmdir "$out"
mv "$tmp/model" "$out"
echo "make_base.sh: wrote $out" >&2
