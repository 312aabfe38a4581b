# LlmNative build driver (Windows; also works under PowerShell 7 on Linux/macOS). Same verbs as build.sh:
#
#   ./build.ps1 [build]        native library (CMake) + managed solution
#   ./build.ps1 test           build, check generated bindings, run ctest and dotnet test, then pack and (where
#                              bash exists and the OS is not Windows) run tests/consumer-smoke/run.sh
#   ./build.ps1 run [args...]  build, then run the CLI (default: `llmnative info`, then `llmnative bench --quick`)
#   ./build.ps1 bench [args]   build, then run the benchmarks (short configuration)
#   ./build.ps1 pack           NuGet packages into artifacts/: LlmNative, LlmNative.Runtime.<rid> for each RID with
#                              a library in artifacts/native/<rid>/ (this machine's is built and staged there),
#                              LlmNative.Cli; see docs/packaging.md
#   ./build.ps1 bindings       regenerate bindings/generated/NativeMethods.g.cs from the C header
#   ./build.ps1 clean          remove build/ and artifacts/
#
# Environment: LLMNATIVE_CUDA=AUTO|ON|OFF (default AUTO), LLMNATIVE_BUILD_DIR (default build/native),
# CONFIG (default Release). The AddressSanitizer pass (`sanitize`) and the linux-arm64 cross build
# (`cross-arm64`) exist in build.sh only.
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

function Build-Native([string]$Target = "") {
    Need cmake "Install CMake >= 3.22 (https://cmake.org or 'winget install Kitware.CMake')."
    Say "native: configure ($BuildDir, CUDA=$Cuda, $Config)"
    $gen = @()
    if (Get-Command ninja -ErrorAction SilentlyContinue) { $gen = @("-G", "Ninja") }
    Invoke-Checked cmake (@("-S", $Root, "-B", $BuildDir) + $gen + @("-DCMAKE_BUILD_TYPE=$Config", "-DLLMNATIVE_CUDA=$Cuda"))
    Say "native: build"
    $targetArgs = @()
    if ($Target) { $targetArgs = @("--target", $Target) }
    Invoke-Checked cmake (@("--build", $BuildDir, "--config", $Config, "--parallel") + $targetArgs)
}

function Get-HostRid {
    $os = if ($IsWindows -or $env:OS -eq "Windows_NT") { "win" } elseif ($IsMacOS) { "osx" } else { "linux" }
    $arch = [System.Runtime.InteropServices.RuntimeInformation]::OSArchitecture.ToString().ToLowerInvariant()
    return "$os-$arch"
}

function Get-NativeFileName([string]$rid) {
    if ($rid -like "win-*") { return "llmnative.dll" }
    if ($rid -like "osx-*") { return "libllmnative.dylib" }
    return "libllmnative.so"
}

