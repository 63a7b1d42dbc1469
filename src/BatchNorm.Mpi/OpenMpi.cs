using System;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace BatchNorm.Mpi;

/// <summary>
/// OpenMPI's C ABI, the only MPI this package calls: the library is libmpi.so.40 (OpenMPI 4.x, built and tested with
/// 4.1), and its handles are pointers. MPI_COMM_WORLD, MPI_DOUBLE and MPI_SUM are the addresses of the globals
/// ompi_mpi_comm_world, ompi_mpi_double and ompi_mpi_op_sum, as OpenMPI's mpi.h defines them. MPICH and its derivatives
/// use integer handles and another library name, so they are refused by name rather than called wrongly.
/// </summary>
internal static partial class OpenMpi
{
    /// <summary>The name the imports use; the resolver maps it to the library that was found.</summary>
    private const string ImportName = "BatchNorm.Mpi.libmpi";

    private const int Success = 0;

    /// <summary>MPI_THREAD_SERIALIZED in OpenMPI's mpi.h: any thread may call MPI, one at a time.</summary>
    private const int ThreadSerialized = 2;

    /// <summary>MPI_MAX_LIBRARY_VERSION_STRING and MPI_MAX_ERROR_STRING in OpenMPI's mpi.h.</summary>
    private const int MaxString = 256;

    /// <summary>The file names looked for, in order, in the system's library search path.</summary>
    internal static readonly string[] LibraryNames = ["libmpi.so.40", "libmpi.so"];

    /// <summary>How to get the library, for every message that says it is missing.</summary>
    internal const string InstallHint = "On Debian or Ubuntu install OpenMPI with: apt-get install openmpi-bin libopenmpi-dev. "
        + "If OpenMPI is installed elsewhere, add the folder that holds libmpi.so.40 to LD_LIBRARY_PATH.";

    private static readonly Lazy<Library> Loaded = new(() => Load(LibraryNames));

    static OpenMpi() => NativeLibrary.SetDllImportResolver(typeof(OpenMpi).Assembly, Resolve);

    /// <summary>Gets MPI_COMM_WORLD.</summary>
    public static nint CommWorld => Get().CommWorld;

    /// <summary>Gets MPI_COMM_NULL.</summary>
    public static nint CommNull => Get().CommNull;

    /// <summary>
    /// The library, its path and the handles this package uses. Loaded once; a failure is remembered, so every later call
    /// gets the same message.
    /// </summary>
    /// <exception cref="DllNotFoundException">No library of <see cref="LibraryNames"/> was found.</exception>
    /// <exception cref="EntryPointNotFoundException">A library was found, but it is not OpenMPI.</exception>
    public static Library Get() => Loaded.Value;

    /// <summary>Loads the first library of <paramref name="names"/> that the system finds, and reads OpenMPI's handles from it.</summary>
    /// <exception cref="DllNotFoundException">None was found; the message names every file looked for and how to install OpenMPI.</exception>
    /// <exception cref="EntryPointNotFoundException">The library found lacks an OpenMPI symbol: it is another MPI.</exception>
    internal static Library Load(string[] names)
    {
        foreach (string name in names)
        {
            if (!NativeLibrary.TryLoad(name, out nint handle))
            {
                continue;
            }

            nint Symbol(string symbol) => NativeLibrary.TryGetExport(handle, symbol, out nint address)
                ? address
                : throw new EntryPointNotFoundException(
                    $"{name} was found but has no symbol {symbol}, so it is not OpenMPI. BatchNorm.Mpi calls OpenMPI's C ABI "
                    + "(libmpi.so.40, OpenMPI 4.x; tested with 4.1), whose handles are pointers to its globals; MPICH, Intel MPI and "
                    + $"MS-MPI use other handles and cannot be called through it. {InstallHint}");

            return new Library(name, handle, Symbol("ompi_mpi_comm_world"), Symbol("ompi_mpi_comm_null"), Symbol("ompi_mpi_double"), Symbol("ompi_mpi_op_sum"));
        }

        throw new DllNotFoundException(
            $"BatchNorm.Mpi needs OpenMPI's C library and found none: it looked for {string.Join(" and then ", names)} in the system's "
            + $"library search path (LD_LIBRARY_PATH, the ld.so cache, /lib and /usr/lib). {InstallHint}");
    }

    /// <summary>Whether MPI_Init has been called in this process, and whether MPI_Finalize has.</summary>
    public static (bool Initialized, bool Finalized) State()
    {
        Get();
        Check(MPI_Initialized(out int initialized), "MPI_Initialized");
        Check(MPI_Finalized(out int finalized), "MPI_Finalized");
        return (initialized != 0, finalized != 0);
    }

