# Cross-compiling win-x64 on an x86-64 Debian/Ubuntu host with MinGW-w64 (what `./build.sh cross-win-x64` does):
#   apt-get install g++-mingw-w64-x86-64-posix wine64
#   cmake -S . -B build/win-x64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/x86_64-w64-mingw32.cmake \
#         -DLLMNATIVE_CUDA=OFF -DLLMNATIVE_BUILD_BENCHMARKS=OFF -DLLMNATIVE_GTEST_SOURCE_DIR=/usr/src/googletest
# The tests then run under Wine (CMAKE_CROSSCOMPILING_EMULATOR): ctest --test-dir build/win-x64.
# Same compiler family as Linux, so the AVX2 / AVX-512 kernels (intrinsics and inline asm) build unchanged.
#  - The posix thread model: std::thread / std::mutex, which the CPU backend's pool uses.
#  - -static: libstdc++, libgcc and winpthread linked in, so llmnative.dll needs only system DLLs.
#  - -Wa,-muse-unaligned-vector-move: the Windows x64 ABI aligns the stack to 16 bytes, and GCC does not
#    realign it for 32/64-byte vector spills (GCC bug 54412); the assembler turns every aligned vector move
#    into its unaligned form, which costs nothing on aligned data and cannot fault on misaligned stack slots.
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
#  - __USE_MINGW_ANSI_STDIO: C99 printf (%zu, %lld) for the error and log messages, not msvcrt's.
set(CMAKE_C_FLAGS_INIT "-Wa,-muse-unaligned-vector-move -D__USE_MINGW_ANSI_STDIO=1")
set(CMAKE_CXX_FLAGS_INIT "-Wa,-muse-unaligned-vector-move -D__USE_MINGW_ANSI_STDIO=1")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
find_program(LLMNATIVE_WINE NAMES wine64 wine)
if(LLMNATIVE_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${LLMNATIVE_WINE}")
endif()