# Same steps as build.sh's pack_all: native library only, staged as artifacts/native/<rid>/; a runtime package
# for each packaging/runtime/<rid>/ whose library is staged; LlmNative depending on exactly those; the tool.
function Invoke-Pack {
    Need dotnet "Install the .NET SDK 10 (https://dot.net; see global.json)."
    $version = (Select-Xml -Path (Join-Path $Root "Directory.Build.props") -XPath "//Version" | Select-Object -First 1).Node.InnerText
    $cmakeVersion = [regex]::Match((Get-Content (Join-Path $Root "CMakeLists.txt") -Raw), 'project\(LlmNative VERSION ([0-9.]+)').Groups[1].Value
    if ((($version -split '[-+]')[0]) -ne $cmakeVersion) {
        Die "version mismatch: Directory.Build.props <Version>$version</Version> but CMakeLists.txt project(LlmNative VERSION $cmakeVersion); they must agree"
    }
    Build-Native "llmnative"
    $rid = Get-HostRid
    $lib = Get-NativeLib
    if (-not (Test-Path $lib)) { Die "the native build did not produce $lib" }
    $out = Join-Path $Root "artifacts"
    $stage = Join-Path $out "native/$rid"
    New-Item -ItemType Directory -Force -Path $stage | Out-Null
    Copy-Item $lib $stage -Force
    Get-ChildItem $out -File | Where-Object { $_.Name -like "LlmNative.*.nupkg" -or $_.Name -like "LlmNative.*.snupkg" } | Remove-Item -Force
    $props = @("-c", $Config, "-o", $out, "-nologo", "-v", "quiet")
    if (Get-Command git -ErrorAction SilentlyContinue) {
        $commitTime = & git -C $Root log -1 --format=%ct 2>$null
        if ($LASTEXITCODE -eq 0 -and $commitTime) {
            if (-not $env:SOURCE_DATE_EPOCH) { $env:SOURCE_DATE_EPOCH = $commitTime }
            $props += "-p:ContinuousIntegrationBuild=true"
        }
    }
    $packed = @(); $skipped = @()
    foreach ($proj in Get-ChildItem (Join-Path $Root "packaging/runtime") -Recurse -Filter "LlmNative.Runtime.*.csproj") {
        $r = $proj.Directory.Name
        $f = Join-Path $out "native/$r/$(Get-NativeFileName $r)"
        if (Test-Path $f) {
            Say "pack: LlmNative.Runtime.$r ($f)"
            Invoke-Checked dotnet (@("pack", $proj.FullName) + $props)
            $packed += $r
        } else { $skipped += $r }
    }
    if ($packed.Count -eq 0) { Die "no native library staged under $out/native/<rid>/" }
    $rids = "-p:LlmNativeRuntimeRids=" + ($packed -join "%3B")
    Say "pack: LlmNative (depends on LlmNative.Runtime.{$($packed -join ',')} $version exactly)"
    Invoke-Checked dotnet (@("pack", (Join-Path $Root "src/LlmNative/LlmNative.csproj")) + $props + @($rids))
    Say "pack: LlmNative.Cli (dotnet tool 'llmnative')"
    Invoke-Checked dotnet (@("pack", (Join-Path $Root "src/LlmNative.Cli/LlmNative.Cli.csproj")) + $props + @($rids))
    $note = if ($skipped.Count -gt 0) { "; not packed (no library in artifacts/native/<rid>/): $($skipped -join ' ')" } else { "" }
    Say "pack: done - RIDs packed: $($packed -join ' ')$note"
    Get-ChildItem $out -File | Where-Object { $_.Name -like "LlmNative*.$version.*nupkg" } | ForEach-Object { Write-Host "    $($_.Name)" }
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
        Remove-Item Env:LLMNATIVE_LIBRARY_PATH
        Invoke-Pack
        if (-not ($IsWindows -or $env:OS -eq "Windows_NT") -and (Get-Command bash -ErrorAction SilentlyContinue)) {
            Say "consumer smoke test (packages from artifacts/ in a fresh project)"
            Invoke-Checked bash @((Join-Path $Root "tests/consumer-smoke/run.sh"))
        } else {
            Write-Host "consumer smoke test: skipped on Windows (tests/consumer-smoke/run.sh is a bash script); packages are in artifacts/"
        }
    }
    "run" {
        Build-Native; Build-Managed
        $env:LLMNATIVE_LIBRARY_PATH = Get-NativeLib
        $cli = @("run", "--project", (Join-Path $Root "src/LlmNative.Cli"), "-c", $Config, "--no-build", "--")
        if ($Rest.Count -gt 0) {
            Invoke-Checked dotnet ($cli + $Rest)
        } else {
            # The README's main command: info, then the kernels timed on the default backend (short sampling).
            Invoke-Checked dotnet ($cli + @("info"))
            Invoke-Checked dotnet ($cli + @("bench", "--quick"))
        }
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
    "pack" { Invoke-Pack }
    "bindings" { Say "bindings: regenerate"; Invoke-BindingGen "generate" }
    "clean" {
        foreach ($d in @("build", "artifacts")) { $p = Join-Path $Root $d; if (Test-Path $p) { Remove-Item -Recurse -Force $p } }
    }
    { $_ -in @("-h", "--help", "help") } { Get-Content $PSCommandPath | Select-Object -Skip 1 -First 18 | ForEach-Object { $_ -replace '^# ?', '' } }
    default { Die "unknown verb '$Verb' (try ./build.ps1 --help)" }
}
