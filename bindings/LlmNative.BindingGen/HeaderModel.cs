// What the parser extracts from the header, already in C# terms. The emitter only prints it, so
// every decision about a C construct is made (or refused) in one place: HeaderParser.
using System;
using System.Collections.Generic;

namespace LlmNative.BindingGen;

/// <summary>An object-like macro with a numeric value: <c>public const CsType Name = Value;</c>.</summary>
internal sealed record ConstantDecl(string Name, string CsType, string Value);

/// <summary>A C enum, emitted as <c>public enum Name : int</c> with its constants verbatim.</summary>
internal sealed record EnumDecl(string Name, IReadOnlyList<EnumMember> Members);

internal sealed record EnumMember(string Name, long Value);

/// <summary>A struct field. <see cref="FixedLength"/> is set for <c>T name[N]</c> (emitted as a fixed buffer).</summary>
internal sealed record FieldDecl(string Name, string CsType, long? FixedLength, long Offset);

internal sealed record StructDecl(string Name, long Size, long Alignment, IReadOnlyList<FieldDecl> Fields);

internal sealed record ParamDecl(string Name, string CsType);

/// <summary>An exported function, or (for <see cref="HeaderModel.Callbacks"/>) a function-pointer typedef.</summary>
internal sealed record FunctionDecl(string Name, string ReturnType, IReadOnlyList<ParamDecl> Params);

/// <summary>A macro that produces no C# (include guard, attribute macro...), kept so the output says so.</summary>
internal sealed record SkippedMacro(string Name, string Reason);

internal sealed class HeaderModel
{
    public List<ConstantDecl> Constants { get; } = new();
    public List<EnumDecl> Enums { get; } = new();
    public List<StructDecl> Structs { get; } = new();
    public List<FunctionDecl> Callbacks { get; } = new();
    public List<FunctionDecl> Functions { get; } = new();
    public List<string> Handles { get; } = new();
    public List<SkippedMacro> SkippedMacros { get; } = new();
}

/// <summary>A failure the user must act on (bad header construct, missing libclang); printed without a stack trace.</summary>
internal sealed class BindingGenException : Exception
{
    public BindingGenException(string message) : base(message) { }
}
