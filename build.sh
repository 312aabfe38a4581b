#!/usr/bin/env bash
# LlmNative build driver (Linux/macOS). Same verbs as build.ps1.
#
#   ./build.sh [build]        native library (CMake) + managed solution
#   ./build.sh test           build, check generated bindings, run ctest and dotnet test
#   ./build.sh run [args...]  build, then run the CLI (default: `llmnative info`)
#   ./build.sh bench [args]   build, then run the benchmarks (short configuration); --benchmark_* args go to
#                             the native (Google Benchmark) binary, the rest to tests/LlmNative.Benchmarks
#                             (e.g. --full, --filter '*Int4Gemm*', --job medium; see its Program.cs)
#   ./build.sh pack           NuGet packages into artifacts/
#   ./build.sh bindings       regenerate bindings/generated/NativeMethods.g.cs from the C header
#   ./build.sh sanitize       native build + ctest with AddressSanitizer and UBSan (CUDA off)
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
  say "native: build"
  cmake --build "$build_dir" --parallel "$jobs"
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
    ;;
  run)
    build_native
    build_managed
    [ $# -gt 0 ] || set -- info
    LLMNATIVE_LIBRARY_PATH="$(native_lib)" dotnet run --project "$root/src/LlmNative.Cli" -c "$config" --no-build -- "$@"
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
    build_native
    check_dotnet
    say "pack: NuGet packages into artifacts/"
    mkdir -p "$root/artifacts"
    dotnet pack "$root/LlmNative.sln" -c "$config" -o "$root/artifacts" -nologo -p:LlmNativeNativeDir="$build_dir/lib"
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
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    die "unknown verb '$verb' (try ./build.sh --help)"
    ;;
esac
