#!/usr/bin/env bash
# Tests bench/data/partition (docs/corpora.md) on toy corpora: the demo's
# domains (examples/corpus) and generated ones.
#   test_partition.sh PARTITION_BIN EXAMPLES_CORPUS_DIR
# Checks, for every mode: each training document of a used domain is in
# exactly one university's train.txt; the held-out files are disjoint from
# every training share, come from the domains' heldout.txt and respect
# --heldout-bytes; PARTITION tells the truth; same seed, same bytes; the
# Dirichlet shares are within one document of the drawn proportions, and the
# draws have the Dirichlet(α) moments; bad input leaves nothing behind.
set -euo pipefail
export LC_ALL=C
bin=${1:?usage: test_partition.sh PARTITION_BIN EXAMPLES_CORPUS_DIR}
examples=${2:?usage: test_partition.sh PARTITION_BIN EXAMPLES_CORPUS_DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
fail() { echo "FAIL: $*" >&2; echo "$passed passed, 1 failed"; exit 1; }
ok() { passed=$((passed + 1)); }

# ---- toy corpora -------------------------------------------------------------------
toy=$work/toy
for f in "$examples"/heldout/*.txt; do
  d=$(basename "$f" .txt)
  mkdir -p "$toy/$d"
  cp "$examples/$d.txt" "$toy/$d/train.txt"
  cp "$f" "$toy/$d/heldout.txt"
done
[ "$(ls "$toy" | wc -l)" -ge 6 ] || fail "expected the demo's domains in $examples"
# Generated domains of different sizes (lines unique across the corpora).
gen=$work/gen
for i in 1 2 3 4 5 6; do
  mkdir -p "$gen/g$i"
  awk -v i="$i" -v n=$((150 + 37 * i)) 'BEGIN { for (k = 1; k <= n; k++) {
      s = "g" i " train " k; for (w = 0; w < (k * 7 + i) % 23; w++) s = s " w" (k * w % 97)
      print s } }' >"$gen/g$i/train.txt"
  awk -v i="$i" 'BEGIN { for (k = 1; k <= 30; k++) {
      s = "g" i " held " k; for (w = 0; w < (k * 5) % 40; w++) s = s " h" w; print s } }' \
    >"$gen/g$i/heldout.txt"
done
cat "$toy"/*/*.txt "$gen"/*/*.txt | sort | uniq -d | grep -q . && fail "toy corpora have duplicate lines"

# check C P MODE NODES HELDOUT_BYTES: the invariants of a partition P of corpora C.
check() {
  local c=$1 p=$2 mode=$3 nodes=$4 hb=$5
  [ -f "$p/PARTITION" ] && [ -f "$p/heldout.txt" ] || fail "$p: PARTITION or heldout.txt missing"
  local unis used
  unis=$(ls -d "$p"/uni-*/ | wc -l)
  [ "$unis" -eq "$nodes" ] || fail "$p: $unis university directories, expected $nodes"
  used=$(awk -F'\t' '$1 !~ /^(#|university$)/ && $1 == "heldout" { print $2 }' "$p/PARTITION")
  [ -n "$used" ] || fail "$p: PARTITION lists no held-out domain"

  # every training document of the used domains exactly once
  for d in $used; do cat "$c/$d/train.txt"; done | sort >"$work/want"
  cat "$p"/uni-*/train.txt | sort >"$work/got"
  cmp -s "$work/want" "$work/got" ||
    fail "$p: the universities' documents are not exactly the used domains' training documents ($(wc -l <"$work/got") vs $(wc -l <"$work/want"))"
  ok
  # held-out: from the domains' heldout.txt, disjoint from training, the mixture
  # is the per-domain files in order, each within the byte budget
  for d in $used; do cat "$c/$d/heldout.txt"; done | sort >"$work/allheld"
  sort "$p/heldout.txt" >"$work/held"
  [ -s "$work/held" ] || fail "$p: empty heldout.txt"
  [ -z "$(comm -23 "$work/held" "$work/allheld")" ] || fail "$p: held-out lines not from heldout.txt"
  [ -z "$(comm -12 "$work/held" "$work/got")" ] || fail "$p: held-out lines also in a training share"
  for d in $used; do cat "$p/heldout/$d.txt"; done | cmp -s - "$p/heldout.txt" ||
    fail "$p: heldout.txt is not heldout/<domain>.txt concatenated in domain order"
  for d in $used; do
    local lines bytes
    lines=$(wc -l <"$p/heldout/$d.txt")
    bytes=$(($(wc -c <"$p/heldout/$d.txt") - lines))
    [ "$lines" -ge 1 ] || fail "$p: no held-out document of $d"
    if [ "$hb" -gt 0 ]; then
      [ "$bytes" -le "$hb" ] || [ "$lines" -eq 1 ] || fail "$p: $d held out $bytes bytes > $hb"
    else
      cmp -s "$p/heldout/$d.txt" "$c/$d/heldout.txt" || fail "$p: --heldout-bytes 0 must keep all of $d"
    fi
  done
  ok
  # PARTITION's counts are the files' counts; per-mode shape of the shares
  for u in "$p"/uni-*/; do
    u=$(basename "$u")
    awk -F'\t' -v u="$u" 'FNR == 1 { n++ }
        n <= ND { split(FILENAME, q, "/"); dom[$0] = q[length(q) - 1]; next }
        n == ND + 1 { cnt[dom[$0]]++; next }
        $1 == u { if (cnt[$2] + 0 != $3) { print "count " u " " $2 ": file " cnt[$2] + 0 ", PARTITION " $3; bad = 1 } }
        END { exit bad }' ND="$(ls -d "$c"/*/ | wc -l)" "$c"/*/train.txt "$p/$u/train.txt" "$p/PARTITION" ||
      fail "$p: PARTITION's documents column disagrees with $u/train.txt"
  done
  ok
  case $mode in
    domain)
      awk -F'\t' '$1 !~ /^(#|university$)/ && $1 != "heldout" && $3 > 0 { k[$1]++ } END { for (u in k) if (k[u] != 1) exit 1 }' \
        "$p/PARTITION" || fail "$p: a university of the one-domain mode has documents of two domains"
      ok ;;
    iid)
      local total
      total=$(wc -l <"$work/got")
      for f in "$p"/uni-*/train.txt; do
        local n
        n=$(wc -l <"$f")
        awk -v n="$n" -v t="$total" -v k="$nodes" 'BEGIN { e = t / k; exit !(n >= int(e) && n <= int(e) + 1) }' ||
          fail "$p: iid share $f has $n documents, expected about $total/$nodes"
      done
      ok ;;
    dirichlet)
      awk -F'\t' '$1 !~ /^(#|university$)/ && $1 != "heldout" { s[$2] += $5 }
          END { for (d in s) if (s[d] < 1 - 1e-9 || s[d] > 1 + 1e-9) { print d, s[d]; exit 1 } }' \
        "$p/PARTITION" || fail "$p: Dirichlet proportions of a domain do not sum to 1"
      for d in $used; do
        local nd
        nd=$(wc -l <"$c/$d/train.txt")
        awk -F'\t' -v d="$d" -v nd="$nd" '$1 !~ /^(#|university$)/ && $1 != "heldout" && $2 == d {
            e = $5 * nd; if ($3 < e - 1 - 1e-9 || $3 > e + 1 + 1e-9) { print $1, d, $3, e; bad = 1 } }
            END { exit bad }' "$p/PARTITION" ||
          fail "$p: a Dirichlet share of $d is more than one document from proportion x $nd"
      done
      ok ;;
  esac
}

