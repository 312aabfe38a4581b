# Cross-compiling win-x64 on an x86-64 Debian/Ubuntu host with MinGW-w64 (what `./build.sh cross-win-x64` does):
#   apt-get install g++-mingw-w64-x86-64-posix wine64
#   cmake -S . -B build/win-x64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/x86_64-w64-mingw32.cmake \
#         -DLLMNATIVE_CUDA=OFF -DLLMNATIVE_BUILD_BENCHMARKS=OFF -DLLMNATIVE_GTEST_SOURCE_DIR=/usr/src/googletest
# The tests then run under Wine (CMAKE_CROSSCOMPILING_EMULATOR): ctest --test-dir build/win-x64.
# Same compiler family as Linux, so the AVX2 / AVX-512 kernels (intrinsics and inline asm) build unchanged.
# The posix thread model: std::thread / std::mutex, which the CPU backend's pool uses. The MinGW-specific
# compile and link options (stack alignment of vector spills, C99 printf, static C++ runtime) are in
# CMakeLists.txt under if(MINGW), so a native MinGW build on Windows gets them too.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR AMD64)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc-posix)
set(CMAKE_CXX_COMPILER x86_64-w64-mingw32-g++-posix)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
find_program(LLMNATIVE_WINE NAMES wine64 wine)
if(LLMNATIVE_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${LLMNATIVE_WINE}")
endif()
