#!/usr/bin/env bash
# The federated comparison (docs/benchmarks.md, "Federated rules"): the
# aggregation rules of docs/policies.md run as whole federations of real
# processes (`fedlora demo --data`: an aggregator and N nodes on loopback),
# on the German and English corpora and the pretrained 12.7M base of
# docs/corpora.md, for several horizons, partitions and seeds; then
# bench_federated's tables of global and per-domain held-out loss per round
# (mean and sd over seeds), bytes moved per round and wall time.
#
# Usage: bench/federated/run.sh [--quick] [BUILD_DIR]
#
# --quick: the toy corpora and the demo's tiny base, one seed, 2 rounds,
#   3 universities, every rule; checks that the table has every column
#   (the test suite runs it: bench_federated_quick).
#
# Otherwise, with these variables (defaults in brackets):
#   CORPORA   the corpora of bench/data/make_corpora.sh [/work/data/corpora]
#   BASE      the pretrained base of bench/data/make_base.sh [/work/data/base]
#   OUT       where partitions and runs go (not committed) [/work/data/federated]
#   GRID      lines "HORIZON PARTITION RULES SEEDS" [the grid below]:
#             HORIZON   name:ROUNDSxSTEPS[/EVAL_EVERY], e.g. long:100x2/10
#             PARTITION domain-N, iid-N or dirichlet-N (N universities; 3
#                       and 6 take the domains of DOMAINS3 / DOMAINS6, any
#                       other N all eight; dirichlet: each domain's
#                       documents shared among the universities by
#                       Dirichlet(ALPHA) [0.5], a non-IID mix of domains)
#             RULES     comma list of the rules below
#             SEEDS     comma list
#   LR [0.002], RANK [8], BATCH [4], SEQ [64], TRAIN_BYTES [150000] (each
#   university's share is cut to about this many bytes, a seeded sample of
#   its documents), HELDOUT_BYTES [4096] (per domain), EVAL_FRACTION [0.003]
#   DOCS      when set, the tables replace the section between the markers
#             "<!-- federated-table begin -->" and "... end -->" of that file
#
# Rules (the policy file each gets; docs/policies.md, "Where a round starts"):
#   exact        merge.mode exact, members' own fresh adapters (start own)
#   exact-cont   exact, the global adapter continued (start global: the SVD
#                of the previous start's product plus the exact update)
#   fedit        FedIT as its authors run it: A and B averaged, every member
#                from the round's shared fresh adapter (start shared)
#   fedit-own    the same with each member's own fresh adapter (the
#                independent variant)
#   fedavg-cont  Flower's FedAvg of A and B with the global adapter continued
#                (fedit, start global), as FlowerTune runs it
#   svd          the exact sum re-factorised to rank RANK by the truncated
#                SVD (own starts)
#   svd-cont     svd with the global adapter continued
#
# Runs already complete in OUT are kept (the grid can be resumed); each run's
# wall time and the machine's load are logged to OUT/log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=${1:-build}
fedlora="$build/fedlora"
table="$build/bench/federated/bench_federated"

policy_text() { # RULE NODES
  local merge
  case "$1" in
    exact) merge='mode = "exact"; start = "own";' ;;
    exact-cont) merge='mode = "exact"; start = "global";' ;;
    fedit) merge='mode = "fedit"; start = "shared";' ;;
    fedit-own) merge='mode = "fedit"; start = "own";' ;;
    fedavg-cont) merge='mode = "fedit"; start = "global";' ;;
    svd) merge="mode = \"svd\"; svd_rank = ${RANK:-8}; start = \"own\";" ;;
    svd-cont) merge="mode = \"svd\"; svd_rank = ${RANK:-8}; start = \"global\";" ;;
    *)
      echo "run.sh: unknown rule '$1'" >&2
      return 1
      ;;
  esac
  printf '# bench/federated/run.sh: rule %s\nmerge = { %s };\nrounds = { quorum = %d; deadline_s = 86400; };\n' \
    "$1" "$merge" "$2"
}

