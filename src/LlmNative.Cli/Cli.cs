// Command-line front end: global options, then a verb from the table in Verbs.cs. Exit codes:
// 0 success, 1 the operation failed (message on stderr), 2 usage error.
using System;
using System.IO;
using System.Linq;
using LlmNative.Development;

namespace LlmNative.Cli;

/// <summary>A usage error: bad option or verb. Printed with a pointer to --help; exit code 2.</summary>
internal sealed class UsageException : Exception
{
    public UsageException(string message) : base(message)
    {
    }
}

/// <summary>Options accepted before the verb.</summary>
internal sealed class GlobalOptions
{
    public string? LibraryPath { get; set; }

    public bool Verbose { get; set; }

    /// <summary>Set when no path was configured and the repository's own build was used (DevLibraryLocator).</summary>
    public string? RepositoryBuildPath { get; set; }
}

/// <summary>What a verb receives: its own arguments, the output streams and the global options.</summary>
internal sealed record Invocation(string[] Args, TextWriter Out, TextWriter Error, GlobalOptions Options);

/// <summary>One verb of the table: name, one-line summary, usage text (options), and the code that runs it.</summary>
internal sealed record Verb(string Name, string Summary, string Usage, Func<Invocation, int> Run);

internal static class Cli
{
    public const int Ok = 0, Failed = 1, UsageError = 2;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var options = new GlobalOptions();
        int i = 0;
        try
        {
            for (; i < args.Length && args[i].StartsWith('-'); i++)
            {
                switch (args[i])
                {
                    case "-h" or "--help":
                        stdout.Write(RootHelp());
                        return Ok;
                    case "--version":
                        stdout.WriteLine(LlmNativeInfo.ManagedVersion);
                        return Ok;
                    case "-v" or "--verbose":
                        options.Verbose = true;
                        break;
                    case "--library":
                        if (++i >= args.Length) throw new UsageException("--library needs a path");
                        options.LibraryPath = args[i];
                        break;
                    default:
                        throw new UsageException($"unknown option '{args[i]}'");
                }
            }
            if (i == args.Length) throw new UsageException("no verb given");

            string name = args[i];
            Verb? verb = Verbs.All.FirstOrDefault(v => v.Name == name);
            if (verb is null) throw new UsageException($"unknown verb '{name}'");
            string[] rest = args.Skip(i + 1).ToArray();
            if (rest.Any(a => a is "-h" or "--help"))
            {
                stdout.Write(VerbHelp(verb));
                return Ok;
            }

            Configure(options, stderr);
            return verb.Run(new Invocation(rest, stdout, stderr, options));
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"llmnative: {e.Message}");
            stderr.WriteLine("Run 'llmnative --help' for the verbs and options.");
            return UsageError;
        }
        catch (Exception e) when (e is LlmNativeException or DllNotFoundException or InvalidOperationException
                                      or ArgumentException or IOException or InvalidDataException or NotSupportedException)
        {
            stderr.WriteLine($"llmnative: {e.Message}");
            if (options.Verbose) stderr.WriteLine(e);
            return Failed;
        }
    }

    /// <summary>Library path (explicit, else the repository build when run from a checkout) and logging.</summary>
    private static void Configure(GlobalOptions options, TextWriter stderr)
    {
        if (options.LibraryPath != null) LlmNativeLibrary.SetLibraryPath(options.LibraryPath);
        else options.RepositoryBuildPath = DevLibraryLocator.UseRepositoryBuildIfUnconfigured(AppContext.BaseDirectory);
        if (options.Verbose) LlmNativeRuntime.SetLogger(new TextWriterLogger(stderr));
    }

    internal static string RootHelp()
    {
        var w = new StringWriter();
        w.WriteLine("llmnative — LlmNative's command-line tool");
        w.WriteLine();
        w.WriteLine("Usage: llmnative [options] <verb> [verb options]");
        w.WriteLine();
        w.WriteLine("Verbs:");
        foreach (Verb v in Verbs.All) w.WriteLine($"  {v.Name,-10} {v.Summary}");
        w.WriteLine();
        w.WriteLine("Options:");
        w.WriteLine("  --library <path>  native library file (or folder) to load; default: LLMNATIVE_LIBRARY_PATH,");
        w.WriteLine("                    then the package's runtimes/<rid>/native, then the system search");
        w.WriteLine("  -v, --verbose     print native log lines (debug and above) to stderr");
        w.WriteLine("  --version         print the LlmNative version");
        w.WriteLine("  -h, --help        show this help ('llmnative <verb> --help' for a verb)");
        w.WriteLine();
        w.WriteLine("Exit codes: 0 success, 1 failure, 2 usage error.");
        return w.ToString();
    }

    internal static string VerbHelp(Verb verb) =>
        $"llmnative {verb.Name} — {verb.Summary}{Environment.NewLine}{Environment.NewLine}{verb.Usage}";
}
