#!/usr/bin/env bash
# Installs the dependencies, builds fedlora and runs its main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p out
rm -rf out/base
./build/fedlora init-model --arch llama --preset tiny --seed 1 --out out/base
./build/fedlora eval --model out/base --data examples/corpus/mixed.txt