# run_one DIR RULE NODES SEED HORIZON PARTITION DEMO_ARGS...
run_one() {
  local dir=$1 rule=$2 nodes=$3 seed=$4 horizon=$5 partition=$6
  shift 6
  mkdir -p "$dir.tmp"
  policy_text "$rule" "$nodes" >"$dir.tmp/policy.cfg"
  rm -rf "$dir.tmp/demo"
  "$fedlora" demo --out "$dir.tmp/demo" --policy "$dir.tmp/policy.cfg" --seed "$seed" "$@" \
    >"$dir.tmp/demo.log" 2>&1 || {
    echo "run.sh: the run in $dir.tmp failed; the last lines of its log:" >&2
    tail -20 "$dir.tmp/demo.log" >&2
    return 1
  }
  rm -rf "$dir.tmp/demo/model" # the final model: not needed for the tables
  printf 'horizon=%s\npartition=%s\nnodes=%s\nrule=%s\nseed=%s\n' \
    "$horizon" "$partition" "$nodes" "$rule" "$seed" >"$dir.tmp/demo/RUN"
  cp "$dir.tmp/demo.log" "$dir.tmp/policy.cfg" "$dir.tmp/demo/"
  rm -rf "$dir"
  mv "$dir.tmp/demo" "$dir"
  rm -rf "$dir.tmp"
}

check_table() { # every cell of every table filled; the summary's 11 columns there
  awk -F'|' '/^\|/ && !/^\| ---/ {rows++; for (i = 2; i < NF; i++) if ($i ~ /^ *$/) {print "empty cell " i - 1 ": " $0; bad = 1}}
    /^\| horizon \| partition \| universities \| rule \| seeds/ {s = 1; next}
    s && /^\| ---/ {next}
    s && /^\|/ {if (NF != 13) {print "want 11 columns: " $0; bad = 1}; sum++; next}
    {s = 0}
    /each domain.s held-out loss after round/ {dc = 1}
    dc && /^\| [^-]/ && !/^\| domain \|/ {dcrows++}
    END {if (!sum || rows < 3) {print "no summary rows"; bad = 1}
      if (!dcrows) {print "no per-domain curves"; bad = 1}; exit bad}' "$1"
}

rules_all=exact,exact-cont,fedit,fedit-own,fedavg-cont,svd,svd-cont

