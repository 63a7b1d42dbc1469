using System;
using System.Threading;

namespace BatchNorm.Mpi;

/// <summary>
/// MPI's lifetime in this process, shared with the program: <see cref="Start"/> initializes MPI unless the program (or
/// another library) already has, and <see cref="Dispose"/> finalizes it only if <see cref="Start"/> initialized it.
/// </summary>
/// <remarks>
/// <para>A program that owns MPI itself (it calls MPI_Init and MPI_Finalize, through another binding) need not use this
/// class: <see cref="MpiStatisticsExchange"/> only needs MPI to be initialized and not yet finalized.</para>
/// <para>MPI is initialized with MPI_THREAD_SERIALIZED: MPI may then be called from any thread, one at a time, as a
/// .NET program whose training loop moves between threads (after an await, say) needs. The layers call the exchange
/// only from the thread that called Forward or Backward, never from their own worker threads.</para>
/// <para>MPI_Finalize is collective: every rank disposes its session, and no exchange is used afterwards. MPI can be
/// initialized once per process only, so a process cannot start a session again after finalizing.</para>
/// </remarks>
public sealed class MpiSession : IDisposable
{
    private static readonly object Gate = new();
    private int _disposed;

    private MpiSession(bool ownsInitialization, int threadLevel)
    {
        OwnsInitialization = ownsInitialization;
        ThreadLevel = threadLevel;
    }

    /// <summary>Gets whether this session initialized MPI, and so finalizes it when disposed.</summary>
    public bool OwnsInitialization { get; }

    /// <summary>
    /// Gets the thread level MPI provides: 0 single, 1 funneled, 2 serialized, 3 multiple (MPI_THREAD_*). A session that
    /// initialized MPI asked for 2; below 2, call the layers only from the thread that initialized MPI.
    /// </summary>
    public int ThreadLevel { get; }

    /// <summary>Gets the MPI library's own description, from MPI_Get_library_version, such as "Open MPI v4.1.4, …".</summary>
    /// <exception cref="DllNotFoundException">OpenMPI's library is not installed; the message says which file was looked for and how to install it.</exception>
    /// <exception cref="EntryPointNotFoundException">The library found is not OpenMPI.</exception>
    public static string LibraryVersion => OpenMpi.LibraryVersion();

    /// <summary>Initializes MPI, or joins the MPI that the program already initialized.</summary>
    /// <returns>The session; dispose it at the end of the program, on every rank.</returns>
    /// <exception cref="DllNotFoundException">OpenMPI's library is not installed; the message says which file was looked for and how to install it.</exception>
    /// <exception cref="EntryPointNotFoundException">The library found is not OpenMPI.</exception>
    /// <exception cref="InvalidOperationException">MPI has already been finalized in this process.</exception>
    /// <remarks>Run the program under mpirun (or another OpenMPI launcher) to get more than one rank; a program started
    /// on its own is a single rank of its own (MPI's singleton initialization).</remarks>
    public static MpiSession Start()
    {
        lock (Gate)
        {
            (bool initialized, bool finalized) = OpenMpi.State();
            if (finalized)
            {
                throw new InvalidOperationException("MPI has already been finalized in this process, and MPI cannot be initialized twice; start the session once, at the beginning of the program.");
            }

            return initialized ? new MpiSession(false, OpenMpi.ThreadLevel()) : new MpiSession(true, OpenMpi.InitializeSerialized());
        }
    }

    /// <summary>Finalizes MPI if this session initialized it and nobody has finalized it since; otherwise does nothing.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0 || !OwnsInitialization)
        {
            return;
        }

        lock (Gate)
        {
            if (!OpenMpi.State().Finalized)
            {
                OpenMpi.FinalizeMpi();
            }
        }
    }
}
