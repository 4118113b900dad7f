#!/usr/bin/env bash
# tests/gpu/fetch_deps.sh — run on the development machine (Debian 12), not on
# the GPU machine: downloads the .deb files of the libraries the training
# core builds against (OpenBLAS, jansson, PCRE2, pkg-config) into .gpudeps/
# at the repository root, for a GPU machine that lacks them and cannot
# install anything. tests/gpu/run.sh unpacks them there (dpkg-deb -x into its
# build directory) when the system has no copy of its own. .gpudeps/ is
# added to .git/info/exclude (never committed); pass it to the device run's
# `carry`. About 14 MB. See docs/gpu.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir="$root/.gpudeps"
mkdir -p "$dir"
grep -qx '/.gpudeps/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpudeps/' >>"$root/.git/info/exclude"
cd "$dir"
apt-get download \
  libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 \
  libjansson4 libjansson-dev libpcre2-8-0 libpcre2-dev \
  pkgconf pkgconf-bin libpkgconf3
ls -l "$dir"
