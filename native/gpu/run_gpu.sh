#!/usr/bin/env bash
# The GPU script: on a machine with an NVIDIA GPU (and nvcc, cmake, python3 with torch; no dotnet
# needed) it builds the native library for sm_90, runs every native test (the GPU ones run for real
# there), then our GPU benchmarks and the torch peers in one python process, and writes everything
# to the folder given as argument.
#
#   native/gpu/run_gpu.sh OUT_DIR [--quick]
#
# peers.py is taken from $LLMNATIVE_PEERS, else .gpu/peers.py in the checkout (copy ../shared/gpu/peers.py
# there; .gpu/ is git-ignored and can be carried to the device machine).
set -uo pipefail
out="${1:?usage: run_gpu.sh OUT_DIR [--quick]}"
quick="${2:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out"
build="$root/build/gpu"
arch="${LLMNATIVE_GPU_ARCH:-90}"
peers="${LLMNATIVE_PEERS:-$root/.gpu/peers.py}"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "command: native/gpu/run_gpu.sh $*"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nvcc --version | tail -n 2
} > "$out/environment.txt"

set -e
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMNATIVE_CUDA=ON \
  -DLLMNATIVE_CUDA_ARCHITECTURES="$arch" > "$out/build.log" 2>&1
cmake --build "$build" --parallel >> "$out/build.log" 2>&1
set +e

# Every native test; GPU tests run for real here. Keep going to the benchmarks even if some fail.
(cd "$build" && ctest --output-on-failure --timeout 600 -j 4) > "$out/ctest.log" 2>&1
echo "ctest exit code: $?" >> "$out/ctest.log"
"$build/native/tests/llmnative_tests" --gtest_filter='*Cuda*:*CUDA*:*Gpu*:*GPU*' > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit code: $?" >> "$out/gpu_tests.log"

peer_args=()
[ -f "$peers" ] && peer_args=(--peers "$peers")
PYTHONUNBUFFERED=1 python3 "$root/native/gpu/bench_gpu.py" --lib "$build/lib/libllmnative.so" --backend cuda \
  ${quick:+--quick} "${peer_args[@]}" > "$out/bench.json" 2> "$out/bench.log"
echo "bench exit code: $?" >> "$out/bench.log"
tail -n 3 "$out/ctest.log" "$out/gpu_tests.log" "$out/bench.log"
