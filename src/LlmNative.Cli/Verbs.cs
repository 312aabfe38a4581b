namespace LlmNative.Cli;

/// <summary>
/// The verb table. A new verb (bench, verify, ...) is one entry here plus a class with a Run(Invocation)
/// method; parsing of global options, --help, error reporting and exit codes are shared (Cli.cs).
/// </summary>
internal static class Verbs
{
    public static readonly Verb[] All =
    {
        new("info", "show the native library, its versions, the CPU backend and CUDA status", InfoVerb.Usage, InfoVerb.Run),
        new("verify", "check every kernel on this machine against a float64 reference", VerifyVerb.Usage, VerifyVerb.Run),
        new("bench", "time the kernels at model shapes against the measured memory bandwidth", BenchVerb.Usage, BenchVerb.Run),
        new("inspect", "list (and import, check) the INT4 layers of a GPTQ / AWQ safetensors checkpoint", InspectVerb.Usage, InspectVerb.Run),
    };
}
