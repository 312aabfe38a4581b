#!/usr/bin/env bash
# Nsight Compute on the main CUDA kernels, on the device machine, from the prebuilt binaries of
# native/gpu/prepare_carry.sh --prebuilt (compiled with -lineinfo, so the stall samples name source
# lines). One launch per kernel and shape, six sections + source counters; ~15-25 s each.
#
#   native/gpu/profile_gpu.sh OUT_DIR [seconds budget, default 150]
#
# First use (2026-12-04, docs/perf/gpu-2026-12-04/README.md): the INT4 GEMM at m = 1 was latency-bound
# (10 % DRAM, 36 % of the stalls at a CTA barrier), the tensor-core attention at 70 % DRAM at 1 x 32k.
set -uo pipefail
out="${1:?usage: profile_gpu.sh OUT_DIR [budget_s]}"
budget="${2:-150}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out"
[ -d "$root/.gpu/prebuilt" ] || tar -C "$root/.gpu" -xJf "$root/.gpu/prebuilt.tar.xz"
lib="$root/.gpu/prebuilt/libllmnative.so"
bench=(python3 "$root/native/gpu/bench_gpu.py" --lib "$lib" --budget 1)
sections=(--clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy
          --section WarpStateStats --section SchedulerStats --section LaunchStats --section SourceCounters)
end=$(( $(date +%s) + budget ))
run() {  # run NAME KERNEL_REGEX SKIP bench-args...
  local name="$1" kernel="$2" skip="$3"; shift 3
  local left=$(( end - $(date +%s) ))
  if [ "$left" -lt 20 ]; then echo "$name: skipped (budget)"; return; fi
  timeout "$left" ncu "${sections[@]}" -k "regex:$kernel" --launch-skip "$skip" --launch-count 1 \
    env PYTHONUNBUFFERED=1 "${bench[@]}" "$@" > "$out/ncu_$name.txt" 2>&1
  echo "$name: exit $? -> ncu_$name.txt"
}
# GEMM: the first shape (4096 x 4096) at m = 1, after 5 warm-up launches
run gemm_int4_m1 gemm_int4_fast 5 --only gemm
# attention, f16 cache (tensor-core kernel) and INT8 cache (SIMT kernel), batch 1 x 32k
run attention_f16_1x32k mma_kernel 5 --only attention --formats f16 --batches 1 --contexts 32768
run attention_int8_1x32k split_kernel 5 --only attention --formats int8 --batches 1 --contexts 32768
