namespace LlmNative.Cli;

internal static class Program
{
    private static int Main(string[] args) => Cli.Run(args, System.Console.Out, System.Console.Error);
}
