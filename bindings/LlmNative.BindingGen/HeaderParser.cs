// Turns the C header into a HeaderModel through libclang. Every C construct is either mapped by an
// explicit rule below or rejected with an error naming the declaration and its line: a binding that
// silently drops or guesses a declaration is worse than no binding.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;

namespace LlmNative.BindingGen;

internal sealed unsafe class HeaderParser
{
    // The header is parsed for one fixed 64-bit target with the freestanding headers below instead of the
    // host's C library, so the output (including NativeLayout) is the same on every machine that runs it.
    private const string TargetTriple = "x86_64-pc-linux-gnu";
    private const string VirtualIncludeDir = "/llmnative-bindgen/include";

    private static readonly (string Name, string Text)[] VirtualHeaders =
    {
        ("stdint.h",
            "#pragma once\n" +
            "typedef __INT8_TYPE__ int8_t;\ntypedef __UINT8_TYPE__ uint8_t;\n" +
            "typedef __INT16_TYPE__ int16_t;\ntypedef __UINT16_TYPE__ uint16_t;\n" +
            "typedef __INT32_TYPE__ int32_t;\ntypedef __UINT32_TYPE__ uint32_t;\n" +
            "typedef __INT64_TYPE__ int64_t;\ntypedef __UINT64_TYPE__ uint64_t;\n" +
            "typedef __INTPTR_TYPE__ intptr_t;\ntypedef __UINTPTR_TYPE__ uintptr_t;\n"),
        ("stddef.h",
            "#pragma once\ntypedef __SIZE_TYPE__ size_t;\ntypedef __PTRDIFF_TYPE__ ptrdiff_t;\n#define NULL ((void*)0)\n"),
    };

    // C typedef name -> (C# type, size in bytes). The only integer types the ABI may use.
    private static readonly Dictionary<string, (string Cs, long Size)> FixedWidth = new()
    {
        ["int8_t"] = ("sbyte", 1), ["uint8_t"] = ("byte", 1),
        ["int16_t"] = ("short", 2), ["uint16_t"] = ("ushort", 2),
        ["int32_t"] = ("int", 4), ["uint32_t"] = ("uint", 4),
        ["int64_t"] = ("long", 8), ["uint64_t"] = ("ulong", 8),
        ["intptr_t"] = ("nint", 8), ["uintptr_t"] = ("nuint", 8),
        ["size_t"] = ("nuint", 8), ["ptrdiff_t"] = ("nint", 8),
    };

    // Element types C# accepts in a fixed-size buffer.
    private static readonly HashSet<string> FixedBufferElements = new()
    {
        "byte", "sbyte", "short", "ushort", "int", "uint", "long", "ulong", "float", "double",
    };

    private readonly string _headerPath;
    private readonly string _headerDisplayName;
    private IntPtr _tu;

    private readonly HeaderModel _model = new();
    private readonly HashSet<string> _handles = new(StringComparer.Ordinal);
    private readonly HashSet<string> _callbacks = new(StringComparer.Ordinal);
    private readonly HashSet<string> _enumNames = new(StringComparer.Ordinal);
    private readonly HashSet<string> _structNames = new(StringComparer.Ordinal);
    // typedef name -> name of the enum/struct it stands for (typedef struct x {...} y; and anonymous ones).
    private readonly Dictionary<string, string> _tagAliases = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (string CsType, decimal Value)> _macroValues = new(StringComparer.Ordinal);

    private HeaderParser(string headerPath, string headerDisplayName)
    {
        _headerPath = headerPath;
        _headerDisplayName = headerDisplayName;
    }

    public static HeaderModel Parse(string headerPath, string headerDisplayName)
    {
        if (!File.Exists(headerPath))
            throw new BindingGenException($"header not found: {headerPath}");
        LibClang.Load();
        return new HeaderParser(Path.GetFullPath(headerPath), headerDisplayName).Run();
    }

    private HeaderModel Run()
    {
        IntPtr index = LibClang.clang_createIndex(0, 0);
        try
        {
            _tu = ParseTranslationUnit(index);
            try
            {
                ReportDiagnostics();
                Build(LibClang.Children(LibClang.clang_getTranslationUnitCursor(_tu)));
                return _model;
            }
            finally
            {
                LibClang.clang_disposeTranslationUnit(_tu);
            }
        }
        finally
        {
            LibClang.clang_disposeIndex(index);
        }
    }

