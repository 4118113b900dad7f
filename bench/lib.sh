# shellcheck shell=bash
# bench/lib.sh — what the benchmarks' run.sh scripts share (sourced).
#
# Every run.sh takes --quick as its first argument: tiny sizes, a few
# seconds, no `cmake --build` (the test suite runs each one so that no
# benchmark rots: bench/CMakeLists.txt), and the reference side only where
# its tools are installed. Without --quick they measure what
# docs/benchmarks.md reports.

# shellcheck disable=SC2034 # read by the scripts that source this file
quick=0
if [ "${1:-}" = --quick ]; then
  # shellcheck disable=SC2034
  quick=1
  shift
fi

# have_python MODULE...: 0 when python3 imports every module; otherwise 1,
# with a line saying that the reference side is skipped and why.
have_python() {
  local m
  for m in "$@"; do
    if ! python3 -c "import $m" >/dev/null 2>&1; then
      echo "reference skipped: the Python module '$m' is not installed (pip install $*)"
      return 1
    fi
  done
  return 0
}

# have_tool TOOL: the same for a program on PATH.
have_tool() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "reference skipped: '$1' is not installed"
  return 1
}
