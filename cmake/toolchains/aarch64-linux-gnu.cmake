# Cross-compiling linux-arm64 on an x86-64 Debian/Ubuntu host (what `./build.sh cross-arm64` does):
#   apt-get install g++-aarch64-linux-gnu qemu-user-static
#   cmake -S . -B build/linux-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DLLMNATIVE_CUDA=OFF -DLLMNATIVE_BUILD_BENCHMARKS=OFF -DLLMNATIVE_GTEST_SOURCE_DIR=/usr/src/googletest
# The tests then run under qemu (CMAKE_CROSSCOMPILING_EMULATOR): ctest --test-dir build/linux-arm64.
# On arm64 the CPU kernels take their scalar paths (the *_avx2 / *_avx512 files are x86-only).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
find_program(LLMNATIVE_QEMU_AARCH64 qemu-aarch64-static)
if(LLMNATIVE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${LLMNATIVE_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu")
endif()
