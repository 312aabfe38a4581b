#!/usr/bin/env bash
# The GPU script, run on the device machine (NVIDIA GPU, nvcc, cmake, python3 with torch; no dotnet, no
# internet, no GoogleTest): the native GPU tests and the GPU benchmarks with the torch peers in one python
# process, everything written to OUT_DIR, a short summary printed last.
#
#   native/gpu/run_gpu.sh OUT_DIR [--phase all|prebuilt|build] [--quick]
#
# Prepare here first: native/gpu/prepare_carry.sh [--prebuilt] fills .gpu/ (peers.py, googletest sources,
# optionally a library + test binary built here for sm_90); the device call carries ".gpu".
#   phase prebuilt  GPU tests and benchmarks with .gpu/prebuilt (no compile: results in the first minutes)
#   phase build     configure + build with the device's nvcc for sm_$LLMNATIVE_GPU_ARCH (default 90; tests
#                   from .gpu/googletest when GoogleTest is not installed), then its GPU tests, then the
#                   benchmarks with that library when the prebuilt phase did not run them
#   phase all       both in one call: the build runs in the background (niced) while the prebuilt
#                   binaries are tested and benchmarked, then the build's tests (LLMNATIVE_GPU_BUILT_SUITES)
# Every step has a timeout, and the whole run stays inside LLMNATIVE_GPU_BUDGET_S (default 560 s, under
# the device tool's 600 s per command); a step that does not fit is skipped and says so.
set -uo pipefail
out="${1:?usage: run_gpu.sh OUT_DIR [--phase all|prebuilt|build] [--quick]}"
shift
phase=all quick=""
while [ $# -gt 0 ]; do
  case "$1" in
    --phase) phase="$2"; shift ;;
    --quick) quick=--quick ;;
    *) echo "run_gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The device tool returns at most 8 files: everything is written under OUT_DIR/all/, and at the end
# summary.txt, environment.txt and the benchmark JSONs are copied to OUT_DIR and the rest packed into
# OUT_DIR/logs.tar.gz.
final="$out"
out="$final/all"
mkdir -p "$out"
arch="${LLMNATIVE_GPU_ARCH:-90}"
peers="${LLMNATIVE_PEERS:-$root/.gpu/peers.py}"
prebuilt="$root/.gpu/prebuilt"
build="$root/build/gpu"
start=$(date +%s)
deadline=$(( start + ${LLMNATIVE_GPU_BUDGET_S:-560} ))
summary="$out/summary.txt"
: > "$summary"
note() { echo "[gpu +$(( $(date +%s) - start ))s] $*" | tee -a "$summary"; }
# step NAME MAX_SECONDS LOG cmd...: runs cmd with timeout min(MAX, time left - 10 s), records its exit code
step() {
  local name="$1" max="$2" log="$3"; shift 3
  local left=$(( deadline - $(date +%s) - 10 ))
  if [ "$left" -lt 20 ]; then note "$name: SKIPPED (time budget spent)"; return 99; fi
  [ "$max" -gt "$left" ] && max="$left"
  timeout --kill-after=5 "$max" "$@" > "$log" 2>&1
  local rc=$?
  note "$name: exit $rc$([ $rc -eq 124 ] && echo " (timed out after ${max}s)") -> $(basename "$log")"
  return $rc
}
if [ ! -d "$prebuilt" ] && [ -f "$root/.gpu/prebuilt.tar.xz" ]; then
  tar -C "$root/.gpu" -xJf "$root/.gpu/prebuilt.tar.xz" && note "unpacked .gpu/prebuilt.tar.xz"
fi
gpu_filter='*Cuda*:*CUDA*:*Gpu*:*GPU*'
peer_args=()
if [ -f "$peers" ]; then peer_args=(--peers "$peers"); else note "no peers.py at $peers: torch peers skipped"; fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # the device copy's git metadata can be older than its files: "prebuilt from" names the binaries' commit
  echo "git HEAD of the device copy (may be stale): $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "command: native/gpu/run_gpu.sh $final --phase $phase $quick"
  [ -f "$prebuilt/COMMIT" ] && { echo "prebuilt from:"; sed 's/^/  /' "$prebuilt/COMMIT"; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
} > "$out/environment.txt"
note "environment -> environment.txt ($(head -n 1 "$out/environment.txt"))"

