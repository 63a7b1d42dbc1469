using System;
using System.Globalization;

namespace BatchNorm.Mpi;

/// <summary>
/// The statistics exchange of synchronized batch norm over MPI: one MPI_Allgather of doubles per exchange, on
/// MPI_COMM_WORLD or on a communicator you pass. Each rank of the communicator is one worker; set one exchange as
/// <see cref="BatchNormLayer.StatisticsExchange"/> on each rank's layer (one exchange may serve every layer of a rank).
/// </summary>
/// <remarks>
/// <para>Calls OpenMPI's C library (libmpi.so.40, the OpenMPI 4.x ABI; tested with OpenMPI 4.1 on Linux) through P/Invoke.
/// MPI must be initialized, by <see cref="MpiSession.Start"/> or by the program, and not yet finalized.</para>
/// <para>Every rank must make the same synchronized calls in the same order: the same layers, training Forward then
/// Backward, on the same features. A rank may hold any number of rows, none included. A NaN in one rank's batch, or a
/// rank that rejects its own arguments, fails the step on every rank (the layer sends it inside the gathered values),
/// so no rank is left waiting. A rank that dies makes mpirun end the others.</para>
/// <para>What it costs: a training Forward gathers 4·D + 1 doubles from each rank, the Backward after it
/// SumCount·D + 1 (3·D + 1 for the closed form, 5·D + 1 for the staged strategy), for a layer of D features. So each
/// rank receives 8·K·(4·D + 1) and 8·K·(3·D + 1) bytes per step of one layer, in two MPI calls. Inference calls nothing.</para>
/// </remarks>
public sealed class MpiStatisticsExchange : IStatisticsExchange
{
    /// <summary>An exchange among all ranks of the job: MPI_COMM_WORLD.</summary>
    /// <exception cref="DllNotFoundException">OpenMPI's library is not installed; the message says which file was looked for and how to install it.</exception>
    /// <exception cref="EntryPointNotFoundException">The library found is not OpenMPI.</exception>
    /// <exception cref="InvalidOperationException">MPI is not initialized, or already finalized.</exception>
    public MpiStatisticsExchange()
        : this(OpenMpi.CommWorld)
    {
    }

    /// <summary>An exchange among the ranks of <paramref name="communicator"/>, an OpenMPI MPI_Comm made by the program
    /// (with MPI_Comm_split, say): its value as a pointer. The exchange does not free it.</summary>
    /// <param name="communicator">The MPI_Comm handle; it must stay valid while the exchange is used.</param>
    /// <exception cref="ArgumentException"><paramref name="communicator"/> is 0 or MPI_COMM_NULL.</exception>
    /// <exception cref="DllNotFoundException">OpenMPI's library is not installed; the message says which file was looked for and how to install it.</exception>
    /// <exception cref="EntryPointNotFoundException">The library found is not OpenMPI.</exception>
    /// <exception cref="InvalidOperationException">MPI is not initialized, or already finalized.</exception>
    public MpiStatisticsExchange(nint communicator)
    {
        if (communicator == 0 || communicator == OpenMpi.CommNull)
        {
            throw new ArgumentException("The communicator is MPI_COMM_NULL (or 0): this process is not a member of it, so it has no rank to exchange from.", nameof(communicator));
        }

        RequireActive();
        Communicator = communicator;
        (WorkerCount, Rank) = OpenMpi.SizeAndRank(communicator);
    }

    /// <summary>Gets the MPI_Comm handle the exchange runs on.</summary>
    public nint Communicator { get; }

    /// <summary>Gets the number of ranks of the communicator.</summary>
    public int WorkerCount { get; }

    /// <summary>Gets this process's rank in the communicator.</summary>
    public int Rank { get; }

    /// <summary>MPI_Allgather of <paramref name="local"/> from every rank into <paramref name="gathered"/>, in rank order.</summary>
    /// <param name="local">This rank's L values; every rank passes the same L.</param>
    /// <param name="gathered">Receives K·L values: rank r's at [r·L, (r+1)·L).</param>
    /// <exception cref="ArgumentException"><paramref name="gathered"/> does not hold K·L values.</exception>
    /// <exception cref="InvalidOperationException">MPI has been finalized since the exchange was made.</exception>
    /// <remarks>Allocates nothing. Blocks until every rank of the communicator has called it.</remarks>
    public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
    {
        if (gathered.Length != (long)WorkerCount * local.Length)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"gathered holds {gathered.Length} values, but {WorkerCount} ranks × {local.Length} values need {(long)WorkerCount * local.Length}."),
                nameof(gathered));
        }

        RequireActive();
        OpenMpi.AllGather(local, gathered, Communicator);
    }

    /// <summary>
    /// Replaces each value by its sum over all ranks (MPI_Allreduce with MPI_SUM, in place), for the gradients of the
    /// rest of a data-parallel network. Not for γ and β of a synchronized layer after a training step: those already
    /// hold the whole batch's gradient (see docs/mpi.md).
    /// </summary>
    /// <param name="values">The values to add up; every rank passes the same count.</param>
    /// <exception cref="InvalidOperationException">MPI has been finalized since the exchange was made.</exception>
    /// <remarks>Allocates nothing. With two ranks every rank gets bit-identical sums; with more, MPI does not promise
    /// that its reduction order is the same on every rank.</remarks>
    public void AllReduceSum(Span<double> values)
    {
        RequireActive();
        OpenMpi.AllReduceSum(values, Communicator);
    }

    /// <summary>Describes the exchange, such as "MpiStatisticsExchange(rank 1 of 3)".</summary>
    /// <returns>The description.</returns>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"MpiStatisticsExchange(rank {Rank} of {WorkerCount})");

    private static void RequireActive()
    {
        (bool initialized, bool finalized) = OpenMpi.State();
        if (!initialized || finalized)
        {
            throw new InvalidOperationException(finalized
                ? "MPI has been finalized in this process, so the exchange can no longer be used."
                : "MPI is not initialized: call MpiSession.Start() (or MPI_Init) before making or using an MpiStatisticsExchange.");
        }
    }
}
