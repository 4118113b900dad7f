#!/usr/bin/env bash
# The dependency direction of docs/architecture.md, checked over the sources
# and the build files:
#
#   cli → node / aggregator → generate → train → gpu
#       → lora / data / policies / wire → model → util
#
# (tests/ and bench/ sit above all of them.) An edge is a folder's
#   - #include "X/..." of another folder's header, in its .c, .h and .cu files;
#   - target_link_libraries(T ... fl_Y ...) of a library defined in another
#     folder (the folder of the CMakeLists.txt that names T, and the folder
#     whose CMakeLists.txt has add_library(fl_Y ...));
# an edge to a higher layer is refused, and so are two folders of one layer
# that depend on each other (a cycle). libzmq's header belongs to
# wire/transport.c alone (wire/transport.h hides it).
#
# Every edge that breaks the rule is printed; the ones in the allow-list
# below are reported as known and do not fail the check.
#
# Usage: scripts/check_layers.sh [ROOT]      check ROOT (default: this repo)
#        scripts/check_layers.sh --self-test  plant an upward include and a
#                                             cycle in a scratch tree: the
#                                             check must refuse both
set -euo pipefail

# Known edges against the direction, with why they exist. Each entry is
# "SOURCE -> TARGET" as printed below. Keep it short: an entry is a debt.
allowed=(
)

layer_of() {
  case "$1" in
    util) echo 0 ;;
    model) echo 1 ;;
    lora | data | policies | wire) echo 2 ;;
    gpu) echo 3 ;;
    train) echo 4 ;;
    generate) echo 5 ;;
    node | aggregator) echo 6 ;;
    cli) echo 7 ;;
    tests | bench) echo 8 ;;
    *) echo -1 ;;
  esac
}

is_allowed() {
  local e
  for e in "${allowed[@]}"; do [ "$e" = "$1" ] && return 0; done
  return 1
}