    private IntPtr ParseTranslationUnit(IntPtr index)
    {
        string[] args =
        {
            "-x", "c", "-std=c11", "--target=" + TargetTriple, "-nostdinc", "-I" + VirtualIncludeDir,
        };
        var allocations = new List<IntPtr>();
        byte* Utf8Z(string s)
        {
            IntPtr p = Marshal.StringToCoTaskMemUTF8(s);
            allocations.Add(p);
            return (byte*)p;
        }

        try
        {
            byte** argv = stackalloc byte*[args.Length];
            for (int i = 0; i < args.Length; i++) argv[i] = Utf8Z(args[i]);
            CXUnsavedFile* unsaved = stackalloc CXUnsavedFile[VirtualHeaders.Length];
            for (int i = 0; i < VirtualHeaders.Length; i++)
            {
                unsaved[i] = new CXUnsavedFile
                {
                    Filename = Utf8Z(VirtualIncludeDir + "/" + VirtualHeaders[i].Name),
                    Contents = Utf8Z(VirtualHeaders[i].Text),
                    Length = new CULong((uint)Encoding.UTF8.GetByteCount(VirtualHeaders[i].Text)),
                };
            }
            IntPtr tu;
            int error = LibClang.clang_parseTranslationUnit2(index, Utf8Z(_headerPath), argv, args.Length, unsaved,
                (uint)VirtualHeaders.Length, LibClang.CXTranslationUnit_DetailedPreprocessingRecord |
                LibClang.CXTranslationUnit_SkipFunctionBodies, &tu);
            if (error != 0 || tu == IntPtr.Zero)
                throw new BindingGenException($"libclang could not parse {_headerPath} (CXErrorCode {error}).");
            return tu;
        }
        finally
        {
            foreach (IntPtr p in allocations) Marshal.FreeCoTaskMem(p);
        }
    }

    private void ReportDiagnostics()
    {
        var errors = new List<string>();
        uint count = LibClang.clang_getNumDiagnostics(_tu);
        for (uint i = 0; i < count; i++)
        {
            IntPtr d = LibClang.clang_getDiagnostic(_tu, i);
            try
            {
                string text = LibClang.Take(LibClang.clang_formatDiagnostic(d, LibClang.clang_defaultDiagnosticDisplayOptions()));
                if (LibClang.clang_getDiagnosticSeverity(d) >= LibClang.CXDiagnostic_Error) errors.Add(text);
                else Console.Error.WriteLine("warning from clang: " + text);
            }
            finally
            {
                LibClang.clang_disposeDiagnostic(d);
            }
        }
        if (errors.Count > 0)
            throw new BindingGenException($"{_headerDisplayName} does not compile as C11:\n  " + string.Join("\n  ", errors));
    }

    private BindingGenException Unsupported(CXCursor c, string what) =>
        new($"{_headerDisplayName}:{LibClang.Line(c)}: '{LibClang.Spelling(c)}': {what}. " +
            "Extend bindings/LlmNative.BindingGen (HeaderParser) deliberately or change the declaration.");

    // ------------------------------------------------------------------------------------------
    // Declarations
    // ------------------------------------------------------------------------------------------

