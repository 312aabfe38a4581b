// Entry point shared by the command line and the tests: header path in, generated C# text out.
using System;
using System.IO;

namespace LlmNative.BindingGen;

public static class Generator
{
    /// <summary>Parses <paramref name="headerPath"/> and returns the generated C# source ('\n' line endings).</summary>
    public static string Generate(string headerPath)
    {
        string display = DisplayName(headerPath);
        HeaderModel model = HeaderParser.Parse(headerPath, display);
        return CSharpEmitter.Emit(model, display);
    }

    /// <summary>Line endings normalized to '\n', so a checkout with CRLF conversion still compares equal.</summary>
    public static string Normalize(string text) => text.Replace("\r\n", "\n");

    /// <summary>1-based line number of the first line that differs, with both versions of it (null past the end).</summary>
    public static (int Line, string? A, string? B) FirstDifference(string a, string b)
    {
        string[] la = a.Split('\n'), lb = b.Split('\n');
        for (int i = 0; i < Math.Max(la.Length, lb.Length); i++)
        {
            string? x = i < la.Length ? la[i] : null, y = i < lb.Length ? lb[i] : null;
            if (x != y) return (i + 1, x, y);
        }
        return (0, null, null);
    }

    /// <summary>The header's path relative to the repository root (found by walking up to LlmNative.sln or .git),
    /// with '/' separators, so the output does not depend on where the repository is checked out.</summary>
    internal static string DisplayName(string headerPath)
    {
        string full = Path.GetFullPath(headerPath);
        for (string? dir = Path.GetDirectoryName(full); dir != null; dir = Path.GetDirectoryName(dir))
        {
            if (File.Exists(Path.Combine(dir, "LlmNative.sln")) || Directory.Exists(Path.Combine(dir, ".git")))
                return Path.GetRelativePath(dir, full).Replace('\\', '/');
        }
        return Path.GetFileName(full);
    }
}
