#!/usr/bin/env bash
# LlmNative build driver (Linux/macOS). Same verbs as build.ps1.
#
#   ./build.sh [build]        native library (CMake) + managed solution
#   ./build.sh test           build, check generated bindings, run ctest and dotnet test, then pack and run
#                             the consumer smoke test (tests/consumer-smoke/run.sh)
#   ./build.sh run [args...]  build, then run the CLI (default: `llmnative info`, then `llmnative bench --quick`)
#   ./build.sh bench [args]   build, then run the benchmarks (short configuration); --benchmark_* args go to
#                             the native (Google Benchmark) binary, the rest to tests/LlmNative.Benchmarks
#                             (e.g. --full, --filter '*Int4Gemm*', --job medium, --paired 15 for paired rounds
#                             instead of BenchmarkDotNet; see its Program.cs)
#   ./build.sh pack           NuGet packages into artifacts/: LlmNative (+ .snupkg), LlmNative.Runtime.<rid> for
#                             each RID with a library in artifacts/native/<rid>/ (this machine's is built and
#                             staged there), LlmNative.Cli (dotnet tool); see docs/packaging.md
#   ./build.sh bindings       regenerate bindings/generated/NativeMethods.g.cs from the C header
#   ./build.sh sanitize       native build + ctest with AddressSanitizer and UBSan (CUDA off)
#   ./build.sh cross-arm64    linux-arm64 library cross-compiled (g++-aarch64-linux-gnu), native tests under
#                             qemu-aarch64-static, staged in artifacts/native/linux-arm64/ for the next pack
#   ./build.sh cross-win-x64  win-x64 llmnative.dll cross-compiled with MinGW-w64 (same AVX2/AVX-512 kernels),
#                             native tests and the C ABI smoke test under Wine, staged in artifacts/native/win-x64/
#   ./build.sh clean          remove build/ and artifacts/
#
# Environment: LLMNATIVE_CUDA=AUTO|ON|OFF (default AUTO), LLMNATIVE_BUILD_DIR (default build/native),
# CONFIG (default Release), LLMNATIVE_JOBS (default: number of cores), LLMNATIVE_CUDA_ARCHITECTURES
# (default sm_80/86/89/90 + compute_90 PTX).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
config="${CONFIG:-Release}"
build_dir="${LLMNATIVE_BUILD_DIR:-$root/build/native}"
cuda="${LLMNATIVE_CUDA:-AUTO}"
jobs="${LLMNATIVE_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

native_lib() {
  case "$(uname -s)" in
    Darwin) echo "$build_dir/lib/libllmnative.dylib" ;;
    *) echo "$build_dir/lib/libllmnative.so" ;;
  esac
}

need() {  # need <command> <how to get it>
  command -v "$1" >/dev/null 2>&1 || die "'$1' was not found. $2"
}

check_native_prereqs() {
  need cmake "Install CMake >= 3.22 (Debian/Ubuntu: apt-get install cmake)."
  need c++ "Install a C++17 compiler (Debian/Ubuntu: apt-get install g++)."
  if [ ! -f /usr/include/gtest/gtest.h ] && [ ! -f /usr/local/include/gtest/gtest.h ]; then
    echo "note: GoogleTest headers not found in /usr/include; if CMake fails, apt-get install libgtest-dev" >&2
  fi
}

check_dotnet() {
  need dotnet "Install the .NET SDK 10 (https://dot.net; see global.json)."
}