    private void Build(List<CXCursor> topLevel)
    {
        var mine = topLevel.Where(LibClang.IsFromMainFile).ToList();

        // Pass 1: names of every type the header declares, so pass 2 can map any use of them.
        foreach (CXCursor c in mine)
        {
            switch (c.kind)
            {
                case CXCursorKind.EnumDecl when LibClang.clang_isCursorDefinition(c) != 0:
                    _enumNames.Add(TagName(c, mine));
                    break;
                case CXCursorKind.StructDecl when LibClang.clang_isCursorDefinition(c) != 0:
                    _structNames.Add(TagName(c, mine));
                    break;
                case CXCursorKind.TypedefDecl:
                    ClassifyTypedef(c);
                    break;
            }
        }

        // Pass 2: everything in header order.
        var seenFunctions = new Dictionary<string, FunctionDecl>(StringComparer.Ordinal);
        foreach (CXCursor c in mine)
        {
            switch (c.kind)
            {
                case CXCursorKind.MacroDefinition:
                    AddMacro(c);
                    break;
                case CXCursorKind.MacroExpansion:
                case CXCursorKind.InclusionDirective:
                    break; // preprocessing records, not declarations
                case CXCursorKind.EnumDecl:
                    if (LibClang.clang_isCursorDefinition(c) != 0) _model.Enums.Add(BuildEnum(c, mine));
                    break;
                case CXCursorKind.StructDecl:
                    // A declaration without a body is the opaque target of a handle typedef.
                    if (LibClang.clang_isCursorDefinition(c) != 0) _model.Structs.Add(BuildStruct(c, mine));
                    break;
                case CXCursorKind.TypedefDecl:
                    string name = LibClang.Spelling(c);
                    if (_callbacks.Contains(name)) _model.Callbacks.Add(BuildCallback(c));
                    else if (_handles.Contains(name)) _model.Handles.Add(name);
                    break;
                case CXCursorKind.FunctionDecl:
                    FunctionDecl f = BuildFunction(c);
                    if (seenFunctions.TryGetValue(f.Name, out FunctionDecl? earlier))
                    {
                        if (Signature(earlier) != Signature(f))
                            throw Unsupported(c, "redeclared with a different signature");
                        break;
                    }
                    seenFunctions.Add(f.Name, f);
                    _model.Functions.Add(f);
                    break;
                case CXCursorKind.UnionDecl:
                    throw Unsupported(c, "unions are not supported by the binding generator");
                case CXCursorKind.VarDecl:
                    throw Unsupported(c, "global variables cannot be bound (export a getter function)");
                default:
                    throw Unsupported(c, $"unsupported top-level construct (cursor kind {(int)c.kind})");
            }
        }
    }

    private static string Signature(FunctionDecl f) =>
        f.ReturnType + "(" + string.Join(",", f.Params.Select(p => p.CsType)) + ")";

    /// <summary>Name of an enum/struct: its tag, or for an anonymous one the typedef that names it.</summary>
    private string TagName(CXCursor decl, List<CXCursor> mine)
    {
        string spelling = LibClang.Spelling(decl);
        if (spelling.Length > 0 && !spelling.Contains("(unnamed", StringComparison.Ordinal) &&
            !spelling.Contains("(anonymous", StringComparison.Ordinal))
            return spelling;
        foreach (CXCursor t in mine.Where(m => m.kind == CXCursorKind.TypedefDecl))
        {
            CXType under = StripElaborated(LibClang.clang_getTypedefDeclUnderlyingType(t));
            if ((under.kind == CXTypeKind.Record || under.kind == CXTypeKind.Enum) &&
                LibClang.clang_equalCursors(LibClang.clang_getTypeDeclaration(under), decl) != 0)
                return LibClang.Spelling(t);
        }
        throw Unsupported(decl, "anonymous enum/struct without a typedef name");
    }

    private void ClassifyTypedef(CXCursor c)
    {
        string name = LibClang.Spelling(c);
        CXType under = StripElaborated(LibClang.clang_getTypedefDeclUnderlyingType(c));
        if (under.kind == CXTypeKind.Pointer)
        {
            CXType pointee = StripElaborated(LibClang.clang_getPointeeType(under));
            if (pointee.kind == CXTypeKind.Record && LibClang.clang_Type_getSizeOf(pointee) < 0)
            {
                _handles.Add(name); // typedef struct x_s* x;  (opaque handle)
                return;
            }
            if (pointee.kind == CXTypeKind.FunctionProto)
            {
                _callbacks.Add(name);
                return;
            }
            if (pointee.kind == CXTypeKind.FunctionNoProto)
                throw Unsupported(c, "function-pointer typedef without a prototype (write (void) for no parameters)");
        }
        if (under.kind == CXTypeKind.Record || under.kind == CXTypeKind.Enum)
        {
            string tag = LibClang.Spelling(LibClang.clang_getTypeDeclaration(under));
            bool anonymous = tag.Length == 0 || tag.Contains("(unnamed", StringComparison.Ordinal) ||
                             tag.Contains("(anonymous", StringComparison.Ordinal);
            if (!anonymous && tag != name) _tagAliases[name] = tag;
        }
        // Any other typedef is an alias: MapType resolves it through its underlying type on use.
    }

