#!/usr/bin/env bash
# Builds and runs the transport benchmark: ZeroMQ loopback throughput of a
# payload sent raw, sealed, and sealed then opened at the receiver.
# Usage: bench/transport/run.sh [BUILD_DIR] [bench_transport args...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
shift || true
cmake --build "$build" --target bench_transport -j2 >/dev/null
echo "# $(date -u +%Y-%m-%d) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$build/bench/transport/bench_transport" "$@"