backend="${LLMNATIVE_GPU_BENCH_BACKEND:-cuda}"  # cpu: smoke test of this script on a machine without a GPU
# The CUDA-13 build (phase all/build) runs in the background, niced, while the prebuilt binaries are tested
# and benchmarked: both fit in one device call. Benchmarks time GPU kernels with the profiler, so the compile
# on other host cores does not change them; the wall-clock (host) numbers may be a little slower.
build_pid=""
if [ "$phase" = all ] || [ "$phase" = build ]; then
  gt=()
  [ -d "$root/.gpu/googletest" ] && gt=(-DLLMNATIVE_GTEST_SOURCE_DIR="$root/.gpu/googletest")
  build_left=$(( deadline - $(date +%s) - 80 ))
  (
    b0=$(date +%s)
    timeout "$build_left" bash -c '
      cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMNATIVE_CUDA=ON \
        -DLLMNATIVE_CUDA_ARCHITECTURES="$3" -DLLMNATIVE_BUILD_BENCHMARKS=OFF "${@:4}" &&
      nice -n 15 cmake --build "$2" --target llmnative llmnative_tests --parallel 12' _ \
      "$root" "$build" "$arch" "${gt[@]}" > "$out/build.log" 2>&1
    echo "$? $(( $(date +%s) - b0 ))" > "$out/.build_rc"
  ) &
  build_pid=$!
  note "CUDA build (device nvcc, sm_$arch) started in the background -> build.log"
fi