# ---- every mode ----------------------------------------------------------------------
"$bin" --corpora "$toy" --out "$work/p-dom3" --nodes 3 >/dev/null
check "$toy" "$work/p-dom3" domain 3 16384
[ -d "$work/p-dom3/uni-astronomy" ] || fail "one-domain mode names universities uni-<domain>"
"$bin" --corpora "$toy" --out "$work/p-dom12" --nodes 12 --heldout-bytes 200 >/dev/null
check "$toy" "$work/p-dom12" domain 12 200
[ -d "$work/p-dom12/uni-astronomy-1" ] && [ -d "$work/p-dom12/uni-astronomy-2" ] ||
  fail "a domain shared by two universities: uni-<domain>-1 and -2"
"$bin" --corpora "$toy" --out "$work/p-doms" --nodes 2 --domains law,music >/dev/null
check "$toy" "$work/p-doms" domain 2 16384
[ -d "$work/p-doms/uni-law" ] && [ -d "$work/p-doms/uni-music" ] || fail "--domains order"
"$bin" --corpora "$gen" --out "$work/p-iid" --nodes 5 --mode iid --heldout-bytes 0 >/dev/null
check "$gen" "$work/p-iid" iid 5 0
for a in 0.1 1 100; do
  "$bin" --corpora "$gen" --out "$work/p-dir$a" --nodes 4 --mode dirichlet --alpha "$a" --seed 7 \
    --heldout-bytes 300 >/dev/null
  check "$gen" "$work/p-dir$a" dirichlet 4 300
