#!/usr/bin/env bash
# Screenshots of the aggregator's status page, as an operator's browser shows
# it: runs the federation test that reads the page (ctest fed_status) with
# FEDLORA_STATUS_HTML set, so that it saves the page at three moments (before
# any node, while round 1 collects with one upload held back, after the last
# round with every version evaluated), then opens each in headless Chromium
# (Debian's chromium package) and saves a PNG next to it.
#
# Usage: bash tests/browser/screenshot.sh BUILD_DIR [OUT_DIR]
# (OUT_DIR defaults to BUILD_DIR/status-screenshots). Without Chromium it says
# so and exits 0: the pages are still saved, and CI does not need a browser.
set -euo pipefail
build=${1:?usage: screenshot.sh BUILD_DIR [OUT_DIR]}
out=${2:-$build/status-screenshots}
mkdir -p "$out"
out=$(cd "$out" && pwd)
FEDLORA_STATUS_HTML=$out ctest --test-dir "$build" -R '^fed_status$' --output-on-failure >"$out/fed_status.log" 2>&1 || {
  echo "fed_status failed; see $out/fed_status.log"; tail -n 30 "$out/fed_status.log"; exit 1; }
browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [ -z "$browser" ]; then
  echo "skipped: no Chromium here (scripts/install-deps.sh --browser installs it); the pages are in $out"
  exit 0
fi
n=0
for page in "$out"/status-*.html; do
  png=${page%.html}.png
  # --no-sandbox: Chromium refuses to run as root otherwise (CI and these
  # machines run as root); the page is our own file and loads nothing else.
  "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1280,1000 --screenshot="$png" "file://$page" >"$png.log" 2>&1 || {
      echo "Chromium could not render $page:"; tail -n 20 "$png.log"; exit 1; }
  [ -s "$png" ] || { echo "no screenshot of $page"; exit 1; }
  rm -f "$png.log"
  echo "$png"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "fed_status saved no page"; exit 1; }