# run_tests BIN LABEL: every GPU test suite in its own process (a sticky CUDA error in one suite cannot fail
# the others), then each failing suite once more under compute-sanitizer memcheck when it works here.
run_tests() {  # run_tests BIN LABEL [SUITE_REGEX]
  local bin="$1" label="$2" only="${3:-.}" suites failed=()
  # "Suite.Test:Suite.Test2:..." per suite, from gtest's listing ("Suite." lines, then indented test names)
  suites=$("$bin" --gtest_list_tests --gtest_filter="$gpu_filter" | awk '
    /^Running/ { next }
    /^[A-Za-z]/ { if (line != "") print line; suite = $1; line = ""; next }
    /^  [A-Za-z]/ { line = line (line == "" ? "" : ":") suite $1 }
    END { if (line != "") print line }' | grep -E "$only")
  : > "$out/gpu_tests_$label.log"
  for filt in $suites; do
    local s="${filt%%.*}"
    filt="$filt:"
    step "  $label $s" 90 "$out/.suite.log" "$bin" --gtest_filter="${filt%:}" --gtest_color=no
    local rc=$?
    cat "$out/.suite.log" >> "$out/gpu_tests_$label.log"
    grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$out/.suite.log" | sed 's/^/    /' | tee -a "$summary"
    if [ $rc -ne 0 ]; then
      failed+=("${filt%:}")
      grep -E '^\[  FAILED  \] [A-Za-z]' "$out/.suite.log" | sort -u | head -n 12 | sed 's/^/    /' | tee -a "$summary"
    fi
  done
  rm -f "$out/.suite.log"
  local n=0
  for f in "${failed[@]}"; do
    [ $n -ge 2 ] && break; n=$((n + 1))
    step "  memcheck $f" 75 "$out/.mc.log" compute-sanitizer --tool memcheck --print-limit 20 "$bin" \
      --gtest_filter="$f" --gtest_color=no
    { echo "==== memcheck $f"; cat "$out/.mc.log"; } >> "$out/memcheck_$label.log"
    grep -E '^========= (Invalid|Program hit|ERROR SUMMARY|Error)' "$out/.mc.log" | head -n 6 | sed 's/^/    /' \
      | tee -a "$summary"
  done
  rm -f "$out/.mc.log"
}

# bench LIB LABEL: GEMM and attention in separate processes (a crash in one leaves the other's numbers);
# each writes its JSON after every configuration, so a timeout keeps what was measured.
bench() {
  local lib="$1" label="$2" qa=()
  [ -n "$quick" ] && qa=(--quick)
  local py=(python3 "$root/native/gpu/bench_gpu.py" --lib "$lib")
  local left=$(( deadline - $(date +%s) - 20 ))
  [ -n "$build_pid" ] && left=$(( left - 60 ))   # keep a minute for the device build's tests
  [ "$backend" = cuda ] && [ -z "$quick" ] && left=$(( left - 200 ))  # the three comparisons below
  local g=$(( left * 45 / 100 )) a=$(( left * 55 / 100 ))
  step "bench gemm ($label)" "$g" "$out/bench_gemm_$label.log" \
    env PYTHONUNBUFFERED=1 "${py[@]}" --backend "$backend" \
      --only gemm "${qa[@]}" "${peer_args[@]}" --budget $(( g - 25 )) --out "$out/bench_gemm_$label.json"
  step "bench attention ($label)" "$a" "$out/bench_attention_$label.log" \
    env PYTHONUNBUFFERED=1 "${py[@]}" --backend "$backend" \
      --only attention --formats "${LLMNATIVE_GPU_KV_FORMATS:-f16,int8,fp8,int4}" "${qa[@]}" "${peer_args[@]}" \
      --budget $(( a - 25 )) --out "$out/bench_attention_$label.json"
  if [ "$backend" = cuda ] && [ -z "$quick" ]; then  # the SIMT kernel on the shapes the tensor-core one takes
    step "bench attention, SIMT kernel ($label)" 60 "$out/bench_attention_simt_$label.log" \
      env PYTHONUNBUFFERED=1 LLMNATIVE_ATTN_CUDA_PATH=simt "${py[@]}" --backend cuda \
        --only attention --formats f16 --batches 1,8 --contexts 4096,32768 --budget 40 \
        --out "$out/bench_attention_simt_$label.json"
    # INT4 GEMM with the last-arrival cross-block reduction (opt-in until its tests have passed on a GPU),
    # torch fp16 in the same process: does removing the serial lock chain lift small m? (docs/perf/gpu-2026-12-04)
    step "bench gemm, last-arrival reduction ($label)" 75 "$out/bench_gemm_last_$label.log" \
      env PYTHONUNBUFFERED=1 LLMNATIVE_INT4_CUDA_REDUCE=last "${py[@]}" --backend cuda \
        --only gemm --ms 1,16,64,256 "${peer_args[@]}" --budget 60 \
        --out "$out/bench_gemm_last_$label.json"
    # 8-bit K/V in the tensor-core kernel (opt-in until its tests have passed on a GPU)
    step "bench attention, 8-bit caches in the tensor-core kernel ($label)" 60 "$out/bench_attention_mma8_$label.log" \
      env PYTHONUNBUFFERED=1 LLMNATIVE_ATTN_CUDA_PATH=mma "${py[@]}" --backend cuda \
        --only attention --formats int8,fp8 --batches 1,8 --contexts 4096,32768 --budget 40 \
        --out "$out/bench_attention_mma8_$label.json"
  fi
}

ran_bench=0
if [ "$phase" = all ] || [ "$phase" = prebuilt ]; then
  if [ -x "$prebuilt/llmnative_tests" ]; then
    run_tests "$prebuilt/llmnative_tests" prebuilt
    bench "$prebuilt/libllmnative.so" prebuilt
    ran_bench=1
  else
    note "no prebuilt binaries in $prebuilt (native/gpu/prepare_carry.sh --prebuilt)"
  fi
fi

if [ -n "$build_pid" ]; then
  left=$(( deadline - $(date +%s) - 15 ))
  note "waiting up to ${left}s for the device build"
  for _ in $(seq "$left"); do kill -0 "$build_pid" 2>/dev/null || break; sleep 1; done
  if [ -f "$out/.build_rc" ]; then
    read -r brc bsec < "$out/.build_rc"
    note "CUDA build: exit $brc after ${bsec}s$([ "$brc" = 124 ] && echo ' (timed out)')"
    grep -E 'error|FAILED' "$out/build.log" | head -n 15 | sed 's/^/    /' | tee -a "$summary"
    if [ "$brc" = 0 ]; then
      # LLMNATIVE_GPU_BUILT_SUITES (a regex) limits the device build's tests when time is short
      run_tests "$build/native/tests/llmnative_tests" built "${LLMNATIVE_GPU_BUILT_SUITES:-.}"
      [ "$ran_bench" = 0 ] && bench "$build/lib/libllmnative.so" built
    fi
  else
    note "CUDA build still running at the deadline: killed"; kill -- -"$build_pid" 2>/dev/null; kill "$build_pid" 2>/dev/null
  fi
fi
rm -f "$out/.build_rc"
note "done; files: $(cd "$out" && ls | tr '\n' ' ')"
cp "$out"/summary.txt "$out"/environment.txt "$final"/ 2>/dev/null
cp "$out"/bench_*.json "$final"/ 2>/dev/null
tar -C "$final" -czf "$final/logs.tar.gz" all && rm -rf "$out"