# cross_build <verb> <rid> <toolchain file> <library file> <what the tests run under>: configures and builds
# build/<rid> with cmake/toolchains/<toolchain file> (CPU backend, no benchmarks, GoogleTest from source), runs
# ctest there (through the toolchain's CMAKE_CROSSCOMPILING_EMULATOR), and stages the library in
# artifacts/native/<rid>/ for the next pack.
cross_build() {
  local verb="$1" rid="$2" toolchain="$3" lib="$4" tests="$5" dir="$root/build/$2"
  [ -d /usr/src/googletest ] || die "GoogleTest sources not found in /usr/src/googletest (apt-get install googletest)"
  say "$verb: configure ($dir, $config)"
  # shellcheck disable=SC2046
  cmake -S "$root" -B "$dir" $(generator_args) -DCMAKE_BUILD_TYPE="$config" \
    -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchains/$toolchain" -DLLMNATIVE_CUDA=OFF \
    -DLLMNATIVE_BUILD_BENCHMARKS=OFF -DLLMNATIVE_GTEST_SOURCE_DIR=/usr/src/googletest >/dev/null
  cmake --build "$dir" --parallel "$jobs"
  say "$verb: $tests"
  (cd "$dir" && ctest --output-on-failure --timeout 1800 -j "$jobs")
  mkdir -p "$root/artifacts/native/$rid"
  cp -f "$dir/lib/$lib" "$root/artifacts/native/$rid/"
  say "$verb: staged artifacts/native/$rid/$lib (packed by the next ./build.sh pack)"
}

generator_args() {
  if command -v ninja >/dev/null 2>&1; then echo "-G Ninja"; fi
}

build_native() {
  check_native_prereqs
  say "native: configure ($build_dir, CUDA=$cuda, $config)"
  # shellcheck disable=SC2046
  local arch_arg=()
  [ -n "${LLMNATIVE_CUDA_ARCHITECTURES:-}" ] && arch_arg=(-DLLMNATIVE_CUDA_ARCHITECTURES="$LLMNATIVE_CUDA_ARCHITECTURES")
  cmake -S "$root" -B "$build_dir" $(generator_args) -DCMAKE_BUILD_TYPE="$config" -DLLMNATIVE_CUDA="$cuda" \
    "${arch_arg[@]}" "$@" >/dev/null
  say "native: build${native_targets:+ ($native_targets)}"
  # shellcheck disable=SC2086
  cmake --build "$build_dir" --parallel "$jobs" ${native_targets:+--target $native_targets}
}

build_managed() {
  check_dotnet
  say "managed: build"
  dotnet build "$root/LlmNative.sln" -c "$config" -nologo -v quiet
}

check_bindings() {
  check_dotnet
  say "bindings: check generated code against the header"
  dotnet run --project "$root/bindings/LlmNative.BindingGen" -c "$config" -- \
    check "$root/native/include/llmnative/llmnative.h" "$root/bindings/generated/NativeMethods.g.cs"
}

host_rid() {  # the .NET runtime identifier of this machine, e.g. linux-x64
  local os arch
  case "$(uname -s)" in Darwin) os=osx ;; Linux) os=linux ;; *) os="$(uname -s | tr '[:upper:]' '[:lower:]')" ;; esac
  case "$(uname -m)" in x86_64|amd64) arch=x64 ;; aarch64|arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
  echo "$os-$arch"
}

native_file_for_rid() {
  case "$1" in win-*) echo llmnative.dll ;; osx-*) echo libllmnative.dylib ;; *) echo libllmnative.so ;; esac
}

