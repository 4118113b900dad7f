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
# The binary is build/fedlora when the build puts executables at the top of
# the build tree, build/cli/fedlora otherwise.
bin=./build/fedlora
[ -x "$bin" ] || bin=./build/cli/fedlora
mkdir -p out
rm -rf out/demo
"$bin" demo --out out/demo