if [ "$quick" = 1 ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/fedlora-federated-XXXXXX")
  trap 'rm -rf "$out"' EXIT
  dirs=()
  for rule in ${rules_all//,/ }; do
    run_one "$out/$rule" "$rule" 3 1 quick toy --rounds 2 --nodes 3 --steps 4 --timeout 120
    dirs+=("$out/$rule")
  done
  "$table" "${dirs[@]}" >"$out/table.md"
  cat "$out/table.md"
  check_table "$out/table.md"
  exit 0
fi

# The demo's own evaluations get one thread, as its nodes do (harness.h):
# a team of two on a loaded machine waits at every barrier.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
CORPORA=${CORPORA:-/work/data/corpora}
BASE=${BASE:-/work/data/base}
OUT=${OUT:-/work/data/federated}
LR=${LR:-0.002}
RANK=${RANK:-8}
BATCH=${BATCH:-4}
SEQ=${SEQ:-64}
TRAIN_BYTES=${TRAIN_BYTES:-150000}
HELDOUT_BYTES=${HELDOUT_BYTES:-4096}
EVAL_FRACTION=${EVAL_FRACTION:-0.003}
DOMAINS3=${DOMAINS3:-man-de,fortunes-en,sysadmin-de}
DOMAINS6=${DOMAINS6:-man-de,man-en,fortunes-de,fortunes-en,bible-en,sysadmin-de}
GRID=${GRID:-"mid:10x15/1 domain-3 exact,exact-cont,fedit,fedavg-cont,fedit-own,svd,svd-cont 1,2
mid:10x15/1 domain-3 exact,exact-cont,fedit,fedavg-cont 3
mid:10x15/1 iid-3 exact,exact-cont,fedit,fedavg-cont 1,2
mid:10x15/1 domain-6 exact,exact-cont,fedit,fedavg-cont 1,2
mid:10x15/1 iid-6 exact,exact-cont,fedit,fedavg-cont 1,2
mid:10x15/1 iid-12 exact,exact-cont,fedit,fedavg-cont 1,2
mid:10x15/1 dirichlet-12 exact,exact-cont,fedit,fedavg-cont 1,2
mid:10x15/1 domain-6 svd,svd-cont,fedit-own 1
mid:10x15/1 iid-6 svd,svd-cont,fedit-own 1
mid:10x15/1 dirichlet-12 svd,svd-cont,fedit-own 1
long:100x2/10 domain-3 exact,exact-cont,fedit,fedavg-cont 1,2,3"}
for f in "$CORPORA/MANIFEST" "$BASE/config.json" "$BASE/model.safetensors" "$BASE/tokenizer.json"; do
  [ -f "$f" ] || {
    echo "run.sh: $f is missing: make the corpora and the base first (docs/corpora.md)" >&2
    exit 1
  }
done
cmake --build "$build" --target fedlora partition bench_federated -j2 >/dev/null
mkdir -p "$OUT/partitions" "$OUT/runs"
log="$OUT/log"
load() { cut -d' ' -f1-3 /proc/loadavg; }

partition() { # NAME: makes $OUT/partitions/NAME once
  local name=$1 mode=${1%%-*} n=${1##*-} dir="$OUT/partitions/$1" domains
  [ -f "$dir/PARTITION" ] && return 0
  case "$n" in
    3) domains=$DOMAINS3 ;;
    6) domains=$DOMAINS6 ;;
    *) domains=$(awk -F'\t' '!/^#/ && $1 != "domain" {print $1}' "$CORPORA/MANIFEST" | sort -u | paste -sd, -) ;;
  esac
  rm -rf "$dir" "$dir.tmp"
  local alpha=()
  [ "$mode" = dirichlet ] && alpha=(--alpha "${ALPHA:-0.5}")
  "$build/bench/data/partition" --corpora "$CORPORA" --out "$dir.tmp" --nodes "$n" --mode "$mode" \
    "${alpha[@]}" --domains "$domains" --heldout-bytes "$HELDOUT_BYTES" --seed 1 >/dev/null
  # Each share cut to about TRAIN_BYTES: a seeded sample of its documents,
  # in their order (enough text that no horizon here sees a document twice
  # more than about twice, and cheap local evaluations).
  for u in "$dir.tmp"/uni-*; do
    awk -v cap="$TRAIN_BYTES" 'BEGIN {srand(1)} {line[NR] = $0; n += length($0) + 1}
      END {p = cap / n; if (p > 1) p = 1; for (i = 1; i <= NR; i++) if (rand() < p) print line[i]}' \
      "$u/train.txt" >"$u/train.cut"
    mv "$u/train.cut" "$u/train.txt"
  done
  echo "# each uni-*/train.txt cut to about $TRAIN_BYTES bytes by bench/federated/run.sh" \
    >>"$dir.tmp/PARTITION"
  mv "$dir.tmp" "$dir"
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') start, $(nproc --all) cores, load $(load)" >>"$log"
dirs=()
while read -r horizon part rules seeds; do
  [ -n "$horizon" ] || continue
  hname=${horizon%%:*}
  spec=${horizon#*:}
  rounds=${spec%%x*}
  rest=${spec#*x}
  steps=${rest%%/*}
  every=1
  [ "$rest" != "$steps" ] && every=${rest#*/}
  nodes=${part##*-}
  partition "$part"
  for seed in ${seeds//,/ }; do
    for rule in ${rules//,/ }; do
      dir="$OUT/runs/$hname-${rounds}x$steps-$part-$rule-s$seed"
      if [ -f "$dir/RUN" ]; then
        dirs+=("$dir")
        continue
      fi
      t0=$(date +%s)
      echo "$(date -u '+%H:%M:%S') $dir: start, load $(load)" >>"$log"
      run_one "$dir" "$rule" "$nodes" "$seed" "$hname (${rounds}x$steps)" "$part" \
        --data "$OUT/partitions/$part" --base "$BASE" --rounds "$rounds" --steps "$steps" \
        --eval-every "$every" --lr "$LR" --rank "$RANK" --batch "$BATCH" --seq "$SEQ" \
        --eval-fraction "$EVAL_FRACTION" --precision fp32 --timeout 86400
      echo "$(date -u '+%H:%M:%S') $dir: done in $(($(date +%s) - t0)) s, load $(load)" >>"$log"
      dirs+=("$dir")
    done
  done
done <<<"$GRID"
"$table" "${dirs[@]}" >"$OUT/table.md"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') done, load $(load)" >>"$log"
cat "$OUT/table.md"
if [ -n "${DOCS:-}" ]; then
  awk -v t="$OUT/table.md" '/<!-- federated-table begin -->/ {print; while ((getline l < t) > 0) print l; skip = 1; next}
    /<!-- federated-table end -->/ {skip = 0} !skip' "$DOCS" >"$DOCS.new"
  mv "$DOCS.new" "$DOCS"
fi