    /// <summary>MPI_Init_thread asking for MPI_THREAD_SERIALIZED; returns the level MPI provides.</summary>
    public static unsafe int InitializeSerialized()
    {
        Get();
        Check(MPI_Init_thread(null, null, ThreadSerialized, out int provided), "MPI_Init_thread");
        return provided;
    }

    /// <summary>MPI_Query_thread: the thread level of an MPI that someone else initialized.</summary>
    public static int ThreadLevel()
    {
        Check(MPI_Query_thread(out int provided), "MPI_Query_thread");
        return provided;
    }

    /// <summary>MPI_Finalize.</summary>
    public static void FinalizeMpi() => Check(MPI_Finalize(), "MPI_Finalize");

    /// <summary>MPI_Get_library_version, which MPI allows before initialization.</summary>
    public static unsafe string LibraryVersion()
    {
        Get();
        byte* text = stackalloc byte[MaxString];
        Check(MPI_Get_library_version(text, out int length), "MPI_Get_library_version");
        return Encoding.UTF8.GetString(text, Math.Clamp(length, 0, MaxString)).TrimEnd('\0', '\n', ' ');
    }

    /// <summary>MPI_Comm_size and MPI_Comm_rank.</summary>
    public static (int Size, int Rank) SizeAndRank(nint communicator)
    {
        Check(MPI_Comm_size(communicator, out int size), "MPI_Comm_size");
        Check(MPI_Comm_rank(communicator, out int rank), "MPI_Comm_rank");
        return (size, rank);
    }

    /// <summary>MPI_Allgather of doubles: every rank's <paramref name="local"/> into <paramref name="gathered"/>, in rank order.</summary>
    public static unsafe void AllGather(ReadOnlySpan<double> local, Span<double> gathered, nint communicator)
    {
        nint type = Get().Double;
        fixed (double* send = local)
        fixed (double* receive = gathered)
        {
            Check(MPI_Allgather(send, local.Length, type, receive, local.Length, type, communicator), "MPI_Allgather");
        }
    }

    /// <summary>MPI_Allreduce with MPI_SUM over doubles, in place (MPI_IN_PLACE).</summary>
    public static unsafe void AllReduceSum(Span<double> values, nint communicator)
    {
        Library library = Get();
        fixed (double* buffer = values)
        {
            // MPI_IN_PLACE is (void*)1 in OpenMPI's mpi.h.
            Check(MPI_Allreduce((void*)1, buffer, values.Length, library.Double, library.Sum, communicator), "MPI_Allreduce");
        }
    }

    /// <summary>
    /// Throws for an MPI error code. MPI's default error handler aborts the job before a call returns an error, so this
    /// is reached only under a communicator whose handler returns errors.
    /// </summary>
    private static unsafe void Check(int code, string call)
    {
        if (code == Success)
        {
            return;
        }

        byte* text = stackalloc byte[MaxString];
        string reason = MPI_Error_string(code, text, out int length) == Success
            ? Encoding.UTF8.GetString(text, Math.Clamp(length, 0, MaxString))
            : "no description";
        throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"{call} failed with MPI error {code}: {reason}."));
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
        => name == ImportName ? Get().Handle : 0;

    [LibraryImport(ImportName)]
    private static partial int MPI_Initialized(out int flag);

    [LibraryImport(ImportName)]
    private static partial int MPI_Finalized(out int flag);

    [LibraryImport(ImportName)]
    private static unsafe partial int MPI_Init_thread(int* argc, byte*** argv, int required, out int provided);

    [LibraryImport(ImportName)]
    private static partial int MPI_Query_thread(out int provided);

    [LibraryImport(ImportName)]
    private static partial int MPI_Finalize();

    [LibraryImport(ImportName)]
    private static unsafe partial int MPI_Get_library_version(byte* version, out int length);

    [LibraryImport(ImportName)]
    private static unsafe partial int MPI_Error_string(int code, byte* text, out int length);

    [LibraryImport(ImportName)]
    private static partial int MPI_Comm_size(nint communicator, out int size);

    [LibraryImport(ImportName)]
    private static partial int MPI_Comm_rank(nint communicator, out int rank);

    [LibraryImport(ImportName)]
    private static unsafe partial int MPI_Allgather(void* send, int sendCount, nint sendType, void* receive, int receiveCount, nint receiveType, nint communicator);

    [LibraryImport(ImportName)]
    private static unsafe partial int MPI_Allreduce(void* send, void* receive, int count, nint type, nint operation, nint communicator);

    /// <summary>The loaded library and the OpenMPI handles read from it.</summary>
    internal sealed record Library(string Name, nint Handle, nint CommWorld, nint CommNull, nint Double, nint Sum);
}