    private EnumDecl BuildEnum(CXCursor c, List<CXCursor> mine)
    {
        string name = TagName(c, mine);
        var members = new List<EnumMember>();
        foreach (CXCursor child in LibClang.Children(c))
        {
            if (child.kind != CXCursorKind.EnumConstantDecl)
                throw Unsupported(child, $"unexpected construct inside enum {name}");
            long value = LibClang.clang_getEnumConstantDeclValue(child);
            if (value < int.MinValue || value > int.MaxValue)
                throw Unsupported(child, $"value {value} does not fit the int the ABI passes enums as");
            members.Add(new EnumMember(LibClang.Spelling(child), value));
        }
        if (members.Count == 0) throw Unsupported(c, "empty enum");
        return new EnumDecl(name, members);
    }

    private StructDecl BuildStruct(CXCursor c, List<CXCursor> mine)
    {
        string name = TagName(c, mine);
        CXType type = LibClang.clang_getCursorType(c);
        long size = LibClang.clang_Type_getSizeOf(type);
        long align = LibClang.clang_Type_getAlignOf(type);
        if (size <= 0 || align <= 0) throw Unsupported(c, $"struct has no computable layout (size {size})");

        var fields = new List<FieldDecl>();
        long end = 0;
        foreach (CXCursor f in LibClang.Children(c))
        {
            if (f.kind != CXCursorKind.FieldDecl)
                throw Unsupported(f, $"unexpected construct inside struct {name} (cursor kind {(int)f.kind}; " +
                                     "nested types and attributes such as packed are not supported)");
            if (LibClang.clang_Cursor_isBitField(f) != 0) throw Unsupported(f, "bit-fields are not supported");
            string fieldName = LibClang.Spelling(f);
            if (fieldName.Length == 0) throw Unsupported(f, "anonymous members are not supported");
            CXType ft = LibClang.clang_getCursorType(f);

            long offsetBits;
            byte[] fieldUtf8 = Encoding.UTF8.GetBytes(fieldName + "\0");
            fixed (byte* p = fieldUtf8) offsetBits = LibClang.clang_Type_getOffsetOf(type, p);
            if (offsetBits < 0 || offsetBits % 8 != 0) throw Unsupported(f, $"no byte offset ({offsetBits} bits)");
            long offset = offsetBits / 8;

            // LayoutKind.Sequential reproduces C only when each field sits at the next naturally aligned offset.
            long fAlign = LibClang.clang_Type_getAlignOf(ft), fSize = LibClang.clang_Type_getSizeOf(ft);
            long expected = (end + fAlign - 1) / fAlign * fAlign;
            if (offset != expected)
                throw Unsupported(f, $"offset {offset} differs from the natural offset {expected} (packing or alignment attributes?)");
            end = offset + fSize;

            CXType stripped = StripElaborated(ft);
            if (stripped.kind == CXTypeKind.ConstantArray)
            {
                CXType element = LibClang.clang_getArrayElementType(stripped);
                string elementCs = IsCharKind(StripElaborated(element).kind) ? "byte" : MapType(element, f, TypeUse.Field);
                if (!FixedBufferElements.Contains(elementCs))
                    throw Unsupported(f, $"array of {LibClang.Spelling(element)}: only arrays of primitive types can be bound");
                fields.Add(new FieldDecl(fieldName, elementCs, LibClang.clang_getArraySize(stripped), offset));
            }
            else
            {
                fields.Add(new FieldDecl(fieldName, MapType(ft, f, TypeUse.Field), null, offset));
            }
        }
        if (fields.Count == 0) throw Unsupported(c, "empty struct");
        long expectedSize = (end + align - 1) / align * align;
        if (expectedSize != size) throw Unsupported(c, $"size {size} differs from the natural size {expectedSize}");
        return new StructDecl(name, size, align, fields);
    }

    private FunctionDecl BuildCallback(CXCursor c)
    {
        CXType pointer = StripElaborated(LibClang.clang_getTypedefDeclUnderlyingType(c));
        CXType fn = StripElaborated(LibClang.clang_getPointeeType(pointer));
        CheckFunctionType(c, fn);
        // Parameter names live on the typedef's ParmDecl children.
        List<CXCursor> parms = LibClang.Children(c).Where(k => k.kind == CXCursorKind.ParmDecl).ToList();
        int n = LibClang.clang_getNumArgTypes(fn);
        if (parms.Count != n) throw Unsupported(c, "every callback parameter needs a name");
        var ps = new List<ParamDecl>();
        for (int i = 0; i < n; i++)
            ps.Add(new ParamDecl(ParamName(parms[i], c), MapType(LibClang.clang_getCursorType(parms[i]), parms[i], TypeUse.Parameter)));
        return new FunctionDecl(LibClang.Spelling(c), MapType(LibClang.clang_getResultType(fn), c, TypeUse.Return), ps);
    }

