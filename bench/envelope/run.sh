#!/usr/bin/env bash
# Sealed-envelope throughput (1 GiB, 1 thread) against its ceiling, the best
# block-size figure of `openssl speed -evp aes-256-gcm` (the same OpenSSL
# library, same machine, same run). The bench keeps the fastest of 3
# repetitions of each measurement; openssl speed runs before and after it and
# the faster run counts: on a shared machine that is the least disturbed one.
# Usage: bench/envelope/run.sh [--quick] [BUILD_DIR]
# --quick: 1 MiB once, and openssl speed for 1 s on one block size (16 KiB)
# when the openssl program is there (bench/lib.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-$here/../../build}
size=$((1 << 30)) reps=3 speed_args="-seconds 3"
if [ "$quick" = 1 ]; then
  size=$((1 << 20)) reps=1 speed_args="-seconds 1 -bytes 16384"
  if ! have_tool openssl; then
    "$build/bench/envelope/bench_envelope" --size "$size" --reps "$reps"
    exit 0
  fi
else
  cmake --build "$build" --target bench_envelope -j2 >/dev/null
fi
echo "# $(date -u +%Y-%m-%d) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(openssl version)"
# The best figure over block sizes of one `openssl speed` run, in GB/s. Its
# last line is "AES-256-GCM  <v>k <v>k ..." in 1000s of bytes per second.
speed() {
  local out
  # shellcheck disable=SC2086 # speed_args is two or four words on purpose
  out=$(openssl speed -evp aes-256-gcm $speed_args 2>/dev/null)
  echo "$out" | tail -n 2 >&2
  echo "$out" | tail -n 1 | tr ' ' '\n' | sed -n 's/^\([0-9.]*\)k$/\1/p' | sort -g | tail -n 1 |
    awk '{ printf "%.4f\n", $1 * 1000 / 1e9 }'
}
c1=$(speed)
out=$("$build/bench/envelope/bench_envelope" --size "$size" --reps "$reps")
echo "$out"
c2=$(speed)
res=$(echo "$out" | sed -n 's/^RESULT //p')
get() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$res"; }
awk -v c1="$c1" -v c2="$c2" -v s="$(get seal)" -v o="$(get open)" -v so="$(get sealopen)" \
    -v v="$(get verify)" -v g="$(get gcm)" -v h="$(get sha256)" 'BEGIN {
  c = c1 > c2 ? c1 : c2
  printf "openssl speed -evp aes-256-gcm, best block size: %.3f and %.3f GB/s, ceiling %.3f GB/s\n", c1, c2, c
  printf "seal      %.3f GB/s = %3.0f%% of the ceiling\n", s, 100 * s / c
  printf "open      %.3f GB/s = %3.0f%% of the ceiling\n", o, 100 * o / c
  printf "seal+open %.3f GB/s = %3.0f%% of the ceiling (per operation)\n", so, 100 * so / c
  printf "verify    %.3f GB/s = %3.0f%% of the ceiling (no key: SHA-256 + signature)\n", v, 100 * v / c
  b = 1 / (1 / g + 1 / h)
  printf "our AES-256-GCM alone %.3f GB/s = %3.0f%%; SHA-256 alone %.3f GB/s = %3.0f%%\n", g, 100 * g / c, h, 100 * h / c
  printf "bound for one pass of GCM + SHA-256: %.3f GB/s = %3.0f%%; seal reaches %3.0f%% of it, open %3.0f%%\n",
         b, 100 * b / c, 100 * s / b, 100 * o / b
}'
