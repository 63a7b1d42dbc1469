using System;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using BatchNorm.Mpi.Worker;

namespace BatchNorm.Mpi.Tests;

/// <summary>
/// The reference for the MPI ranks: the same case run by K workers on threads of this process, synchronized through an
/// all-gather over shared memory, as the library's own synchronization tests do. The library merges the gathered values
/// itself, so any correct transport gives bit-identical results.
/// </summary>
internal static class InProcess
{
    /// <summary>Runs <paramref name="work"/> once per worker, each on its own thread with its own exchange.</summary>
    /// <returns>Each worker's record, by rank.</returns>
    public static CaseRecord[] Run(int workers, Func<IStatisticsExchange, int, CaseRecord> work)
    {
        double[][] slots = [.. Enumerable.Range(0, workers).Select(_ => new double[4096])];
        using var barrier = new Barrier(workers);
        Task<CaseRecord>[] tasks = [.. Enumerable.Range(0, workers).Select(r => Task.Factory.StartNew(
            () => work(new BarrierExchange(r, slots, barrier), r), TaskCreationOptions.LongRunning))];
        Assert.True(Task.WaitAll(tasks, TimeSpan.FromSeconds(30)), "an in-process worker is still waiting in the exchange");
        return [.. tasks.Select(t => t.Result)];
    }

    /// <summary>Each worker posts its values into its own slot, all meet at a barrier, read every slot, and meet again.</summary>
    private sealed class BarrierExchange(int rank, double[][] slots, Barrier barrier) : IStatisticsExchange
    {
        public int WorkerCount => slots.Length;

        public int Rank => rank;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
        {
            local.CopyTo(slots[rank]);
            Wait();
            for (int r = 0; r < slots.Length; r++)
            {
                slots[r].AsSpan(0, local.Length).CopyTo(gathered.Slice(r * local.Length, local.Length));
            }

            Wait();
        }

        private void Wait()
        {
            if (!barrier.SignalAndWait(TimeSpan.FromSeconds(10)))
            {
                throw new TimeoutException($"worker {rank} waited 10 s for its peers");
            }
        }
    }
}