# pack: the native library only (target llmnative), staged as artifacts/native/<rid>/; one runtime package per
# packaging/runtime/<rid>/ project whose library is staged (other RIDs' libraries may be put there beforehand,
# e.g. by a release job); then LlmNative depending on exactly those, and the llmnative tool carrying them.
pack_all() {
  check_dotnet
  local version cmake_version
  version="$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' "$root/Directory.Build.props" | head -n1)"
  cmake_version="$(sed -n 's/^project(LlmNative VERSION \([0-9][0-9.]*\).*/\1/p' "$root/CMakeLists.txt")"
  [ "${version%%[-+]*}" = "$cmake_version" ] || die "version mismatch: Directory.Build.props <Version>$version</Version> but CMakeLists.txt project(LlmNative VERSION $cmake_version); they must agree (the loader refuses a native library of another release)"
  native_targets=llmnative build_native
  local out="$root/artifacts" rid lib
  rid="$(host_rid)"
  lib="$(native_lib)"
  [ -f "$lib" ] || die "the native build did not produce $lib"
  if command -v readelf >/dev/null 2>&1 && readelf -d "$lib" | grep -q 'NEEDED.*libcudart'; then
    die "$lib links the CUDA runtime dynamically (libcudart); the package needs it linked statically"
  fi
  local cuda_note="CUDA backend: unknown (no readelf)"
  if command -v readelf >/dev/null 2>&1; then  # CUDA device code lives in the .nv_fatbin section
    if readelf -SW "$lib" | grep -q '\.nv_fatbin'; then cuda_note="CPU + CUDA backend, CUDA runtime static"; else cuda_note="CPU only"; fi
  fi
  mkdir -p "$out/native/$rid"
  cp -f "$lib" "$out/native/$rid/"
  rm -f "$out"/LlmNative.*.nupkg "$out"/LlmNative.*.snupkg
  # Reproducible packages: file times from the last commit, /_/ source paths in the PDBs (inside a git checkout).
  local props=(-c "$config" -o "$out" -nologo -v quiet)
  if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)}"
    props+=(-p:ContinuousIntegrationBuild=true)
  fi
  local packed=() skipped=() proj r f
  for proj in "$root"/packaging/runtime/*/LlmNative.Runtime.*.csproj; do
    r="$(basename "$(dirname "$proj")")"
    f="$out/native/$r/$(native_file_for_rid "$r")"
    if [ -f "$f" ]; then
      say "pack: LlmNative.Runtime.$r ($f)"
      dotnet pack "$proj" "${props[@]}"
      packed+=("$r")
    else
      skipped+=("$r")
    fi
  done
  [ ${#packed[@]} -gt 0 ] || die "no native library staged under $out/native/<rid>/"
  local rids; rids="$(IFS=';'; echo "${packed[*]}")"
  say "pack: LlmNative (depends on LlmNative.Runtime.{${rids//;/,}} $version exactly)"
  dotnet pack "$root/src/LlmNative/LlmNative.csproj" "${props[@]}" "-p:LlmNativeRuntimeRids=${rids//;/%3B}"
  say "pack: LlmNative.Cli (dotnet tool 'llmnative')"
  dotnet pack "$root/src/LlmNative.Cli/LlmNative.Cli.csproj" "${props[@]}" "-p:LlmNativeRuntimeRids=${rids//;/%3B}"
  say "pack: done — RIDs packed: ${packed[*]} ($rid: $cuda_note)${skipped[*]:+; not packed (no library in artifacts/native/<rid>/): ${skipped[*]}}"
  (cd "$out" && ls -1 LlmNative*."$version".nupkg LlmNative*."$version".snupkg 2>/dev/null | sed 's/^/    /')
}

verb="${1:-build}"
[ $# -gt 0 ] && shift
case "$verb" in
  build)
    build_native
    build_managed
    ;;
  native)
    build_native "$@"
    ;;
  test)
    build_native
    build_managed
    check_bindings
    say "native tests (ctest)"
    (cd "$build_dir" && ctest --output-on-failure --timeout 900 -j "$jobs")
    say "managed tests (dotnet test)"
    LLMNATIVE_LIBRARY_PATH="$(native_lib)" dotnet test "$root/LlmNative.sln" -c "$config" --no-build -nologo \
      --logger "console;verbosity=normal"
    pack_all
    say "consumer smoke test (packages from artifacts/ in a fresh project)"
    bash "$root/tests/consumer-smoke/run.sh"
    ;;
  run)
    build_native
    build_managed
    cli() { LLMNATIVE_LIBRARY_PATH="$(native_lib)" dotnet run --project "$root/src/LlmNative.Cli" -c "$config" --no-build -- "$@"; }
    if [ $# -gt 0 ]; then
      cli "$@"
    else
      # The README's main command: what the library finds on this machine, then the kernels timed on the
      # default backend (CUDA when usable, else the CPU) with a short sampling.
      cli info
      cli bench --quick
    fi
    ;;
  bench)
    build_native
    build_managed
    mkdir -p "$root/artifacts/bench"
    native_args=() managed_args=()
    for a in "$@"; do
      case "$a" in --benchmark_*) native_args+=("$a") ;; *) managed_args+=("$a") ;; esac
    done
    if [ -x "$build_dir/native/bench/llmnative_bench" ]; then
      say "native benchmarks (Google Benchmark, short)"
      "$build_dir/native/bench/llmnative_bench" --benchmark_min_time=0.05 \
        --benchmark_out="$root/artifacts/bench/native.json" --benchmark_out_format=json ${native_args[@]+"${native_args[@]}"}
    fi
    if [ -d "$root/tests/LlmNative.Benchmarks" ]; then
      say "managed benchmarks (BenchmarkDotNet, short unless --full / --job)"
      LLMNATIVE_LIBRARY_PATH="$(native_lib)" dotnet run --project "$root/tests/LlmNative.Benchmarks" -c Release -- \
        --job short --artifacts "$root/artifacts/bench" --filter '*' ${managed_args[@]+"${managed_args[@]}"}
    fi
    ;;
  pack)
    pack_all
    ;;
  cross-arm64)
    # linux-arm64 from this x86-64 host: cross-compiled (CPU backend: scalar kernels), the native tests run
    # under qemu-user, and the library is staged as artifacts/native/linux-arm64/ for the next `pack`.
    check_native_prereqs
    need aarch64-linux-gnu-g++ "Install the cross compiler (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu)."
    need qemu-aarch64-static "Install qemu-user (Debian/Ubuntu: apt-get install qemu-user-static)."
    cross_build cross-arm64 linux-arm64 aarch64-linux-gnu.cmake libllmnative.so "native tests under qemu-aarch64"
    ;;
  cross-win-x64)
    # win-x64 from this x86-64 host: MinGW-w64 (GCC, so the SIMD kernels and their inline asm build as on
    # Linux; libstdc++/winpthread linked statically: the DLL needs only KERNEL32 and msvcrt), tests under Wine.
    check_native_prereqs
    need x86_64-w64-mingw32-g++-posix "Install MinGW-w64 (Debian/Ubuntu: apt-get install g++-mingw-w64-x86-64-posix)."
    command -v wine64 >/dev/null 2>&1 || command -v wine >/dev/null 2>&1 ||
      die "'wine' was not found. Install it (Debian/Ubuntu: apt-get install wine64)."
    # One persistent Wine server for the whole verb (with a server that exits when idle, a test process that
    # connects while it is shutting down dies with "recvmsg: Connection reset by peer"), started once, alone
    # and detached from our output: the first start also starts Wine's services (and sets up the prefix),
    # which inherit the starting process's stdout; started by the build's test discovery they kept its pipe
    # open, and two tests starting Wine at once could hang.
    wine_server="$(command -v wineserver || true)"
    if [ -n "$wine_server" ]; then
      "$wine_server" -p </dev/null >/dev/null 2>&1 || true
      trap '"$wine_server" -k </dev/null >/dev/null 2>&1 || true' EXIT
    fi
    WINEDEBUG=-all "$(command -v wine64 || command -v wine)" cmd /c exit </dev/null >/dev/null 2>&1 || true
    export WINEDEBUG="${WINEDEBUG:--all}"
    cross_build cross-win-x64 win-x64 x86_64-w64-mingw32.cmake llmnative.dll "native tests and the C ABI smoke test under Wine"
    ;;
  bindings)
    check_dotnet
    say "bindings: regenerate from native/include/llmnative/llmnative.h"
    dotnet run --project "$root/bindings/LlmNative.BindingGen" -c "$config" -- \
      generate "$root/native/include/llmnative/llmnative.h" "$root/bindings/generated/NativeMethods.g.cs"
    ;;
  sanitize)
    check_native_prereqs
    san_dir="$root/build/sanitize"
    say "sanitize: ASan + UBSan native build ($san_dir, CUDA off)"
    # shellcheck disable=SC2046
    cmake -S "$root" -B "$san_dir" $(generator_args) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLMNATIVE_CUDA=OFF \
      -DLLMNATIVE_SANITIZE=ON -DLLMNATIVE_BUILD_BENCHMARKS=OFF >/dev/null
    cmake --build "$san_dir" --parallel "$jobs"
    (cd "$san_dir" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      LLMNATIVE_TEST_QUICK=1 ctest --output-on-failure --timeout 900 -j "$jobs")
    ;;
  clean)
    rm -rf "$root/build" "$root/artifacts"
    ;;
  -h|--help|help)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    die "unknown verb '$verb' (try ./build.sh --help)"
    ;;
esac
