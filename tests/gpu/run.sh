#!/usr/bin/env bash
# tests/gpu/run.sh — every check of the CUDA backend on a GPU machine, in one
# go, in under 8 minutes on one H100 or H200 (docs/gpu.md):
#   1. configure and build the training core only (FEDLORA_NET=OFF) with the
#      CUDA backend for sm_90a plus sm_80 and its PTX (any later GPU);
#   2. the kernel tests and the GPU-against-CPU parity tests (fp32, bf16);
#   3. the NCCL path with one rank;
#   4. the product on the GPU: trainer_run on cuda against cpu with resume
#      across devices (gpu_trainer), `fedlora train/eval --device` as
#      processes (gpu_device_cli), the backend as a module that fedlora
#      loads at run time and does not link (gpu_module), and a `fedlora train
#      --device cuda` smoke run (fp32 and bf16) next to the same run on the
#      CPU, and the same for the qwen3, olmo2, apertus, gemma2, gemma3_text,
#      phi3, bloom and mixtral tiny presets (QK-norm, post-norms, xIELU,
#      soft-capping, per-layer windows and RoPE bases, fused linears, ALiBi,
#      BLOOM's query_key_value and embedding LayerNorm, a mixture of experts);
#   5. the benchmark (GPT-2 124M and Qwen2.5-0.5B shapes) next to PyTorch +
#      PEFT (bf16, SDPA) when torch is importable;
#   6. a short table, printed last.
# Installs nothing. Full logs under OUT_DIR (at most 14 files). Without a GPU
# (or driver) it still builds; the GPU tests then report SKIPPED, the device
# test checks the "no CUDA device found" error, and the benchmark is skipped.
#
# Usage: tests/gpu/run.sh [OUT_DIR]     (default: $OUT, else ./gpu-out)
# Environment: FEDLORA_GPU_BUILD (build dir, default build-gpu),
#   FEDLORA_GPU_DEBS (.deb files from tests/gpu/fetch_deps.sh, default .gpudeps),
#   NCCL_ROOT (an NCCL install; default: the system's, else PyTorch's pip NCCL).
set -u -o pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-${OUT:-$root/gpu-out}}
build=${FEDLORA_GPU_BUILD:-$root/build-gpu}
debs=${FEDLORA_GPU_DEBS:-$root/.gpudeps}
jobs=$(nproc 2>/dev/null || echo 8)
mkdir -p "$out" "$build"
summary="$out/summary.txt"
: >"$summary"
t0=$(date +%s)
log() { echo "[$(($(date +%s) - t0))s] $*"; }
row() { printf '%-14s %s\n' "$1" "$2" >>"$summary"; }
finish() {
  echo
  echo "== fedlora CUDA backend on $(head -1 "$out/device.txt" 2>/dev/null || echo '?'), $(($(date +%s) - t0)) s =="
  cat "$summary"
  exit "$1"
}

# ---- prerequisites -------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/device.txt" 2>&1 ||
  echo "nvidia-smi failed" >"$out/device.txt"
for tool in nvcc cmake gcc; do
  command -v "$tool" >/dev/null || { row prerequisites "FAIL: $tool is not on PATH"; finish 1; }
done

# The training core builds against OpenBLAS, jansson and PCRE2 (through
# pkg-config). A GPU machine without them can use .debs carried from the
# development machine (tests/gpu/fetch_deps.sh), unpacked into the build dir.
any_exists() {
  local f
  for f in "$@"; do [ -e "$f" ] && return 0; done
  return 1
}
have_system_libs() {
  command -v pkg-config >/dev/null && pkg-config --exists jansson libpcre2-8 || return 1
  ldconfig -p 2>/dev/null | grep -q 'libopenblas' || return 1
  any_exists /usr/include/cblas.h /usr/include/*/cblas.h /usr/include/*/*/cblas.h
}
cmake_extra=()
if have_system_libs; then
  echo "system libraries: OpenBLAS, jansson, PCRE2 found" >"$out/build.log"
