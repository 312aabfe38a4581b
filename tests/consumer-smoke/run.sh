#!/usr/bin/env bash
# Consumer smoke test of the NuGet packages in artifacts/ (./build.sh test runs it after the other tests).
#
# Creates a console project in a fresh temporary folder outside the repository, with a nuget.config whose
# only sources are artifacts/ (for LlmNative*, by package source mapping) and the public feed (everything
# else), and an empty NUGET_PACKAGES cache so no previously cached LlmNative of the same version can be used.
# It adds `LlmNative` (one reference: the native library must arrive through LlmNative.Runtime.<rid>), runs
# Program.cs (INT4 GEMM and decode attention against float64 references) with LLMNATIVE_LIBRARY_PATH unset,
# then does the same from a RID-specific `dotnet publish` folder, and runs `llmnative info` from the tool package.
#
# Packs first (./build.sh pack) when artifacts/ has no LlmNative package of the current version, or always
# with --pack. Environment: LLMNATIVE_SMOKE_FEED (default https://api.nuget.org/v3/index.json),
# LLMNATIVE_SMOKE_KEEP=1 keeps the temporary folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
artifacts="$root/artifacts"
feed="${LLMNATIVE_SMOKE_FEED:-https://api.nuget.org/v3/index.json}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
start=$(date +%s)

say() { printf '\033[1m==> consumer smoke: %s\033[0m\n' "$*"; }
die() { printf 'consumer smoke: FAILED: %s\n' "$*" >&2; exit 1; }

version="$(sed -n 's:.*<Version>\(.*\)</Version>.*:\1:p' "$root/Directory.Build.props" | head -n1)"
[ -n "$version" ] || die "no <Version> in $root/Directory.Build.props"
if [ "${1:-}" = "--pack" ] || [ ! -f "$artifacts/LlmNative.$version.nupkg" ]; then
  say "packing first (./build.sh pack)"
  "$root/build.sh" pack
fi
[ -f "$artifacts/LlmNative.$version.nupkg" ] || die "$artifacts/LlmNative.$version.nupkg was not produced"
runtime_pkgs=("$artifacts"/LlmNative.Runtime.*."$version".nupkg)
[ -f "${runtime_pkgs[0]}" ] || die "no LlmNative.Runtime.<rid>.$version.nupkg in $artifacts"

# The native library must come from the runtime package: nothing may point elsewhere.
unset LLMNATIVE_LIBRARY_PATH LLMNATIVE_BUILD_DIR LD_LIBRARY_PATH

tmp="$(mktemp -d "${TMPDIR:-/tmp}/llmnative-smoke.XXXXXX")"
tmp="$(cd "$tmp" && pwd -P)"
case "$tmp/" in "$root"/*) rm -rf "$tmp"; die "the temporary folder $tmp is inside the repository; set TMPDIR elsewhere" ;; esac
cleanup() {
  if [ "${LLMNATIVE_SMOKE_KEEP:-0}" = 1 ]; then echo "consumer smoke: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
export NUGET_PACKAGES="$tmp/nuget-packages"

cat > "$tmp/nuget.config" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="llmnative-artifacts" value="$artifacts" />
    <add key="upstream" value="$feed" />
  </packageSources>
  <packageSourceMapping>
    <packageSource key="llmnative-artifacts">
      <package pattern="LlmNative" />
      <package pattern="LlmNative.*" />
    </packageSource>
    <packageSource key="upstream">
      <package pattern="*" />
    </packageSource>
  </packageSourceMapping>
</configuration>
EOF

cd "$tmp"
say "fresh console project in $tmp (LlmNative $version from $artifacts)"
dotnet new console --name SmokeApp --output app --framework net10.0 --no-restore >/dev/null
dotnet add app/SmokeApp.csproj package LlmNative --version "$version" >/dev/null \
  || die "dotnet add package LlmNative --version $version failed (see the restore errors above)"
cp "$here/Program.cs" app/Program.cs

say "dotnet run (portable build: runtimes/<rid>/native/ under bin/)"
dotnet build app/SmokeApp.csproj -c Release -nologo -v quiet -o "$tmp/out" >/dev/null \
  || { dotnet build app/SmokeApp.csproj -c Release -nologo -v minimal -o "$tmp/out"; die "the consumer project does not build"; }
log="$tmp/run.log"
dotnet "$tmp/out/SmokeApp.dll" | tee "$log" || die "the portable build failed (output above)"
grep -q "(RuntimesFolder)" "$log" || die "the portable build did not load runtimes/<rid>/native/ from the package"
grep -q "^consumer smoke: OK$" "$log" || die "no 'consumer smoke: OK' line"

rid="$(dotnet --info | sed -n 's/^ *RID: *//p' | head -n1)"
say "dotnet publish -r $rid (native library next to the application)"
dotnet publish app/SmokeApp.csproj -c Release -r "$rid" --self-contained false -nologo -v quiet -o "$tmp/publish" >/dev/null \
  || die "dotnet publish -r $rid failed"
"$tmp/publish/SmokeApp" | tee "$log" || die "the published application failed (output above)"
grep -q "(ApplicationFolder)" "$log" || die "the published application did not load the library from its own folder"
grep -q "^consumer smoke: OK$" "$log" || die "no 'consumer smoke: OK' line"

if [ -f "$artifacts/LlmNative.Cli.$version.nupkg" ]; then
  say "dotnet tool install LlmNative.Cli; llmnative info"
  dotnet tool install LlmNative.Cli --version "$version" --tool-path "$tmp/tools" >/dev/null || die "dotnet tool install LlmNative.Cli failed"
  "$tmp/tools/llmnative" info | tee "$log" || die "llmnative info failed (output above)"
  grep -q "native library *$tmp/tools/" "$log" || die "llmnative info did not load the library shipped in the tool package"
fi

say "passed in $(( $(date +%s) - start ))s"
