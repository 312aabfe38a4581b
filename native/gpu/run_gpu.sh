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
#   phase all       prebuilt (when .gpu/prebuilt exists), then build
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
gtest_summary() {  # the totals gtest prints at the end, and the failed tests
  grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$1" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$1" 2>/dev/null | sort -u | head -n 20 | sed 's/^/    /' | tee -a "$summary"
}
if [ ! -d "$prebuilt" ] && [ -f "$root/.gpu/prebuilt.tar.xz" ]; then
  tar -C "$root/.gpu" -xJf "$root/.gpu/prebuilt.tar.xz" && note "unpacked .gpu/prebuilt.tar.xz"
fi
gpu_filter='*Cuda*:*CUDA*:*Gpu*:*GPU*'
peer_args=()
if [ -f "$peers" ]; then peer_args=(--peers "$peers"); else note "no peers.py at $peers: torch peers skipped"; fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "command: native/gpu/run_gpu.sh $out --phase $phase $quick"
  [ -f "$prebuilt/COMMIT" ] && { echo "prebuilt from:"; sed 's/^/  /' "$prebuilt/COMMIT"; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
} > "$out/environment.txt"
note "environment -> environment.txt ($(head -n 1 "$out/environment.txt"))"

backend="${LLMNATIVE_GPU_BENCH_BACKEND:-cuda}"  # cpu: smoke test of this script on a machine without a GPU
bench() {  # bench LIB LABEL: a quick pass first (the harness end to end), then the full one
  local lib="$1" label="$2"
  step "bench quick ($label)" 120 "$out/bench_quick_$label.log" \
    env PYTHONUNBUFFERED=1 python3 "$root/native/gpu/bench_gpu.py" --lib "$lib" --backend "$backend" --quick \
      "${peer_args[@]}" --budget 90 --out "$out/bench_quick_$label.json"
  if [ -z "$quick" ]; then
    local left=$(( deadline - $(date +%s) - 40 ))
    step "bench ($label)" 400 "$out/bench_$label.log" \
      env PYTHONUNBUFFERED=1 python3 "$root/native/gpu/bench_gpu.py" --lib "$lib" --backend "$backend" \
        "${peer_args[@]}" --budget "$left" --out "$out/bench_$label.json"
  fi
}

ran_bench=0
if [ "$phase" = all ] || [ "$phase" = prebuilt ]; then
  if [ -x "$prebuilt/llmnative_tests" ]; then
    step "GPU tests (prebuilt)" 150 "$out/gpu_tests_prebuilt.log" \
      "$prebuilt/llmnative_tests" --gtest_filter="$gpu_filter" --gtest_color=no
    gtest_summary "$out/gpu_tests_prebuilt.log"
    bench "$prebuilt/libllmnative.so" prebuilt
    ran_bench=1
  else
    note "no prebuilt binaries in $prebuilt (native/gpu/prepare_carry.sh --prebuilt)"
  fi
fi

if [ "$phase" = all ] || [ "$phase" = build ]; then
  gt=()
  [ -d "$root/.gpu/googletest" ] && gt=(-DLLMNATIVE_GTEST_SOURCE_DIR="$root/.gpu/googletest")
  if step "configure (sm_$arch)" 60 "$out/configure.log" \
       cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMNATIVE_CUDA=ON \
         -DLLMNATIVE_CUDA_ARCHITECTURES="$arch" -DLLMNATIVE_BUILD_BENCHMARKS=OFF "${gt[@]}"; then
    step "build library" 300 "$out/build_lib.log" cmake --build "$build" --target llmnative --parallel
    if step "build tests" 240 "$out/build_tests.log" cmake --build "$build" --target llmnative_tests --parallel; then
      step "GPU tests (built here)" 150 "$out/gpu_tests.log" \
        "$build/native/tests/llmnative_tests" --gtest_filter="$gpu_filter" --gtest_color=no
      gtest_summary "$out/gpu_tests.log"
    fi
    if [ "$ran_bench" = 0 ] && [ -f "$build/lib/libllmnative.so" ]; then bench "$build/lib/libllmnative.so" built; fi
  fi
fi
note "done; files: $(cd "$out" && ls | tr '\n' ' ')"
