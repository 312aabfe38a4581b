// The part of libclang's stable C API (clang-c/Index.h) the generator uses. Declared by hand: the
// generator must not depend on a binding generator. Struct layouts follow Index.h exactly.
using System;
using System.Collections.Generic;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace LlmNative.BindingGen;

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXCursor
{
    public CXCursorKind kind;
    public int xdata;
    public void* data0;
    public void* data1;
    public void* data2;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXType
{
    public CXTypeKind kind;
    public void* data0;
    public void* data1;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXString
{
    public void* data;
    public uint private_flags;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXSourceLocation
{
    public void* ptr_data0;
    public void* ptr_data1;
    public uint int_data;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXSourceRange
{
    public void* ptr_data0;
    public void* ptr_data1;
    public uint begin_int_data;
    public uint end_int_data;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXToken
{
    public uint int_data0;
    public uint int_data1;
    public uint int_data2;
    public uint int_data3;
    public void* ptr_data;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXUnsavedFile
{
    public byte* Filename;
    public byte* Contents;
    public CULong Length; // C `unsigned long`: 64-bit on LP64, 32-bit on Windows
}

internal enum CXCursorKind
{
    UnexposedDecl = 1,
    StructDecl = 2,
    UnionDecl = 3,
    EnumDecl = 5,
    FieldDecl = 6,
    EnumConstantDecl = 7,
    FunctionDecl = 8,
    VarDecl = 9,
    ParmDecl = 10,
    TypedefDecl = 20,
    TypeRef = 43,
    UnexposedAttr = 400,
    VisibilityAttr = 417,
    MacroDefinition = 501,
    MacroExpansion = 502,
    InclusionDirective = 503,
}

internal enum CXTypeKind
{
    Invalid = 0,
    Unexposed = 1,
    Void = 2,
    Bool = 3,
    Char_U = 4,
    UChar = 5,
    Char16 = 6,
    Char32 = 7,
    UShort = 8,
    UInt = 9,
    ULong = 10,
    ULongLong = 11,
    UInt128 = 12,
    Char_S = 13,
    SChar = 14,
    WChar = 15,
    Short = 16,
    Int = 17,
    Long = 18,
    LongLong = 19,
    Int128 = 20,
    Float = 21,
    Double = 22,
    LongDouble = 23,
    Pointer = 101,
    Record = 105,
    Enum = 106,
    Typedef = 107,
    FunctionNoProto = 110,
    FunctionProto = 111,
    ConstantArray = 112,
    IncompleteArray = 114,
    Elaborated = 119,
}

internal enum CXTokenKind
{
    Punctuation = 0,
    Keyword = 1,
    Identifier = 2,
    Literal = 3,
    Comment = 4,
}

internal static unsafe partial class LibClang
{
    private const string Lib = "libclang";

    public const uint CXTranslationUnit_DetailedPreprocessingRecord = 0x01;
    public const uint CXTranslationUnit_SkipFunctionBodies = 0x40;
    public const int CXDiagnostic_Error = 3;
    public const int CXCallingConv_C = 1;
    public const int CXChildVisit_Continue = 1;

    /// <summary>Candidate file names/paths, in order. LLMNATIVE_LIBCLANG (a file), when set, is the only one.</summary>
    internal static IReadOnlyList<string> Candidates()
    {
        var list = new List<string>();
        string? env = Environment.GetEnvironmentVariable("LLMNATIVE_LIBCLANG");
        if (!string.IsNullOrWhiteSpace(env)) return new[] { env };
        list.AddRange(new[]
        {
            "libclang-14.so.1", "libclang.so.1", "/usr/lib/llvm-14/lib/libclang.so.1",
            "libclang.so", "libclang.dll", "libclang.dylib",
        });
        return list;
    }

    private static IntPtr s_handle;
    private static string? s_loadedFrom;

    internal static string LoadedFrom => s_loadedFrom ?? "(not loaded)";

    /// <summary>Loads libclang from the first candidate that loads; throws with install advice otherwise.</summary>
    internal static void Load()
    {
        if (s_handle != IntPtr.Zero) return;
        var errors = new List<string>();
        foreach (string candidate in Candidates())
        {
            try
            {
                s_handle = NativeLibrary.Load(candidate);
                s_loadedFrom = candidate;
                break;
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                // .NET puts the loader's own reason (dlerror/LoadLibrary) on the message's last line.
                string reason = e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)[^1];
                errors.Add($"  - {candidate}: {reason}");
            }
        }
        if (s_handle == IntPtr.Zero)
            throw new BindingGenException(
                "libclang could not be loaded. Tried:\n" + string.Join("\n", errors) + "\n" +
                "Install it (Debian/Ubuntu: apt-get install libclang1-14; macOS: brew install llvm; Windows: " +
                "the LLVM installer, then put libclang.dll on PATH) or set LLMNATIVE_LIBCLANG to the library file.");
        NativeLibrary.SetDllImportResolver(typeof(LibClang).Assembly, (name, _, _) => name == Lib ? s_handle : IntPtr.Zero);
    }

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial IntPtr clang_createIndex(int excludeDeclarationsFromPCH, int displayDiagnostics);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_disposeIndex(IntPtr index);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_parseTranslationUnit2(IntPtr index, byte* sourceFilename, byte** commandLineArgs,
        int numCommandLineArgs, CXUnsavedFile* unsavedFiles, uint numUnsavedFiles, uint options, IntPtr* outTu);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_disposeTranslationUnit(IntPtr tu);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_getNumDiagnostics(IntPtr tu);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial IntPtr clang_getDiagnostic(IntPtr tu, uint index);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_getDiagnosticSeverity(IntPtr diagnostic);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXString clang_formatDiagnostic(IntPtr diagnostic, uint options);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_defaultDiagnosticDisplayOptions();

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_disposeDiagnostic(IntPtr diagnostic);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXCursor clang_getTranslationUnitCursor(IntPtr tu);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_visitChildren(CXCursor parent,
        delegate* unmanaged[Cdecl]<CXCursor, CXCursor, IntPtr, int> visitor, IntPtr clientData);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXString clang_getCursorSpelling(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial byte* clang_getCString(CXString str);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_disposeString(CXString str);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getCursorType(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getCursorResultType(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getTypedefDeclUnderlyingType(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getEnumDeclIntegerType(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial long clang_getEnumConstantDeclValue(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getCanonicalType(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getPointeeType(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_Type_getNamedType(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXString clang_getTypeSpelling(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXString clang_getTypedefName(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getArrayElementType(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial long clang_getArraySize(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial long clang_Type_getSizeOf(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial long clang_Type_getAlignOf(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial long clang_Type_getOffsetOf(CXType type, byte* fieldName);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getResultType(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_getNumArgTypes(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXType clang_getArgType(CXType type, uint index);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_isFunctionTypeVariadic(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_getFunctionTypeCallingConv(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_Cursor_getNumArguments(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXCursor clang_Cursor_getArgument(CXCursor cursor, uint index);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXCursor clang_getTypeDeclaration(CXType type);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_isCursorDefinition(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_equalCursors(CXCursor a, CXCursor b);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_Cursor_isMacroFunctionLike(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_Cursor_isBitField(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial uint clang_Cursor_isAnonymous(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXSourceLocation clang_getCursorLocation(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_Location_isFromMainFile(CXSourceLocation location);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_getSpellingLocation(CXSourceLocation location, IntPtr* file, uint* line,
        uint* column, uint* offset);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXSourceRange clang_getCursorExtent(CXCursor cursor);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_tokenize(IntPtr tu, CXSourceRange range, CXToken** tokens, uint* numTokens);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXString clang_getTokenSpelling(IntPtr tu, CXToken token);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial int clang_getTokenKind(CXToken token);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial void clang_disposeTokens(IntPtr tu, CXToken* tokens, uint numTokens);

    [LibraryImport(Lib)] [UnmanagedCallConv(CallConvs = new[] { typeof(CallConvCdecl) })]
    public static partial CXString clang_getClangVersion();

    // ---- small managed conveniences ----

    /// <summary>Copies and disposes a CXString.</summary>
    public static string Take(CXString s)
    {
        try
        {
            byte* p = clang_getCString(s);
            return p == null ? string.Empty : Marshal.PtrToStringUTF8((IntPtr)p) ?? string.Empty;
        }
        finally
        {
            clang_disposeString(s);
        }
    }

    public static string Spelling(CXCursor c) => Take(clang_getCursorSpelling(c));

    public static string Spelling(CXType t) => Take(clang_getTypeSpelling(t));

    /// <summary>Direct children of a cursor, in source order.</summary>
    public static List<CXCursor> Children(CXCursor parent)
    {
        var list = new List<CXCursor>();
        GCHandle gc = GCHandle.Alloc(list);
        try
        {
            clang_visitChildren(parent, &CollectChild, GCHandle.ToIntPtr(gc));
        }
        finally
        {
            gc.Free();
        }
        return list;
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int CollectChild(CXCursor cursor, CXCursor parent, IntPtr clientData)
    {
        // Runs inside libclang, so it must not throw: List.Add on the list handed in by Children cannot fail here.
        ((List<CXCursor>)GCHandle.FromIntPtr(clientData).Target!).Add(cursor);
        return CXChildVisit_Continue;
    }

    /// <summary>"line N" of the cursor's spelling location, for error messages.</summary>
    public static int Line(CXCursor c)
    {
        uint line, column, offset;
        clang_getSpellingLocation(clang_getCursorLocation(c), null, &line, &column, &offset);
        return (int)line;
    }

    public static bool IsFromMainFile(CXCursor c) => clang_Location_isFromMainFile(clang_getCursorLocation(c)) != 0;

    /// <summary>Spellings of the tokens inside a cursor's extent.</summary>
    public static List<(CXTokenKind Kind, string Text)> Tokens(IntPtr tu, CXCursor c)
    {
        var result = new List<(CXTokenKind, string)>();
        CXToken* tokens = null;
        uint count = 0;
        clang_tokenize(tu, clang_getCursorExtent(c), &tokens, &count);
        try
        {
            for (uint i = 0; i < count; i++)
                result.Add(((CXTokenKind)clang_getTokenKind(tokens[i]), Take(clang_getTokenSpelling(tu, tokens[i]))));
        }
        finally
        {
            if (tokens != null) clang_disposeTokens(tu, tokens, count);
        }
        return result;
    }

    public static string Version() => Take(clang_getClangVersion());
}
