#!/usr/bin/env bash
# Installs the dependencies, builds fedlora and runs its main job: a whole
# federation on loopback (an aggregator and 3 universities, 3 rounds; see
# docs/federation.md). Results: out/demo/metrics.jsonl, out/demo/report.svg and
# the merged model in out/demo/model/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p out
rm -rf out/demo
./build/fedlora demo --out out/demo
