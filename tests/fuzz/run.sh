#!/usr/bin/env bash
# Runs every built fuzz target for a bounded time over a scratch copy of its
# committed seed corpus. Usage: tests/fuzz/run.sh BUILD_DIR SECONDS
# Any crash, leak, timeout or sanitizer report fails the run.
set -euo pipefail
build=${1:?build dir}
secs=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)
n=0; failed=0
for bin in $(find "$build" -maxdepth 4 -type f -name 'fuzz_*' -perm -u+x | sort); do
  name=$(basename "$bin")
  seeds="$here/corpus/$name"
  work=$(mktemp -d)
  [ -d "$seeds" ] && cp -r "$seeds/." "$work/"
  echo "-- $name: ${secs}s"
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$work/" "$work" >"$work.log" 2>&1; then
    tail -n 3 "$work.log"
  else
    echo "FUZZ FAILURE in $name:"; tail -n 60 "$work.log"; failed=$((failed + 1))
    # The scratch folder goes away with the run (CI keeps only the log), so
    # the input that failed is printed here: save the base64 text and run
    #   base64 -d > unit && $bin unit
    # to reproduce it, then commit it as a seed under corpus/$name/.
    for unit in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
      [ -f "$unit" ] || continue
      echo "failing input $(basename "$unit") ($(wc -c <"$unit") bytes), base64:"
      head -c 65536 "$unit" | base64
    done
  fi
  rm -rf "$work" "$work.log"
  n=$((n + 1))
done
echo "$((n - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