    private FunctionDecl BuildFunction(CXCursor c)
    {
        string name = LibClang.Spelling(c);
        if (!name.StartsWith("llmn_", StringComparison.Ordinal))
            throw Unsupported(c, "exported functions must carry the llmn_ prefix");
        if (LibClang.clang_isCursorDefinition(c) != 0)
            throw Unsupported(c, "a function defined in the header (inline/static) has no export to bind");
        CXType fn = LibClang.clang_getCursorType(c);
        CheckFunctionType(c, fn);
        int n = LibClang.clang_Cursor_getNumArguments(c);
        var ps = new List<ParamDecl>();
        for (int i = 0; i < n; i++)
        {
            CXCursor p = LibClang.clang_Cursor_getArgument(c, (uint)i);
            ps.Add(new ParamDecl(ParamName(p, c), MapType(LibClang.clang_getCursorType(p), p, TypeUse.Parameter)));
        }
        return new FunctionDecl(name, MapType(LibClang.clang_getResultType(fn), c, TypeUse.Return), ps);
    }

    private void CheckFunctionType(CXCursor c, CXType fn)
    {
        if (fn.kind == CXTypeKind.FunctionNoProto)
            throw Unsupported(c, "function without a prototype (write (void) for no parameters)");
        if (fn.kind != CXTypeKind.FunctionProto) throw Unsupported(c, $"not a function type ({LibClang.Spelling(fn)})");
        if (LibClang.clang_isFunctionTypeVariadic(fn) != 0) throw Unsupported(c, "variadic functions cannot be bound");
        if (LibClang.clang_getFunctionTypeCallingConv(fn) != LibClang.CXCallingConv_C)
            throw Unsupported(c, "only the C calling convention is supported");
    }

    private string ParamName(CXCursor p, CXCursor owner)
    {
        string n = LibClang.Spelling(p);
        if (n.Length == 0) throw Unsupported(owner, "every parameter needs a name (it is part of the generated binding)");
        return n;
    }

    // ------------------------------------------------------------------------------------------
    // Types
    // ------------------------------------------------------------------------------------------

    private enum TypeUse { Parameter, Return, Field, Pointee }

    private static CXType StripElaborated(CXType t)
    {
        while (t.kind == CXTypeKind.Elaborated) t = LibClang.clang_Type_getNamedType(t);
        return t;
    }

    private static bool IsCharKind(CXTypeKind k) =>
        k is CXTypeKind.Char_S or CXTypeKind.Char_U or CXTypeKind.SChar or CXTypeKind.UChar;