elif ls "$debs"/*.deb >/dev/null 2>&1; then
  prefix="$build/deps"
  rm -rf "$prefix" && mkdir -p "$prefix"
  for f in "$debs"/*.deb; do
    dpkg-deb -x "$f" "$prefix" || { row prerequisites "FAIL: cannot unpack $f"; finish 1; }
  done
  lib="$prefix/usr/lib/x86_64-linux-gnu"
  # Debian's .pc files say prefix=/usr: point them at the unpacked tree.
  sed -i "s|^prefix=/usr\$|prefix=$prefix/usr|" "$lib"/pkgconfig/*.pc
  export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cmake_extra+=(-DCMAKE_PREFIX_PATH="$prefix/usr"
    -DOPENBLAS_LIB="$lib/openblas-pthread/libopenblas.so"
    -DCBLAS_INCLUDE="$prefix/usr/include/x86_64-linux-gnu/openblas-pthread")
  command -v pkg-config >/dev/null || cmake_extra+=(-DPKG_CONFIG_EXECUTABLE="$prefix/usr/bin/pkgconf")
  echo "libraries unpacked from $debs into $prefix" >"$out/build.log"
else
  row prerequisites "FAIL: OpenBLAS, jansson or PCRE2 (and pkg-config) missing, and no .debs in $debs:"
  row "" "run tests/gpu/fetch_deps.sh on the development machine and carry .gpudeps (docs/gpu.md)"
  finish 1
fi
# NCCL: the system's, else the one PyTorch's wheels bring.
if [ -z "${NCCL_ROOT:-}" ] && ! any_exists /usr/include/nccl.h /usr/local/include/nccl.h \
  /usr/local/cuda/include/nccl.h; then
  NCCL_ROOT=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
fi
if [ -n "${NCCL_ROOT:-}" ]; then
  cmake_extra+=(-DNCCL_ROOT="$NCCL_ROOT")
  export LD_LIBRARY_PATH="$NCCL_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# ---- build ------------------------------------------------------------------------
# Warnings stay warnings here: this machine's compilers may differ from CI's,
# where -Werror is enforced.
launcher="$build/cc-no-werror"
printf '#!/bin/sh\nexec "$@" -Wno-error\n' >"$launcher" && chmod +x "$launcher"
log "configure + build ($jobs jobs)"
if ! { cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFEDLORA_CUDA=on -DFEDLORA_NET=OFF \
  -DFEDLORA_CUDA_WERROR=OFF -DCMAKE_C_COMPILER_LAUNCHER="$launcher" "${cmake_extra[@]}" &&
  cmake --build "$build" -j"$jobs" --target gpu_kernels gpu_moe gpu_parity gpu_nccl gpu_trainer \
    gpu_device_cli gpu_module fedlora fedlora_cuda bench_gpu; } \
  >>"$out/build.log" 2>&1; then
  row build "FAIL (see build.log: $(grep -m1 -E 'error|Error' "$out/build.log" | cut -c1-150))"
  finish 1
fi
gencode=$(cuobjdump --list-elf "$build/tests/gpu/gpu_kernels" 2>/dev/null | grep -o 'sm_[0-9a-z]*' | sort -u | tr '\n' ' ')
row build "ok in $(($(date +%s) - t0)) s (${gencode:-code for sm_90a, sm_80 + PTX asked; no cuobjdump to list it})"
grep -q "NCCL not found" "$out/build.log" && row nccl "NOT BUILT: NCCL not found (set NCCL_ROOT)"

# ---- tests ---------------------------------------------------------------------------
export OMP_NUM_THREADS=$jobs OMP_WAIT_POLICY=passive
# what the CLI tests run (as CTest would set them)
export FEDLORA_BIN="$build/fedlora" FEDLORA_FIXTURES="$root/tests/fixtures"
status=0
run_test() {
  local name=$1 limit=$2 rc
  log "$name"
  timeout "$limit" "$build/tests/gpu/$name" >"$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) row "$name" "PASS ($(tail -1 "$out/$name.log"))" ;;
    77) row "$name" "SKIPPED ($(tail -1 "$out/$name.log"))" ;;
    124) row "$name" "TIMEOUT after $limit s (see $name.log)"; status=1 ;;
    *) row "$name" "FAIL rc $rc ($(tail -1 "$out/$name.log"); see $name.log)"; status=1
       grep -m3 'CHECK failed' "$out/$name.log" | cut -c1-160 | sed 's/^/               /' >>"$summary" ;;
  esac
}
run_test gpu_kernels 120
have_gpu=1
grep -q '^skipped: no CUDA device' "$out/gpu_kernels.log" && have_gpu=0
run_test gpu_moe 60
run_test gpu_parity 240
# The block options of Qwen3, OLMo 2, Apertus, Gemma 2, Gemma 3, Phi-3 and
# BLOOM: their parity cases ran inside gpu_parity; name them in the summary.
fam=$(grep -cE '^  (qwen3_qk_norm|olmo2_post_norm|apertus_xielu|olmo2_mid|apertus_mid) ' \
  "$out/gpu_parity.log" 2>/dev/null)
row families "${fam:-0} result lines of the qwen3/olmo2/apertus parity cases in gpu_parity.log"
fam2=$(grep -cE '^  (gemma2_softcap|gemma3_local_rope|phi3_longrope|gemma2_mid|gemma3_mid|phi3_mid) ' \
  "$out/gpu_parity.log" 2>/dev/null)
row "families 2" "${fam2:-0} result lines of the gemma2/gemma3/phi3 parity cases in gpu_parity.log"
# BLOOM's ALiBi, query_key_value by head and embedding LayerNorm (the lines
# "… without …" are the CPU's check that each option matters, not GPU results)
fam3=$(grep -E '^  (bloom_alibi|bloom_mid) ' "$out/gpu_parity.log" 2>/dev/null | grep -vc ' without ')
row bloom "${fam3:-0} result lines of the bloom parity cases in gpu_parity.log"
# Mixtral's experts: top 2 of 4, top 1 with the load-balancing loss, the
# router adapted (its gradient checked alone), dropout over the experts' rows
moe=$(grep -cE '^  mixtral_[a-z0-9_]+ ' "$out/gpu_parity.log" 2>/dev/null)
row "experts" "${moe:-0} result lines of the mixtral parity cases in gpu_parity.log"
run_test gpu_nccl 60
run_test gpu_trainer 120
run_test gpu_device_cli 90
run_test gpu_module 60

# ---- fedlora train --device cuda: the product, as a user runs it ----------------------
# A tiny Llama trained for 40 steps on the example corpus on the CPU, then on
# the GPU in fp32 (the same numbers up to summation order: held-out losses
# within 1e-3) and in bf16, then `fedlora eval --device cuda` of the bf16
# adapter. Log: smoke.log.
smoke() {
  local dir="$build/smoke" fb="$build/fedlora" data="$root/examples/corpus/mixed.txt" run
  rm -rf "$dir" && mkdir -p "$dir"
  "$fb" init-model --arch llama --preset tiny --seed 1 --out "$dir/base" || return 1
  for run in cpu:fp32 cuda:fp32 cuda:bf16; do
    echo "== train ${run%:*} ${run#*:}"
    "$fb" train --model "$dir/base" --data "$data" --out "$dir/${run/:/-}" --steps 40 --seq 64 \
      --batch 8 --lr 1e-2 --rank 8 --targets all-linear --eval-fraction 0.1 --save-every 20 \
      --log-every 10 --device "${run%:*}" --precision "${run#*:}" || return 1
  done
  echo "== eval cuda"
  "$fb" eval --model "$dir/base" --adapter "$dir/cuda-bf16" --data "$data" --seq 64 --device cuda
}
# The same for each newer family's tiny preset (QK-norm, post-norms, xIELU,
# Gemma's soft-capping and per-layer attention, Phi-3's fused linears,
# BLOOM's ALiBi, query_key_value by head and embedding LayerNorm, and
# Mixtral's experts, on the GPU as a user runs them): cpu fp32 against cuda
# fp32 and bf16, 20 steps.
family_smoke() {
  local dir="$build/smoke-families" fb="$build/fedlora" data="$root/examples/corpus/mixed.txt"
  local arch run
  rm -rf "$dir" && mkdir -p "$dir"
  for arch in qwen3 olmo2 apertus gemma2 gemma3_text phi3 bloom mixtral; do
    "$fb" init-model --arch "$arch" --preset tiny --seed 1 --out "$dir/$arch" || return 1
    for run in cpu:fp32 cuda:fp32 cuda:bf16; do
      echo "== train $arch ${run%:*} ${run#*:}"
      "$fb" train --model "$dir/$arch" --data "$data" --out "$dir/$arch-${run/:/-}" --steps 20 \
        --seq 64 --batch 8 --lr 1e-2 --rank 8 --targets all-linear --eval-fraction 0.1 \
        --log-every 10 --device "${run%:*}" --precision "${run#*:}" || return 1
    done
  done
}
# the held-out loss `fedlora train` printed after "== train DEVICE PRECISION"
heldout() {
  sed -n "/^== train $1\$/,/^==/p" "$out/smoke.log" | sed -n 's/.*held-out loss \([0-9.]*\),.*/\1/p' | head -1
}
if [ $have_gpu = 1 ]; then
  log "fedlora train --device cuda"
  export -f smoke
  export build root
  if timeout 120 bash -c smoke >"$out/smoke.log" 2>&1; then
    c=$(heldout "cpu fp32") f=$(heldout "cuda fp32") b=$(heldout "cuda bf16")
    ok=$(awk -v c="${c:-0}" -v f="${f:-0}" 'BEGIN { d = c - f; if (d < 0) d = -d; print (c > 0 && d <= 1e-3 * c) }')
    verdict=PASS
    [ "$ok" = 1 ] || { verdict="FAIL (fp32 differs from cpu)"; status=1; }
    row "train smoke" "$verdict: held-out loss cpu $c, cuda fp32 $f, cuda bf16 $b"
  else
    row "train smoke" "FAIL ($(tail -1 "$out/smoke.log" | cut -c1-120); see smoke.log)"
    status=1
  fi
  log "fedlora train --device cuda, qwen3 / olmo2 / apertus / gemma2 / gemma3_text / phi3 / bloom / mixtral"
  export -f family_smoke
  if timeout 400 bash -c family_smoke >"$out/smoke_families.log" 2>&1; then
    line="" verdict=PASS
    for arch in qwen3 olmo2 apertus gemma2 gemma3_text phi3 bloom mixtral; do
      c=$(sed -n "/^== train $arch cpu fp32\$/,/^==/p" "$out/smoke_families.log" |
        sed -n 's/.*held-out loss \([0-9.]*\),.*/\1/p' | head -1)
      f=$(sed -n "/^== train $arch cuda fp32\$/,/^==/p" "$out/smoke_families.log" |
        sed -n 's/.*held-out loss \([0-9.]*\),.*/\1/p' | head -1)
      ok=$(awk -v c="${c:-0}" -v f="${f:-0}" 'BEGIN { d = c - f; if (d < 0) d = -d; print (c > 0 && d <= 1e-3 * c) }')
      [ "$ok" = 1 ] || { verdict="FAIL ($arch fp32 differs from cpu)"; status=1; }
      line="$line $arch cpu $c cuda $f;"
    done
    row "family smoke" "$verdict:$line"
  else
    row "family smoke" "FAIL ($(tail -1 "$out/smoke_families.log" | cut -c1-120); see smoke_families.log)"
    status=1
  fi
