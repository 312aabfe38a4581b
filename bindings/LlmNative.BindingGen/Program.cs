// Command line of the binding generator. Exit codes: 0 ok, 1 committed file out of date (check),
// 2 usage error, 3 generation failed (libclang missing or a header construct without a rule).
using System;
using System.IO;

namespace LlmNative.BindingGen;

public static class Program
{
    private const string Usage =
        "usage: LlmNative.BindingGen generate <header.h> <out.cs>\n" +
        "       LlmNative.BindingGen check <header.h> <committed.cs>\n" +
        "\n" +
        "generate  parse the C header with libclang and write the C# binding\n" +
        "check     exit 1 when the committed binding differs from a fresh generation\n" +
        "\n" +
        "libclang is found through LLMNATIVE_LIBCLANG (a file path), then the usual library names.";

    public static int Main(string[] args)
    {
        if (args.Length == 1 && args[0] is "-h" or "--help" or "help")
        {
            Console.WriteLine(Usage);
            return 0;
        }
        if (args.Length != 3 || args[0] is not ("generate" or "check"))
        {
            Console.Error.WriteLine(Usage);
            return 2;
        }
        try
        {
            string generated = Generator.Generate(args[1]);
            return args[0] == "generate" ? Write(args[2], generated) : Check(args[1], args[2], generated);
        }
        catch (BindingGenException e)
        {
            Console.Error.WriteLine("binding generator: " + e.Message);
            return 3;
        }
    }

    private static int Write(string path, string text)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null) Directory.CreateDirectory(dir);
        // Rewrite only on change so incremental builds are not invalidated needlessly.
        if (File.Exists(path) && Generator.Normalize(File.ReadAllText(path)) == text)
        {
            Console.WriteLine($"{path}: up to date");
            return 0;
        }
        File.WriteAllText(path, text);
        Console.WriteLine($"{path}: written");
        return 0;
    }

    private static int Check(string header, string committedPath, string generated)
    {
        if (!File.Exists(committedPath))
        {
            Console.Error.WriteLine($"{committedPath} does not exist; generate it with ./build.sh bindings and commit it.");
            return 1;
        }
        string committed = Generator.Normalize(File.ReadAllText(committedPath));
        if (committed == generated)
        {
            Console.WriteLine($"{committedPath}: matches {header}");
            return 0;
        }
        (int line, string? mine, string? fresh) = Generator.FirstDifference(committed, generated);
        Console.Error.WriteLine(
            $"{committedPath} is out of date with {header}.\n" +
            $"First difference at line {line}:\n" +
            $"  committed: {mine ?? "(end of file)"}\n" +
            $"  generated: {fresh ?? "(end of file)"}\n" +
            "Regenerate with ./build.sh bindings (or: dotnet run --project bindings/LlmNative.BindingGen -- generate " +
            $"{header} {committedPath}) and commit the result.");
        return 1;
    }
}