    /// <summary>The C# spelling of a C type in a given position; throws for anything without an exact rule.</summary>
    private string MapType(CXType t, CXCursor where, TypeUse use)
    {
        t = StripElaborated(t);
        switch (t.kind)
        {
            case CXTypeKind.Typedef:
            {
                string name = LibClang.Take(LibClang.clang_getTypedefName(t));
                if (FixedWidth.TryGetValue(name, out var fw))
                {
                    long size = LibClang.clang_Type_getSizeOf(t);
                    if (size != fw.Size) throw Unsupported(where, $"{name} has size {size}, expected {fw.Size}");
                    return fw.Cs;
                }
                if (_handles.Contains(name) || _callbacks.Contains(name)) return "IntPtr";
                string target = _tagAliases.TryGetValue(name, out string? alias) ? alias : name;
                if (_enumNames.Contains(target) || _structNames.Contains(target)) return target;
                CXCursor decl = LibClang.clang_getTypeDeclaration(t);
                if (!LibClang.IsFromMainFile(decl))
                    throw Unsupported(where, $"type '{name}' is not a fixed-width integer type (int32_t, int64_t, ...)");
                return MapType(LibClang.clang_getTypedefDeclUnderlyingType(decl), where, use); // plain alias
            }
            case CXTypeKind.Enum:
            {
                string name = LibClang.Spelling(LibClang.clang_getTypeDeclaration(t));
                if (_enumNames.Contains(name)) return name;
                throw Unsupported(where, $"enum type '{LibClang.Spelling(t)}' is not declared in the header");
            }
            case CXTypeKind.Record:
            {
                string name = LibClang.Spelling(LibClang.clang_getTypeDeclaration(t));
                if (_structNames.Contains(name)) return name;
                throw Unsupported(where, $"struct '{LibClang.Spelling(t)}' has no definition in the header (use a handle typedef)");
            }
            case CXTypeKind.Pointer:
            {
                CXType pointee = StripElaborated(LibClang.clang_getPointeeType(t));
                if (pointee.kind == CXTypeKind.Void) return "void*";
                if (IsCharKind(pointee.kind))
                {
                    if (pointee.kind == CXTypeKind.SChar) return "sbyte*";
                    return "byte*"; // char* is UTF-8 text or raw bytes
                }
                if (pointee.kind is CXTypeKind.FunctionProto or CXTypeKind.FunctionNoProto)
                    throw Unsupported(where, "raw function-pointer type: declare a typedef for it");
                if (pointee.kind == CXTypeKind.Record && LibClang.clang_Type_getSizeOf(pointee) < 0)
                    throw Unsupported(where, $"pointer to incomplete '{LibClang.Spelling(pointee)}': use its handle typedef");
                return MapType(pointee, where, TypeUse.Pointee) + "*";
            }
            case CXTypeKind.Void:
                if (use is TypeUse.Return or TypeUse.Pointee) return "void";
                throw Unsupported(where, "void is only valid as a return type or behind a pointer");
            case CXTypeKind.Float:
                return "float";
            case CXTypeKind.Double:
                return "double";
            case CXTypeKind.Char_S or CXTypeKind.Char_U or CXTypeKind.SChar or CXTypeKind.UChar:
                throw Unsupported(where, "char outside an array or pointer: use int8_t/uint8_t");
            case CXTypeKind.Bool:
                throw Unsupported(where, "bool has no fixed ABI size: use int32_t");
            case CXTypeKind.ConstantArray or CXTypeKind.IncompleteArray:
                throw Unsupported(where, "arrays are only supported as struct fields of primitive element type");
            default:
                throw Unsupported(where, $"type '{LibClang.Spelling(t)}' is not allowed in the ABI " +
                                         "(use fixed-width integers, float, double, pointers, enums, structs, handles)");
        }
    }

    // ------------------------------------------------------------------------------------------
    // Macros
    // ------------------------------------------------------------------------------------------

    private void AddMacro(CXCursor c)
    {
        string name = LibClang.Spelling(c);
        if (LibClang.clang_Cursor_isMacroFunctionLike(c) != 0)
        {
            _model.SkippedMacros.Add(new SkippedMacro(name, "function-like"));
            return;
        }
        var tokens = LibClang.Tokens(_tu, c);
        // tokens[0] is the macro's own name; the rest is its replacement list.
        var body = tokens.Skip(1).Where(t => t.Kind != CXTokenKind.Comment).Select(t => t.Text).ToList();
        if (body.Count == 0)
        {
            _model.SkippedMacros.Add(new SkippedMacro(name, "empty"));
            return;
        }
        if (!MacroExpression.TryEvaluate(body, _macroValues, out string csType, out decimal value, out string text))
        {
            _model.SkippedMacros.Add(new SkippedMacro(name, "not a numeric constant"));
            return;
        }
        if (!name.StartsWith("LLMN_", StringComparison.Ordinal))
        {
            _model.SkippedMacros.Add(new SkippedMacro(name, "numeric, but without the LLMN_ prefix"));
            return;
        }
        _macroValues[name] = (csType, value);
        _model.Constants.Add(new ConstantDecl(name, csType, text));
    }
}

