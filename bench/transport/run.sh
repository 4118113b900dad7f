#!/usr/bin/env bash
# Builds and runs the transport benchmark: ZeroMQ loopback throughput of a
# payload sent raw, sealed, and sealed then opened at the receiver.
# Usage: bench/transport/run.sh [--quick] [BUILD_DIR] [bench_transport args...]
# --quick: 1 MiB once, nothing built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-$here/../../build}
shift || true
if [ "$quick" = 1 ]; then
  "$build/bench/transport/bench_transport" --mib 1 --reps 1
  exit 0
fi
cmake --build "$build" --target bench_transport -j2 >/dev/null
echo "# $(date -u +%Y-%m-%d) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$build/bench/transport/bench_transport" "$@"
