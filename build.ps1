# LlmNative build driver (Windows; also works under PowerShell 7 on Linux/macOS). Same verbs as build.sh:
#
#   ./build.ps1 [build]        native library (CMake) + managed solution
#   ./build.ps1 test           build, check generated bindings, run ctest and dotnet test
#   ./build.ps1 run [args...]  build, then run the CLI (default: `llmnative info`)
#   ./build.ps1 bench [args]   build, then run the benchmarks (short configuration)
#   ./build.ps1 pack           NuGet packages into artifacts/
#   ./build.ps1 bindings       regenerate bindings/generated/NativeMethods.g.cs from the C header
#   ./build.ps1 clean          remove build/ and artifacts/
#
# Environment: LLMNATIVE_CUDA=AUTO|ON|OFF (default AUTO), LLMNATIVE_BUILD_DIR (default build/native),
# CONFIG (default Release). The AddressSanitizer pass (`sanitize`) exists in build.sh only.
# NOTE: written alongside build.sh but not yet run on Windows (no Windows machine in CI).
param(
    [Parameter(Position = 0)][string]$Verb = "build",
    [Parameter(Position = 1, ValueFromRemainingArguments = $true)][string[]]$Rest = @()
)
$ErrorActionPreference = "Stop"
$Root = $PSScriptRoot
$Config = if ($env:CONFIG) { $env:CONFIG } else { "Release" }
$BuildDir = if ($env:LLMNATIVE_BUILD_DIR) { $env:LLMNATIVE_BUILD_DIR } else { Join-Path $Root "build/native" }
$Cuda = if ($env:LLMNATIVE_CUDA) { $env:LLMNATIVE_CUDA } else { "AUTO" }
$env:DOTNET_CLI_TELEMETRY_OPTOUT = "1"
$env:DOTNET_NOLOGO = "1"

function Say([string]$m) { Write-Host "==> $m" -ForegroundColor Cyan }
function Die([string]$m) { Write-Error "build.ps1: $m"; exit 1 }
function Need([string]$cmd, [string]$how) {
    if (-not (Get-Command $cmd -ErrorAction SilentlyContinue)) { Die "'$cmd' was not found. $how" }
}
function Invoke-Checked([string]$exe, [string[]]$argv) {
    & $exe @argv
    if ($LASTEXITCODE -ne 0) { Die "$exe $($argv -join ' ') failed with exit code $LASTEXITCODE" }
}

function Get-NativeLib {
    if ($IsWindows -or $env:OS -eq "Windows_NT") {
        foreach ($p in @("lib/$Config/llmnative.dll", "lib/llmnative.dll")) {
            $f = Join-Path $BuildDir $p
            if (Test-Path $f) { return $f }
        }
        return (Join-Path $BuildDir "lib/llmnative.dll")
    }
    if ($IsMacOS) { return (Join-Path $BuildDir "lib/libllmnative.dylib") }
    return (Join-Path $BuildDir "lib/libllmnative.so")
}

function Build-Native {
    Need cmake "Install CMake >= 3.22 (https://cmake.org or 'winget install Kitware.CMake')."
    Say "native: configure ($BuildDir, CUDA=$Cuda, $Config)"
    $gen = @()
    if (Get-Command ninja -ErrorAction SilentlyContinue) { $gen = @("-G", "Ninja") }
    Invoke-Checked cmake (@("-S", $Root, "-B", $BuildDir) + $gen + @("-DCMAKE_BUILD_TYPE=$Config", "-DLLMNATIVE_CUDA=$Cuda"))
    Say "native: build"
    Invoke-Checked cmake @("--build", $BuildDir, "--config", $Config, "--parallel")
}

function Build-Managed {
    Need dotnet "Install the .NET SDK 10 (https://dot.net; see global.json)."
    Say "managed: build"
    Invoke-Checked dotnet @("build", (Join-Path $Root "LlmNative.sln"), "-c", $Config, "-nologo", "-v", "quiet")
}

function Invoke-BindingGen([string]$mode) {
    Need dotnet "Install the .NET SDK 10 (https://dot.net; see global.json)."
    Invoke-Checked dotnet @("run", "--project", (Join-Path $Root "bindings/LlmNative.BindingGen"), "-c", $Config, "--",
        $mode, (Join-Path $Root "native/include/llmnative/llmnative.h"), (Join-Path $Root "bindings/generated/NativeMethods.g.cs"))
}

switch ($Verb) {
    "build" { Build-Native; Build-Managed }
    "test" {
        Build-Native; Build-Managed
        Say "bindings: check generated code against the header"
        Invoke-BindingGen "check"
        Say "native tests (ctest)"
        Push-Location $BuildDir
        try { Invoke-Checked ctest @("--output-on-failure", "-C", $Config, "--timeout", "900") } finally { Pop-Location }
        Say "managed tests (dotnet test)"
        $env:LLMNATIVE_LIBRARY_PATH = Get-NativeLib
        Invoke-Checked dotnet @("test", (Join-Path $Root "LlmNative.sln"), "-c", $Config, "--no-build", "-nologo")
    }
    "run" {
        Build-Native; Build-Managed
        if ($Rest.Count -eq 0) { $Rest = @("info") }
        $env:LLMNATIVE_LIBRARY_PATH = Get-NativeLib
        Invoke-Checked dotnet (@("run", "--project", (Join-Path $Root "src/LlmNative.Cli"), "-c", $Config, "--no-build", "--") + $Rest)
    }
    "bench" {
        Build-Native; Build-Managed
        $env:LLMNATIVE_LIBRARY_PATH = Get-NativeLib
        $bench = Join-Path $Root "tests/LlmNative.Benchmarks"
        if (Test-Path $bench) {
            Invoke-Checked dotnet @("run", "--project", $bench, "-c", "Release", "--", "--job", "short",
                "--artifacts", (Join-Path $Root "artifacts/bench"), "--filter", "*")
        }
    }
    "pack" {
        Build-Native
        Say "pack: NuGet packages into artifacts/"
        Invoke-Checked dotnet @("pack", (Join-Path $Root "LlmNative.sln"), "-c", $Config, "-o", (Join-Path $Root "artifacts"),
            "-nologo", "-p:LlmNativeNativeDir=$(Split-Path (Get-NativeLib))")
    }
    "bindings" { Say "bindings: regenerate"; Invoke-BindingGen "generate" }
    "clean" {
        foreach ($d in @("build", "artifacts")) { $p = Join-Path $Root $d; if (Test-Path $p) { Remove-Item -Recurse -Force $p } }
    }
    { $_ -in @("-h", "--help", "help") } { Get-Content $PSCommandPath | Select-Object -Skip 1 -First 14 | ForEach-Object { $_ -replace '^# ?', '' } }
    default { Die "unknown verb '$Verb' (try ./build.ps1 --help)" }
}
