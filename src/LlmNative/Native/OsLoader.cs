// The operating system's own loader (dlopen / LoadLibrary). netstandard2.0 has no NativeLibrary class,
// so there the library is loaded through these before the first P/Invoke; the runtime's DllImport
// lookup of "llmnative" then finds the already-loaded module by its name. Compiled on every target
// so the tests exercise it.
using System;
using System.ComponentModel;
using System.Runtime.InteropServices;
using System.Text;

namespace LlmNative;

internal static unsafe class OsLoader
{
    private const int RTLD_NOW = 2;

    private static bool IsWindows => RuntimeInformation.IsOSPlatform(OSPlatform.Windows);

    /// <summary>Loads a library by path (or bare name for the system search); zero and a reason on failure.</summary>
    public static IntPtr Load(string pathOrName, out string? error)
    {
        error = null;
        if (IsWindows)
        {
            IntPtr h = Kernel32.LoadLibraryW(pathOrName);
            if (h == IntPtr.Zero) error = new Win32Exception(Marshal.GetLastWin32Error()).Message;
            return h;
        }
        byte[] name = Utf8Z(pathOrName);
        // Binds the dlerror stub now and clears stale state: binding it after a failed dlopen would run the
        // runtime's own dlsym first and wipe the message we want.
        _ = Dl.LastError();
        fixed (byte* p = name)
        {
            IntPtr h = Dl.Open(p, RTLD_NOW);
            if (h == IntPtr.Zero) error = Dl.LastError() ?? "dlopen failed";
            return h;
        }
    }

    /// <summary>Address of an exported symbol, or zero.</summary>
    public static IntPtr GetExport(IntPtr library, string symbol)
    {
        byte[] name = Encoding.ASCII.GetBytes(symbol + "\0");
        fixed (byte* p = name)
            return IsWindows ? Kernel32.GetProcAddress(library, p) : Dl.Sym(library, p);
    }

    public static void Free(IntPtr library)
    {
        if (library == IntPtr.Zero) return;
        if (IsWindows) Kernel32.FreeLibrary(library);
        else Dl.Close(library);
    }

    private static byte[] Utf8Z(string s) => Encoding.UTF8.GetBytes(s + "\0");

    private static class Kernel32
    {
        [DllImport("kernel32", SetLastError = true, CharSet = CharSet.Unicode, ExactSpelling = true)]
        public static extern IntPtr LoadLibraryW(string fileName);

        [DllImport("kernel32", ExactSpelling = true)]
        public static extern IntPtr GetProcAddress(IntPtr module, byte* procName);

        [DllImport("kernel32", ExactSpelling = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        public static extern bool FreeLibrary(IntPtr module);
    }

    /// <summary>dlopen and friends: in libdl.so.2 on older glibc, libc on newer glibc and musl, libSystem on macOS.</summary>
    private static class Dl
    {
        private static int s_variant = -1; // 0 libdl.so.2, 1 libc.so.6, 2 libSystem, 3 libc (musl, BSD)

        public static IntPtr Open(byte* file, int mode) => Call(v => v switch
        {
            0 => LibDl.dlopen(file, mode),
            1 => LibC6.dlopen(file, mode),
            2 => LibSystem.dlopen(file, mode),
            _ => LibC.dlopen(file, mode),
        });

        public static IntPtr Sym(IntPtr h, byte* symbol) => Call(v => v switch
        {
            0 => LibDl.dlsym(h, symbol),
            1 => LibC6.dlsym(h, symbol),
            2 => LibSystem.dlsym(h, symbol),
            _ => LibC.dlsym(h, symbol),
        });

        public static void Close(IntPtr h) => Call(v => (IntPtr)(v switch
        {
            0 => LibDl.dlclose(h),
            1 => LibC6.dlclose(h),
            2 => LibSystem.dlclose(h),
            _ => LibC.dlclose(h),
        }));

        public static string? LastError()
        {
            IntPtr p = Call(v => v switch
            {
                0 => LibDl.dlerror(),
                1 => LibC6.dlerror(),
                2 => LibSystem.dlerror(),
                _ => LibC.dlerror(),
            });
            return p == IntPtr.Zero ? null : Native.Utf8Z((byte*)p, 4096);
        }

        private static IntPtr Call(Func<int, IntPtr> f)
        {
            if (s_variant >= 0) return f(s_variant);
            for (int v = 0; v < 4; v++)
            {
                try
                {
                    IntPtr r = f(v);
                    s_variant = v;
                    return r;
                }
                catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
                {
                }
            }
            throw new DllNotFoundException("dlopen was found neither in libdl.so.2, libc.so.6, libSystem nor libc");
        }

        private static class LibDl
        {
            [DllImport("libdl.so.2", ExactSpelling = true)] public static extern IntPtr dlopen(byte* file, int mode);
            [DllImport("libdl.so.2", ExactSpelling = true)] public static extern IntPtr dlsym(IntPtr h, byte* symbol);
            [DllImport("libdl.so.2", ExactSpelling = true)] public static extern int dlclose(IntPtr h);
            [DllImport("libdl.so.2", ExactSpelling = true)] public static extern IntPtr dlerror();
        }

        private static class LibC6
        {
            [DllImport("libc.so.6", ExactSpelling = true)] public static extern IntPtr dlopen(byte* file, int mode);
            [DllImport("libc.so.6", ExactSpelling = true)] public static extern IntPtr dlsym(IntPtr h, byte* symbol);
            [DllImport("libc.so.6", ExactSpelling = true)] public static extern int dlclose(IntPtr h);
            [DllImport("libc.so.6", ExactSpelling = true)] public static extern IntPtr dlerror();
        }

        private static class LibSystem
        {
            [DllImport("libSystem.dylib", ExactSpelling = true)] public static extern IntPtr dlopen(byte* file, int mode);
            [DllImport("libSystem.dylib", ExactSpelling = true)] public static extern IntPtr dlsym(IntPtr h, byte* symbol);
            [DllImport("libSystem.dylib", ExactSpelling = true)] public static extern int dlclose(IntPtr h);
            [DllImport("libSystem.dylib", ExactSpelling = true)] public static extern IntPtr dlerror();
        }

        private static class LibC
        {
            [DllImport("libc", ExactSpelling = true)] public static extern IntPtr dlopen(byte* file, int mode);
            [DllImport("libc", ExactSpelling = true)] public static extern IntPtr dlsym(IntPtr h, byte* symbol);
            [DllImport("libc", ExactSpelling = true)] public static extern int dlclose(IntPtr h);
            [DllImport("libc", ExactSpelling = true)] public static extern IntPtr dlerror();
        }
    }
}