/// <summary>
/// Evaluates a macro replacement list that is a numeric constant expression: integer and floating
/// literals (with C suffixes), earlier LLMN_ constants, parentheses, unary + - ~, and binary
/// * / % + - &lt;&lt; &gt;&gt; &amp; ^ |. Anything else is "not a numeric constant".
/// </summary>
internal static class MacroExpression
{
    public static bool TryEvaluate(IReadOnlyList<string> tokens, IReadOnlyDictionary<string, (string CsType, decimal Value)> known,
        out string csType, out decimal value, out string text)
    {
        csType = "int";
        value = 0;
        text = "";
        var p = new Parser(tokens, known);
        try
        {
            value = p.Expr(0);
            if (p.Pos != tokens.Count) return false;
        }
        catch (FormatException)
        {
            return false;
        }
        catch (OverflowException)
        {
            return false;
        }
        if (p.IsFloat)
        {
            csType = p.IsSingle ? "float" : "double";
            text = value.ToString(CultureInfo.InvariantCulture) + (p.IsSingle ? "f" : "");
            if (!text.Contains('.') && !p.IsSingle) text += ".0";
            return true;
        }
        if (value != decimal.Truncate(value)) return false;
        if (p.IsUnsigned || value > long.MaxValue)
        {
            if (value < 0) return false;
            csType = value <= uint.MaxValue ? "uint" : "ulong";
        }
        else
        {
            csType = value >= int.MinValue && value <= int.MaxValue ? "int" : "long";
        }
        text = value.ToString(CultureInfo.InvariantCulture);
        return true;
    }

    private sealed class Parser
    {
        private readonly IReadOnlyList<string> _t;
        private readonly IReadOnlyDictionary<string, (string CsType, decimal Value)> _known;
        public int Pos;
        public bool IsFloat, IsSingle, IsUnsigned;

        public Parser(IReadOnlyList<string> tokens, IReadOnlyDictionary<string, (string CsType, decimal Value)> known)
        {
            _t = tokens;
            _known = known;
        }

        private static readonly string[][] Levels =
        {
            new[] { "|" }, new[] { "^" }, new[] { "&" }, new[] { "<<", ">>" }, new[] { "+", "-" }, new[] { "*", "/", "%" },
        };

        private string? Peek => Pos < _t.Count ? _t[Pos] : null;

        public decimal Expr(int level)
        {
            if (level == Levels.Length) return Unary();
            decimal left = Expr(level + 1);
            while (Peek is string op && Array.IndexOf(Levels[level], op) >= 0)
            {
                Pos++;
                decimal right = Expr(level + 1);
                if (IsFloat && level < 4) throw new FormatException("bitwise operator on a floating value");
                left = op switch
                {
                    "|" => (long)left | (long)right,
                    "^" => (long)left ^ (long)right,
                    "&" => (long)left & (long)right,
                    "<<" => (long)left << (int)right,
                    ">>" => (long)left >> (int)right,
                    "+" => left + right,
                    "-" => left - right,
                    "*" => left * right,
                    "/" => IsFloat ? left / right : decimal.Truncate(left / right),
                    _ => left % right,
                };
            }
            return left;
        }

        private decimal Unary()
        {
            string tok = Peek ?? throw new FormatException("unexpected end");
            Pos++;
            switch (tok)
            {
                case "(":
                    decimal v = Expr(0);
                    if (Peek != ")") throw new FormatException("missing )");
                    Pos++;
                    return v;
                case "-": return -Unary();
                case "+": return Unary();
                case "~": return ~(long)Unary();
            }
            if (_known.TryGetValue(tok, out var k))
            {
                if (k.CsType is "float" or "double") IsFloat = true;
                if (k.CsType is "uint" or "ulong") IsUnsigned = true;
                return k.Value;
            }
            return Literal(tok);
        }

        private decimal Literal(string tok)
        {
            if (tok.Length == 0 || !(char.IsDigit(tok[0]) || tok[0] == '.')) throw new FormatException("not a literal");
            string s = tok.ToLowerInvariant();
            bool hex = s.StartsWith("0x", StringComparison.Ordinal);
            if (!hex && (s.Contains('.') || s.Contains('e')))
            {
                IsFloat = true;
                if (s.EndsWith('f')) { IsSingle = true; s = s[..^1]; }
                else if (s.EndsWith('l')) s = s[..^1];
                return decimal.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture);
            }
            while (s.Length > 0 && (s[^1] == 'u' || s[^1] == 'l'))
            {
                if (s[^1] == 'u') IsUnsigned = true;
                s = s[..^1];
            }
            if (hex) return ulong.Parse(s[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
            if (s.Length > 1 && s[0] == '0') return Convert.ToUInt64(s, 8);
            return ulong.Parse(s, NumberStyles.None, CultureInfo.InvariantCulture);
        }
    }
}