done

# ---- deterministic for a seed, different for another ------------------------------------
for m in domain iid dirichlet; do
  "$bin" --corpora "$gen" --out "$work/s1-$m" --nodes 4 --mode $m --seed 3 >/dev/null
  "$bin" --corpora "$gen" --out "$work/s2-$m" --nodes 4 --mode $m --seed 3 >/dev/null
  "$bin" --corpora "$gen" --out "$work/s3-$m" --nodes 4 --mode $m --seed 4 >/dev/null
  diff -r "$work/s1-$m" "$work/s2-$m" >/dev/null || fail "mode $m: two runs with seed 3 differ"
  diff -r "$work/s1-$m" "$work/s3-$m" >/dev/null && fail "mode $m: seeds 3 and 4 give the same partition"
  ok
done

# ---- the Dirichlet draws have Dirichlet(α) moments -------------------------------------
# For q ~ Dir(α·1_N): E q_i = 1/N, Var q_i = (1/N)(1 − 1/N)/(Nα + 1). 50 seeds × 6
# domains = 300 draws of a 4-vector: the mean of q_1 and the variance of all q_i.
for a in 0.1 2; do
  for s in $(seq 1 50); do
    "$bin" --corpora "$gen" --out "$work/m$a-$s" --nodes 4 --mode dirichlet --alpha "$a" --seed "$s" \
      --min-docs 1 >/dev/null
    awk -F'\t' '$1 !~ /^(#|university$)/ && $1 != "heldout" { print $1, $5 }' "$work/m$a-$s/PARTITION"
    rm -rf "$work/m$a-$s"
  done >"$work/draws$a"
  awk -v a="$a" '{ n++; s += $2; ss += ($2 - 0.25) ^ 2 } $1 == "uni-01" { n1++; s1 += $2 }
      END { v = 0.1875 / (4 * a + 1); m1 = s1 / n1; var = ss / n
            sd1 = sqrt(v / n1)
            printf "alpha %s: mean q1 %.4f (1/4 ± %.4f), var %.4f (expected %.4f)\n", a, m1, 3.5 * sd1, var, v
            exit !(m1 > 0.25 - 3.5 * sd1 && m1 < 0.25 + 3.5 * sd1 && var > 0.8 * v && var < 1.2 * v) }' \
    "$work/draws$a" || fail "Dirichlet($a) draws do not have the Dirichlet moments"
  ok
done

# ---- bad input: a clear message, a non-zero exit, nothing written ------------------------
expect_refusal() { # OUT_PARENT PATTERN ARGS...
  local parent=$1 pattern=$2
  shift 2
  local rc=0
  "$bin" "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" -ne 0 ] || fail "partition $* succeeded; expected a refusal"
  grep -q -- "$pattern" "$work/err" || fail "partition $*: message '$(cat "$work/err")' lacks '$pattern'"
  ls -a "$parent" | grep -q '^\.partition-tmp' && fail "partition $*: left a temporary directory"
  ok
}
mkdir -p "$work/bad" "$work/empty/g1" "$work/nohold/g1"
: >"$work/empty/g1/train.txt"
echo "x" >"$work/empty/g1/heldout.txt"
expect_refusal "$work/bad" "empty domain" --corpora "$work/empty" --out "$work/bad/p" --nodes 1
[ ! -e "$work/bad/p" ] || fail "a refused run left its --out"
printf 'a\nb\n' >"$work/nohold/g1/train.txt"
expect_refusal "$work/bad" "heldout.txt" --corpora "$work/nohold" --out "$work/bad/p" --nodes 1
expect_refusal "$work/bad" "fewer than --min-docs" --corpora "$gen" --out "$work/bad/p" --nodes 900 --mode iid
expect_refusal "$work/bad" "no domain" --corpora "$work/bad" --out "$work/bad/p" --nodes 1
expect_refusal "$work/bad" "use domain, iid or dirichlet" --corpora "$gen" --out "$work/bad/p" --nodes 2 --mode cluster
expect_refusal "$work/bad" "names 'g1' twice" --corpora "$gen" --out "$work/bad/p" --nodes 2 --domains g1,g1
[ ! -e "$work/bad/p" ] || fail "a refused run left its --out"
before=$(cat "$work/p-dom3/PARTITION")
expect_refusal "$work" "not empty" --corpora "$toy" --out "$work/p-dom3" --nodes 3
[ "$before" = "$(cat "$work/p-dom3/PARTITION")" ] || fail "a refused run changed an existing --out"

echo "$passed passed, 0 failed"
