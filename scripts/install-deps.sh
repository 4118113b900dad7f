#!/usr/bin/env bash
# Installs everything fedlora needs to build, test and run on Debian 12, as root.
# The CUDA toolkit is optional: where nvcc is on PATH, the CUDA backend is built too.
# --browser also installs Chromium, for tests/browser/screenshot.sh only (the
# status page's screenshots; the test suite and CI do not need it).
set -euo pipefail
pkgs=(build-essential cmake pkg-config git ca-certificates
      libzmq3-dev libmsgpack-dev libssl-dev openssl libopenblas-dev libdnnl-dev libjansson-dev libconfig-dev libpcre2-dev
      libmicrohttpd-dev
      clang libclang-rt-dev
      man-db groff-base bsdextrautils   # tests/corpora renders man pages (make_corpora.sh)
      time bc iproute2 procps)          # bench/scale/federation.sh: GNU time, ss, pgrep
if [ "${1:-}" = "--browser" ]; then pkgs+=(chromium); fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