else
  row "train smoke" "SKIPPED (no CUDA device)"
fi

# ---- benchmark -----------------------------------------------------------------------
[ $have_gpu = 1 ] || { row benchmark "SKIPPED (no CUDA device)"; finish $status; }
have_torch=0
python3 -c 'import torch, peft, transformers; assert torch.cuda.is_available()' 2>/dev/null && have_torch=1
[ $have_torch = 1 ] || echo "# PyTorch + PEFT with CUDA not importable: no reference" >>"$out/bench.log"
printf '%-14s %12s %6s %12s %6s %8s\n' model "fedlora tok/s" MFU "torch+peft" MFU ratio >>"$summary"
field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" <<<"$2" | tail -1; }
for spec in "gpt2-124m 8 1024" "qwen2.5-0.5b 8 1024"; do
  set -- $spec
  log "bench $1"
  f=$(timeout 200 "$build/bench/gpu/bench_gpu" --model "$1" --batch "$2" --seq "$3" 2>&1)
  echo "$f" >>"$out/bench.log"
  p=""
  if [ $have_torch = 1 ]; then
    p=$(timeout 200 python3 "$root/bench/gpu/ref_peft_gpu.py" --model "$1" --batch "$2" --seq "$3" 2>&1)
    echo "$p" >>"$out/bench.log"
  fi
  a=$(field tokens_per_s "$f") am=$(field mfu "$f") b=$(field tokens_per_s "$p") bm=$(field mfu "$p")
  ratio=$(awk -v a="${a:-0}" -v b="${b:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-" }')
  printf '%-14s %12s %6s %12s %6s %8s\n' "$1" "${a:-FAIL}" "${am:--}" "${b:--}" "${bm:--}" "$ratio" >>"$summary"
  [ -n "$a" ] || status=1
done
# the same step with the attention on CUDA cores: what the tensor cores bring
log "bench gpt2-124m, CUDA-core attention"
f=$(timeout 200 "$build/bench/gpu/bench_gpu" --model gpt2-124m --batch 8 --seq 1024 --attention simt 2>&1)
echo "$f" >>"$out/bench.log"
printf '%-14s %12s %6s   (attention on CUDA cores)\n' gpt2-124m "$(field tokens_per_s "$f")" \
  "$(field mfu "$f")" >>"$summary"
finish $status
