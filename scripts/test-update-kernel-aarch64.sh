#!/usr/bin/env bash
# The merge kernel's test (tests/update/test_update_kernel.c) built for
# AArch64 and run under QEMU's user-mode emulation, whose floating point
# (softfloat) is IEEE 754 fused multiply-add exactly: the portable fma()
# path, which GCC compiles to NEON fmla there, must give the bits of the
# scalar definition, as the x86-64 paths do. Not part of CI (it needs a
# cross compiler and QEMU: apt-get install gcc-aarch64-linux-gnu
# libc6-dev-arm64-cross qemu-user-static); see docs/benchmarks.md, "The
# merge kernel".
# Usage: scripts/test-update-kernel-aarch64.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${TMPDIR:-/tmp}}
for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is not installed" >&2; exit 2; }
done
# Only compiled, never called, on this side: the model headers include cblas.h.
cblas=$(dirname "$(find /usr/include -name cblas.h -print -quit)")
aarch64-linux-gnu-gcc -std=c11 -O2 -fopenmp -ffp-contract=off -Wall -Wextra -Werror \
  -I. -I"$cblas" -static \
  tests/update/test_update_kernel.c lora/update_kernel.c util/err.c -lm \
  -o "$out/test_update_kernel.aarch64" 2> >(grep -v "statically linked\|oacc-profiling" >&2)
# GCC's NEON code for the portable tile: fused multiply-adds on 2 doubles.
aarch64-linux-gnu-gcc -std=c11 -O2 -fopenmp -ffp-contract=off -I. -I"$cblas" -S \
  lora/update_kernel.c -o "$out/update_kernel.aarch64.s"
echo "tile_fma: $(awk '/^tile_fma:/,/\.size\ttile_fma/' "$out/update_kernel.aarch64.s" |
  grep -c 'fmla.*\.2d') fmla .2d instructions"
# (The test itself runs each path with 1, 2 and 3 threads.)
qemu-aarch64-static "$out/test_update_kernel.aarch64"
