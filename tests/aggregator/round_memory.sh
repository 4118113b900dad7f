#!/usr/bin/env bash
# The aggregator's memory during a round on a ~100M-parameter bf16 base (a
# 191 MiB checkpoint), 3 members with rank-16 deltas on all seven linear
# layers: it must stay within 0.3 x the model plus the members' factors
# above what the process holds idle (bench/aggregator/bench_aggregator.c
# --check-round). Before versions were streamed, the aggregator held the
# base in fp32 (2x the checkpoint) and this failed.
# Usage: round_memory.sh BUILD_DIR
set -euo pipefail
build=$1
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fedlora-round-memory.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
OMP_NUM_THREADS=2 "$build/bench/aggregator/bench_aggregator" --fedlora "$build/fedlora" \
  --nodes 3 --rank 16 --preset 100m --dtype bfloat16 --dir "$scratch" --check-round 0.3
