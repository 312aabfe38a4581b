#!/usr/bin/env bash
# Run HERE (the development machine) before a GPU session: fills the git-ignored folder .gpu/ that the
# device call carries (`carry: [".gpu"]`), because the GPU machine has no internet and no GoogleTest.
#
#   native/gpu/prepare_carry.sh [--prebuilt]
#
#   .gpu/peers.py      the torch peers (copy of ../shared/gpu/peers.py)
#   .gpu/googletest    GoogleTest sources (from /usr/src/googletest), so the device can build the tests
#   .gpu/prebuilt.tar.xz  with --prebuilt: libllmnative.so and llmnative_tests built here for sm_90 (SASS
#                      only, with -lineinfo so Nsight Compute's stall samples name source lines) by this machine's nvcc, xz-compressed (the two uncompressed are ~58 MiB, too close
#                      to the limit), so the first minutes on the device run tests and benchmarks instead of
#                      compiling; run_gpu.sh unpacks it. run_gpu.sh also builds with the device's own nvcc.
# Everything carried counts against the device call's 64 MiB limit; the script prints the total.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dst="$root/.gpu"
mkdir -p "$dst"
shared="${LLMNATIVE_SHARED:-$root/../shared}"
if [ -f "$shared/gpu/peers.py" ]; then
  cp "$shared/gpu/peers.py" "$dst/peers.py"
else
  echo "prepare_carry: no $shared/gpu/peers.py: the torch peers will be missing" >&2
fi
if [ -d /usr/src/googletest ]; then
  rm -rf "$dst/googletest"
  cp -r /usr/src/googletest "$dst/googletest"
else
  echo "prepare_carry: no /usr/src/googletest (apt install libgtest-dev): the device cannot build the tests" >&2
fi
if [ "${1:-}" = "--prebuilt" ]; then
  command -v nvcc >/dev/null || { echo "prepare_carry: --prebuilt needs nvcc (.ci/install-cuda.sh)" >&2; exit 1; }
  b="$root/build/gpu-prebuilt"
  cmake -S "$root" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMNATIVE_CUDA=ON \
    -DLLMNATIVE_CUDA_ARCHITECTURES="90-real" -DLLMNATIVE_BUILD_BENCHMARKS=OFF -DCMAKE_CUDA_FLAGS=-lineinfo >/dev/null
  cmake --build "$b" --target llmnative llmnative_tests --parallel "${LLMNATIVE_JOBS:-2}"
  mkdir -p "$dst/prebuilt"
  cp "$b/lib/libllmnative.so" "$b/native/tests/llmnative_tests" "$dst/prebuilt/"
  strip --strip-unneeded "$dst/prebuilt/libllmnative.so" "$dst/prebuilt/llmnative_tests" 2>/dev/null || true
  git -C "$root" rev-parse HEAD > "$dst/prebuilt/COMMIT"
  git -C "$root" status --short >> "$dst/prebuilt/COMMIT"
  tar -C "$dst" -cJf "$dst/prebuilt.tar.xz" prebuilt
  rm -rf "$dst/prebuilt"
fi
du -sh "$dst"/* 2>/dev/null
echo "prepare_carry: .gpu/ holds $(du -sm "$dst" | cut -f1) MiB (limit for working tree + carry: 64 MiB)"