check() {
  local root=$1 bad=0 known=0
  cd "$root"
  local folders=(util model lora data policies wire gpu train generate node aggregator cli)
  declare -A pair=()
  report() { # $1 edge text, $2 kind ("upward" or "cycle")
    if is_allowed "$1"; then
      echo "known ($2, allow-listed): $1"
      known=$((known + 1))
    else
      echo "REFUSED ($2): $1"
      bad=$((bad + 1))
    fi
  }

  # ---- #include lines: "file:target" for every quoted include
  local f target from to
  while IFS=: read -r f target; do
    from=${f%%/*}
    to=${target%%/*}
    [ "$to" != "$target" ] || continue # a file next to it
    [ "$(layer_of "$to")" -ge 0 ] || continue
    [ "$to" != "$from" ] || continue
    pair["$from>$to"]="$f -> $target"
    if [ "$(layer_of "$to")" -gt "$(layer_of "$from")" ]; then report "$f -> $target" upward; fi
  done < <(grep -rE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' --include='*.c' --include='*.h' \
             --include='*.cu' "${folders[@]}" 2>/dev/null |
             sed -n 's/^\([^:]*\):[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1:\2/p' | sort)

  # ---- link libraries: which folder defines each fl_ library (a name with
  # ${...} in it is a pattern: fl_model_${variant} is fl_model_*)
  declare -A lib_dir=()
  local cm name dir line
  while IFS= read -r cm; do
    dir=$(dirname "$cm")
    dir=${dir%%/*}
    while IFS= read -r name; do
      lib_dir["$name"]=$dir
    done < <(sed -n 's/.*add_library(\(fl_[A-Za-z0-9_${}]*\).*/\1/p' "$cm")
  done < <(find "${folders[@]}" -name CMakeLists.txt | sort)
  local t libs lib pat
  while IFS= read -r cm; do
    from=$(dirname "$cm")
    from=${from%%/*}
    # target_link_libraries(T a b c ...) possibly over several lines
    while IFS= read -r line; do
      t=$(sed -n 's/^target_link_libraries(\([^ ]*\) .*/\1/p' <<<"$line")
      libs=$(grep -oE 'fl_[A-Za-z0-9_]+' <<<"${line#*(* }" || true)
      for lib in $libs; do
        to=""
        for pat in "${!lib_dir[@]}"; do
          local glob=${pat//\$\{*\}/*}
          # shellcheck disable=SC2053 # glob on purpose: fl_model_* matches fl_model_f32
          if [[ $lib == $glob ]]; then to=${lib_dir[$pat]}; fi
        done
        if [ -z "$to" ] || [ "$to" = "$from" ]; then continue; fi
        pair["$from>$to"]="link $cm: $t -> $lib ($to)"
        if [ "$(layer_of "$to")" -gt "$(layer_of "$from")" ]; then
          report "link $cm: $t -> $lib ($to)" upward
        fi
      done
    done < <(awk '/target_link_libraries\(/ { s = $0; while (s !~ /\)/ && (getline l) > 0) s = s " " l; print s }' "$cm")
  done < <(find "${folders[@]}" -name CMakeLists.txt | sort)

  # ---- two folders of one layer that depend on each other
  local k a b
  for k in "${!pair[@]}"; do
    a=${k%>*} b=${k#*>}
    if [[ $a < $b ]] && [ -n "${pair[$b>$a]:-}" ] && [ "$(layer_of "$a")" = "$(layer_of "$b")" ]; then
      report "${pair[$k]} and ${pair[$b>$a]}" cycle
    fi
  done

  # ---- libzmq stays in wire/transport.c
  while IFS= read -r f; do
    [ "$f" = wire/transport.c ] && continue
    report "$f -> <zmq.h> (only wire/transport.c may include it)" upward
  done < <(grep -rlE '#[[:space:]]*include[[:space:]]*<zmq\.h>' --include='*.c' --include='*.h' \
             "${folders[@]}" tests bench 2>/dev/null | sort || true)

  if [ "$bad" -gt 0 ]; then
    echo "dependency direction: $bad edge(s) against cli -> node/aggregator -> generate -> train -> gpu -> lora/data/policies/wire -> model -> util (docs/architecture.md)"
    return 1
  fi
  echo "dependency direction: ok ($known known edge(s) allow-listed in scripts/check_layers.sh)"
}

self_test() {
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/check_layers.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  mkdir -p "$tmp"/{util,model,lora,wire}
  printf '#include "util/err.h"\n' >"$tmp/model/m.c"
  printf '#include "model/m.h"\n#include "util/err.h"\n' >"$tmp/lora/l.c"
  printf 'add_library(fl_util STATIC err.c)\n' >"$tmp/util/CMakeLists.txt"
  printf 'add_library(fl_model_f32 STATIC m.c)\ntarget_link_libraries(fl_model_f32 PUBLIC fl_util)\n' \
    >"$tmp/model/CMakeLists.txt"
  local out
  if ! out=$(check "$tmp" 2>&1); then
    echo "self-test: a clean tree was refused:"
    echo "$out"
    return 1
  fi
  # util including model, model linking lora, wire and lora in a cycle
  printf '#include "model/m.h"\n' >"$tmp/util/u.c"
  printf 'add_library(fl_lora STATIC l.c)\n' >"$tmp/lora/CMakeLists.txt"
  printf 'target_link_libraries(fl_model_f32 PUBLIC\n  fl_lora)\n' >>"$tmp/model/CMakeLists.txt"
  printf '#include "lora/l.h"\n' >"$tmp/wire/w.c"
  printf '#include "wire/w.h"\n' >>"$tmp/lora/l.c"
  if out=$(check "$tmp" 2>&1); then
    echo "self-test: upward edges and a cycle were not refused:"
    echo "$out"
    return 1
  fi
  local want
  for want in "REFUSED (upward): util/u.c -> model/m.h" \
    "REFUSED (upward): link model/CMakeLists.txt: fl_model_f32 -> fl_lora (lora)" \
    "REFUSED (cycle): lora/l.c -> wire/w.h and wire/w.c -> lora/l.h"; do
    if ! grep -qF "$want" <<<"$out"; then
      echo "self-test: expected '$want' in:"
      echo "$out"
      return 1
    fi
  done
  echo "self-test: ok (an upward include, an upward link and a cycle are refused)"
}

if [ "${1:-}" = --self-test ]; then
  self_test
else
  check "${1:-$(cd "$(dirname "$0")/.." && pwd)}"
fi
