#!/usr/bin/env bash
# A real federation at real size: the CLI's own processes, set up as
# docs/onboarding.md and docs/federation.md tell an admin and the
# universities to, on loopback with CURVE (the default), on an 8B-shaped
# bf16 Llama (bench/scale/llama-8b.json, made by `fedlora init-model
# --config`):
#   - the admin makes its keys and the roster; the operator its aggregator
#     keys; three universities `fedlora node init` (keys, node.cfg, state),
#     each with its own slice of examples/corpus/mixed.txt; the admin adds
#     them with `roster add --fingerprint`; the operator writes the
#     aggregator's config (the roster, the base model, the round's training
#     settings: 2 steps at batch 1 x seq 128, rank 16 on q_proj, k_proj,
#     v_proj, o_proj; quorum 3) and starts `fedlora aggregator`, which
#     imports the base as version 0; each university runs `fedlora doctor`;
#   - round 1: the three nodes ONE AFTER ANOTHER (one node training the 8B
#     model holds ~16 GiB of a 24 GiB machine): node i+1 starts when node i
#     has its round-1 receipt; nodes 1 and 2 are stopped (SIGTERM) after
#     it; the third delta closes the round and the aggregator publishes
#     version 1 and its low-rank update;
#   - round 2: node 3 goes on: the ROUND offers the update, and it makes
#     version 1 from the version it holds (its log must say `sync: low-rank
#     update`, its record `"sync": "lowrank"`), trains and gets its
#     receipt; then it and the aggregator are stopped.
# Every process runs under GNU time (%M: peak RSS, ru_maxrss; %e: wall s);
# while a node syncs, its VmHWM (node 3 in round 2: its VmRSS, since the
# process trained round 1 before) is also sampled every 0.5 s until the
# sync's log line, which gives the sync's own peak apart from the training's. The
# summary (logs/summary.txt) lists peak RSS and wall time per process, the
# bytes on disk of each store, the bytes moved (full sync, low-rank update,
# uploads) and the disk's use at each stage (also sampled every 5 s into
# logs/df.txt).
#
# Disk: a copy of the 8B model is 16 GB and a naive run would hold six or
# seven. This one holds at most three, by deleting (and saying so in the
# log):
#   - the weights init-model wrote (base/*.safetensors, the index), once the
#     aggregator has imported them: it writes its own copy into its store as
#     version 0 and reads only config.json and the tokenizer from
#     base_model afterwards (aggregator/state.c, aggregator/card.c);
#   - the versions/ of node 1 and of node 2 after their round-1 receipts
#     (their only use is done: each did a real full sync of version 0, whose
#     bytes are measured);
#   - and node 3 does not download version 0 but is handed it as hard
#     links of the aggregator's stored files (index, shards; config.json
#     from its base_model, as node/sync.c writes it), checked first: the
#     index hashes to the version's name and lists the shards' hashes, the
#     bytes nodes 1 and 2 downloaded and verified. A node takes a version
#     directory that holds its weights and config.json as held (node/sync.c:
#     a version directory only ever holds verified bytes); its round-1
#     record says `"sync": "held"`. Otherwise round 2 would hold four
#     copies (the aggregator's versions 0 and 1, node 3's version 0 and the
#     version 1 it makes). The round-2 sync reads version 0 through these
#     links exactly as it reads a downloaded copy; when it has verified
#     version 1 it removes version 0 (its links; the store keeps the bytes).
# Peak: versions 0 and 1 in the store plus node 3's version 1 (~48 GB for
# the 8B model); the script checks before each step that leaves at least
# 5 GiB free. WORK_DIR must be new or empty; at the end WORK_DIR/run
# (models, keys, states) is removed and WORK_DIR/logs kept (FEDLORA_KEEP=1
# keeps everything).
# Not in CI at real size (18 min for 8B on 2 cores); --quick (the test
# suite's bench_scale_federation_quick) runs it on the tiny Llama.
# Usage: bench/scale/federation.sh [--quick] [BUILD_DIR] [WORK_DIR] [SIZE]
#   SIZE: 8b (the default), or a Llama preset of init-model (100m, small,
#   tiny), written as bf16. --quick: tiny, in a temporary WORK_DIR.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
# shellcheck source=bench/lib.sh
. "$here/../lib.sh"
build=$(realpath "${1:-build}")
fl="$build/fedlora"
if [ "$quick" = 1 ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/fedlora-scale-fed.XXXXXX")
  size=tiny
else
  work=${2:-/tmp/fedlora-scale-fed}
  size=${3:-8b}
fi
# WORK_DIR must be new or empty: what this script removes at the end is
# only what it made there.
if [ -e "$work" ] && [ -n "$(ls -A "$work")" ]; then
  echo "$work is not empty: give a new or empty WORK_DIR (the logs of an earlier run stay there)" >&2
  exit 2
fi
mkdir -p "$work"
work=$(realpath "$work")
run="$work/run"
logs="$work/logs"
mkdir -p "$run" "$logs"
summary="$logs/summary.txt"
consortium=fedlora-scale
names=(uni-a uni-b uni-c)
gib=$((1024 * 1024 * 1024))

declare -A tpid=() # NAME -> pid of its /usr/bin/time
declare -A kid=()  # NAME -> its own pid, while it runs (stopped at exit)
sampler=
cleanup() {
  local k
  for k in "${kid[@]}"; do kill -TERM "$k" 2>/dev/null || true; done
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${FEDLORA_KEEP:-0}" = 1 ]; then
    echo "kept $run"
  else
    rm -rf "$run"
  fi
  if [ "$quick" = 1 ] && [ "${FEDLORA_KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'say "FAILED at line $LINENO"' ERR

say() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$summary"; }
die() {
  say "FAILED: $*"
  exit 1
}
avail() { df -B1 --output=avail "$work" | tail -1 | tr -d ' '; }
used() { df -B1 --output=used "$work" | tail -1 | tr -d ' '; }
mib() { echo "$1 / 1048576" | bc; }
gb() { printf '%.2f' "$(echo "$1 / 1000000000" | bc -l)"; }
# disk STAGE: the file system's use and the run's bytes at a stage
disk() {
  local u a r
  u=$(used)
  a=$(avail)
  r=$(du -sb "$run" | cut -f1)
  say "disk [$1]: file system used $(gb "$u") GB, free $(gb "$a") GB; run dir $(gb "$r") GB" \
    "(+$(gb $((u - used0))) GB on the file system since the start)"
}
# need BYTES WHAT: refuses a step that would leave less than 5 GiB free
need() {
  local a
  a=$(avail)
  [ $((a - $1)) -ge $((5 * gib)) ] ||
    die "$2 needs $(gb "$1") GB and would leave less than 5 GiB free ($(gb "$a") GB free)"
}
# start NAME CMD...: runs CMD under GNU time in the background, stderr and
# stdout to logs/NAME.log; sets child to the command's own pid
start() {
  local name=$1
  shift
  /usr/bin/time -f "%M %e" -o "$logs/$name.time" "$@" >"$logs/$name.log" 2>&1 &
  tpid[$name]=$!
  child=
  local i
  for i in $(seq 100); do
    child=$(pgrep -P "${tpid[$name]}" || true)
    [ -n "$child" ] && break
    sleep 0.05
  done
  [ -n "$child" ] || die "$name did not start (logs/$name.log)"
  kid[$name]=$child
}
# alive NAME: its time process still runs
alive() { kill -0 "${tpid[$1]}" 2>/dev/null; }
# await NAME TIMEOUT WHAT CMD...: polls CMD every 0.5 s while NAME runs
await() {
  local name=$1 timeout=$2 what=$3
  shift 3
  local t0=$SECONDS
  until "$@"; do
    alive "$name" || die "$name exited before $what (logs/$name.log: $(tail -n 3 "$logs/$name.log"))"
    [ $((SECONDS - t0)) -lt "$timeout" ] || die "no $what from $name within $timeout s"
    sleep 0.5
  done
}
# finish NAME: waits for NAME's exit; rows of the summary's process table
declare -A peak_kb=() wall_s=() exit_rc=()
finish() {
  local name=$1 rc=0
  wait "${tpid[$name]}" || rc=$?
  unset "kid[$name]"
  exit_rc[$name]=$rc
  read -r "peak_kb[$name]" "wall_s[$name]" < <(tail -n 1 "$logs/$name.time")
  say "$name exited $rc: peak RSS $(mib $((peak_kb[$name] * 1024))) MiB, ${wall_s[$name]} s"
}
stop() { # NAME PID: SIGTERM, as an operator stops it, then finish
  kill -TERM "$2"
  finish "$1"
}
# status_kb PID FIELD: VmHWM (peak so far) or VmRSS (now) of a process, kB
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# sample_sync NAME PID FIELD LINE: samples FIELD every 0.5 s, keeping the
# largest, until the log has LINE (a regex: the sync's own log line)
declare -A sync_kb=()
sample_sync() {
  local name=$1 pid=$2 what=$3 line=$4 kb=0 k t0=$SECONDS
  until grep -Eq "$line" "$logs/$name.log"; do
    alive "$name" || die "$name exited before its sync (logs/$name.log)"
    [ $((SECONDS - t0)) -lt 7200 ] || die "no sync from $name within 7200 s"
    k=$(status_kb "$pid" "$what")
    [ "${k:-0}" -le "$kb" ] || kb=$k
    sleep 0.5
  done
  sync_kb[$name]=$kb
  say "$name: $(grep -Eo "$line.*" "$logs/$name.log" | tail -n 1); $what until then $(mib $((kb * 1024))) MiB"
}
# field FILE KEY: a number or string of a flat JSON line's top level
field() { grep -o "\"$2\": *[^,}]*" "$1" | tail -n 1 | sed 's/^[^:]*: *//; s/"//g'; }

used0=$(used)
say "fedlora federation at scale: $size; $(uname -n), $(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GiB"
say "uptime at start: $(uptime)"
say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
(while :; do
  printf '%s %s %s %s\n' "$(date +%s)" "$(used)" "$(avail)" "$(du -sb "$run" 2>/dev/null | cut -f1)" \
    >>"$logs/df.txt"
  sleep 5
done) &
sampler=$!
disk start

# ---- the base model: what the consortium starts from ----
base="$run/base"
if [ "$size" = 8b ]; then
  need $((3 * 16 * 1000 * 1000 * 1000)) "the 8B run (three copies of its 16 GB)"
  init=(--config "$here/llama-8b.json")
else
  init=(--arch llama --preset "$size" --dtype bfloat16)
fi
start init-model "$fl" init-model "${init[@]}" --seed 1 --out "$base"
finish init-model
[ "${exit_rc[init-model]}" = 0 ] || die "init-model (logs/init-model.log)"
# its weights: model.safetensors, or the shards and their index
ckpt_bytes=$(find "$base" -maxdepth 1 \( -name '*.safetensors' -o -name '*.index.json' \) \
  -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}')
shards=$(find "$base" -name '*.safetensors' | wc -l)
shard_bytes=$(find "$base" -maxdepth 1 -name '*.safetensors' -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}')
say "checkpoint: $ckpt_bytes bytes ($(mib "$ckpt_bytes") MiB) in $shards file(s)"
disk "base made"

# ---- the admin, the operator and the universities (docs/onboarding.md) ----
cd "$run"
"$fl" keygen --name consortium-admin --out admin-keys >"$logs/admin.log"
"$fl" roster init --admin admin-keys/consortium-admin --consortium "$consortium" \
  --out roster.txt >>"$logs/admin.log"
admin_fp=$(sed -n 's/^admin fingerprint: //p' "$logs/admin.log")
mkdir -p aggregator
"$fl" keygen --name aggregator --out aggregator/keys >"$logs/operator.log"
# What the consortium hands each university: the base's config.json and
# tokenizer.json (every round's weights come from the aggregator).
mkdir -p public
cp "$base/config.json" "$base/tokenizer.json" public/
port=
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 10000)) # below Linux's ephemeral ports: no test's '*' bind takes it
  if [ -z "$(ss -Htln "sport = :$p")" ]; then
    port=$p
    break
  fi
done
[ -n "$port" ] || die "no free TCP port on loopback"
lines=$(wc -l <"$here/../../examples/corpus/mixed.txt")
per=$(((lines + ${#names[@]} - 1) / ${#names[@]}))
i=0
for n in "${names[@]}"; do
  mkdir -p "data-$n"
  sed -n "$((i * per + 1)),$(((i + 1) * per))p" "$here/../../examples/corpus/mixed.txt" \
    >"data-$n/train.txt"
  "$fl" node init --name "$n" --out "$n" --consortium "$consortium" \
    --aggregator "tcp://127.0.0.1:$port" --aggregator-id aggregator/keys/aggregator.id \
    --admin "$admin_fp" --base-model public --data "data-$n/train.txt" >"$logs/init-$n.log"
  fp=$(sed -n 's/^fingerprint: //p' "$logs/init-$n.log")
  "$fl" roster add --roster roster.txt --admin admin-keys/consortium-admin \
    --member "$n/keys/$n.id" --fingerprint "$fp" >>"$logs/admin.log"
  i=$((i + 1))
done
cp roster.txt aggregator/roster.txt
cat >aggregator/aggregator.cfg <<EOF
bind = "tcp://127.0.0.1:$port";
keys = { dir = "keys"; name = "aggregator"; };
consortium = "$consortium";
roster = { file = "roster.txt"; admin = "$admin_fp"; };
base_model = "$base";
state = "state";
rounds = { count = 2; quorum = 3; deadline = 86400; below_quorum = "wait"; };
train = { steps = 2; lr = 0.001; rank = 16; alpha = 32;
          targets = ["q_proj", "k_proj", "v_proj", "o_proj"]; batch = 1; seq = 128; };
EOF
say "roster: $(grep -c '^member:' roster.txt) members; aggregator on tcp://127.0.0.1:$port"

# ---- the aggregator imports the base ----
agg_state="$run/aggregator/state"
need "$ckpt_bytes" "the aggregator's import"
start aggregator "$fl" aggregator --config aggregator/aggregator.cfg
agg=$child
await aggregator 7200 "the base's import" grep -q "imported as version" "$logs/aggregator.log"
v0=$(basename "$(readlink "$agg_state/versions/latest")")
say "base imported as version ${v0:0:16}: $(du -sb "$agg_state" | cut -f1) bytes in the store"
disk "base imported"
deleted=$(find "$base" -maxdepth 1 \( -name '*.safetensors' -o -name '*.index.json' \) -printf '%f ')
find "$base" -maxdepth 1 \( -name '*.safetensors' -o -name '*.index.json' \) -delete
say "deleted the base's weights ($deleted): the aggregator holds version 0"
disk "base weights deleted"

# ---- round 1: the nodes one after another ----
declare -A dl=() up=() how=() node_bytes=() loss=() train_s=()
record() { # NAME ROUND STATE_DIR: the node's round record
  local m="$3/metrics.jsonl"
  grep -E "\"round\": ?$2," "$m" >"$logs/$1.record"
  dl[$1]=$(field "$logs/$1.record" download_bytes)
  up[$1]=$(field "$logs/$1.record" upload_bytes)
  how[$1]=$(field "$logs/$1.record" sync)
  train_s[$1]=$(field "$logs/$1.record" train_s)
  loss[$1]="$(field "$logs/$1.record" loss_before) -> $(field "$logs/$1.record" loss_after)"
  node_bytes[$1]=$(du -sb "$3" | cut -f1)
  say "$1 round $2: sync ${how[$1]}, downloaded ${dl[$1]} B, uploaded ${up[$1]} B," \
    "loss ${loss[$1]}, train ${train_s[$1]} s; state ${node_bytes[$1]} B on disk"
}
# Node 3 runs on into round 2 (below); the others stop at their receipt.
last=${names[2]}
for n in "${names[@]}"; do
  st="$run/$n/state"
  "$fl" doctor --config "$n/node.cfg" >"$logs/doctor-$n.log" 2>&1 ||
    die "doctor finds a problem for $n (logs/doctor-$n.log)"
  say "doctor $n: $(tail -n 1 "$logs/doctor-$n.log")"
  if [ "$n" = "$last" ]; then
    # version 0 as links of the store's verified files (see the header)
    need $((2 * ckpt_bytes)) "version 1 in the store and $n's copy of it"
    src="$agg_state/versions/$v0" dst="$st/versions/$v0"
    name_file=model.safetensors
    [ -f "$src/model.safetensors.index.json" ] && name_file=model.safetensors.index.json
    [ "$(sha256sum "$src/$name_file" | cut -c1-64)" = "$v0" ] ||
      die "$src/$name_file does not hash to version $v0"
    mkdir -p "$dst"
    ln "$src"/*.safetensors "$dst/"
    [ "$name_file" = model.safetensors ] || ln "$src/$name_file" "$dst/"
    cp public/config.json "$dst/"
    say "$n: version 0 hard-linked from the aggregator's store (no 4th copy)"
  else
    need "$ckpt_bytes" "$n's full sync"
  fi
  start "$n" "$fl" node --config "$n/node.cfg"
  pid=$child
  [ "$n" = "$last" ] || sample_sync "$n" "$pid" VmHWM "round 1: model version .*; sync: "
  await "$n" 7200 "a round-1 receipt" test -f "$st/receipts/round-1.json"
  disk "$n has its round-1 receipt"
  [ "$n" = "$last" ] || stop "$n" "$pid"
  record "$n" 1 "$st"
  if [ "$n" != "$last" ]; then
    rm -rf "$st/versions"
    say "deleted $n's versions/ (its round-1 copy of version 0)"
  fi
done

# ---- round 2: node 3 makes version 1 from its version 0 and the update ----
# VmRSS (not VmHWM: the process trained round 1) sampled from its round-1
# receipt (it waits for the publication) until its round-2 sync's log line.
sample_sync "$last" "$pid" VmRSS "round 2: model version .*; sync: "
grep -q "round 2: .*sync: low-rank update" "$logs/$last.log" ||
  die "$last did not sync round 2 low-rank (logs/$last.log)"
disk "$last made version 1"
await aggregator 7200 "round 1's metrics" grep -Eq '"round": ?1,' "$agg_state/metrics.jsonl"
agg_line=$(grep -E '"round": ?1,' "$agg_state/metrics.jsonl")
printf '%s\n' "$agg_line" >"$logs/aggregator.round1"
v1=$(field "$logs/aggregator.round1" version)
[ "$(field "$logs/aggregator.round1" status)" = published ] || die "round 1 was not published: $agg_line"
# journal: publish <r> <version hex> <update hex> <bytes> #<checksum>
update_bytes=$(sed -n 's/^publish 1 [0-9a-f]* [0-9a-f]* \([0-9]*\) #.*/\1/p' "$agg_state/journal")
[ -n "$update_bytes" ] || die "round 1 published no low-rank update"
say "round 1 published version ${v1:0:16}: aggregate $(field "$logs/aggregator.round1" aggregate_s) s," \
  "publish $(field "$logs/aggregator.round1" publish_s) s, served $(field "$logs/aggregator.round1" bytes_served) B," \
  "received $(field "$logs/aggregator.round1" bytes_received) B; update $update_bytes B"
await "$last" 7200 "a round-2 receipt" test -f "$st/receipts/round-2.json"
stop "$last" "$pid"
record "$last-r2" 2 "$st"
[ "${how[$last-r2]}" = lowrank ] || die "$last's round-2 record says sync ${how[$last-r2]}, not lowrank"
[ -f "$st/versions/$v1/model.safetensors.index.json" ] || [ -f "$st/versions/$v1/model.safetensors" ] ||
  die "$last does not hold version 1"
agg_bytes=$(du -sb "$agg_state" | cut -f1)
stop aggregator "$agg"
disk "all stopped"

# ---- the summary ----
peak_used=$(awk -v u0="$used0" 'BEGIN {m = 0} $2 - u0 > m {m = $2 - u0} END {printf "%.0f\n", m}' "$logs/df.txt")
peak_run=$(awk 'BEGIN {m = 0} $4 > m {m = $4} END {printf "%.0f\n", m}' "$logs/df.txt")
min_free=$(awk 'NR == 1 || $3 < m {m = $3} END {printf "%.0f\n", m}' "$logs/df.txt")
ratio() { echo "scale=3; $1 / $ckpt_bytes" | bc | sed 's/^\./0./'; }
{
  echo
  echo "checkpoint: $ckpt_bytes B ($(mib "$ckpt_bytes") MiB, $shards files)"
  echo
  echo "| process | peak RSS MiB | x checkpoint | wall s | exit |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  row() { echo "| $1 | $(mib $(($2 * 1024))) | $(ratio $(($2 * 1024))) | $3 | $4 |"; }
  row "init-model" "${peak_kb[init-model]}" "${wall_s[init-model]}" "${exit_rc[init-model]}"
  row "aggregator (import, round 1, publish, round 2 open)" "${peak_kb[aggregator]}" \
    "${wall_s[aggregator]}" "${exit_rc[aggregator]}"
  for p in "${names[0]}" "${names[1]}"; do
    row "$p (round 1: full sync, train, submit)" "${peak_kb[$p]}" "${wall_s[$p]}" "${exit_rc[$p]}"
  done
  row "$last (round 1 from the linked version 0; round 2: low-rank sync, train, submit)" \
    "${peak_kb[$last]}" "${wall_s[$last]}" "${exit_rc[$last]}"
  for p in "${names[0]}" "${names[1]}"; do
    row "$p's full sync (VmHWM at its sync's log line)" "${sync_kb[$p]}" "" ""
  done
  row "$last's round-2 low-rank sync (largest VmRSS, sampled every 0.5 s)" "${sync_kb[$last]}" "" ""
  echo
  echo "| bytes | value | x checkpoint |"
  echo "| --- | ---: | ---: |"
  for p in "${names[@]}" "$last-r2"; do
    echo "| $p: download (${how[$p]}) | ${dl[$p]} | $(ratio "${dl[$p]}") |"
  done
  for p in "${names[@]}" "$last-r2"; do
    echo "| $p: upload (sealed delta) | ${up[$p]} | $(ratio "${up[$p]}") |"
  done
  echo "| round 1's update object in the store | $update_bytes | $(ratio "$update_bytes") |"
  echo "| aggregator's state at the end (versions 0, 1, update, envelopes) | $agg_bytes | $(ratio "$agg_bytes") |"
  for p in "${names[@]}" "$last-r2"; do
    echo "| $p's state directory at its receipt | ${node_bytes[$p]} | $(ratio "${node_bytes[$p]}") |"
  done
  echo "| peak bytes of the run's files (du, every 5 s; hard links once) | $peak_run | $(ratio "$peak_run") |"
  echo "| peak use of the file system above the start (df, every 5 s; other users' files too) | $peak_used | $(ratio "$peak_used") |"
  echo "| least free | $min_free | |"
  echo
  for p in "${names[@]}" "$last-r2"; do echo "$p: loss ${loss[$p]}, train ${train_s[$p]} s"; done
} | tee -a "$summary"
# A sharded version's index also lists each shard's SHA-256 (docs/formats.md),
# so it is longer than the index init-model wrote; the shards are the same size.
index_v0=$(find "$agg_state/versions/$v0" -name model.safetensors.index.json -printf '%s')
full=${dl[${names[0]}]}
if [ "$full" = "$ckpt_bytes" ]; then
  say "full sync = the checkpoint's bytes ($full B)"
elif [ -n "$index_v0" ] && [ "$full" = $((shard_bytes + index_v0)) ]; then
  say "full sync $full B = the checkpoint's $shards shards ($shard_bytes B) + the version's index" \
    "($index_v0 B; init-model's: $((ckpt_bytes - shard_bytes)) B, without the shards' hashes)"
else
  say "NOTE: full sync $full B, checkpoint $ckpt_bytes B ($shard_bytes B in shards)"
fi
say "uptime at end: $(uptime)"
say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
