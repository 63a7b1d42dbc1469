using System;

namespace BatchNorm;

/// <summary>
/// The transport of data-parallel batch norm: an all-gather over the workers that train one model, each on its
/// own part of the batch. Implement it over your own communication (MPI, sockets, shared memory) and set it as
/// <see cref="BatchNormLayer.StatisticsExchange"/> on each worker's layer.
/// </summary>
/// <remarks>
/// <para>Every worker calls <see cref="AllGather"/> the same number of times, in the same order, with spans of the
/// same length. Each call returns once all workers have contributed, with every worker's values in rank order.
/// The layer merges them itself, in rank order, so all workers compute bit-identical statistics.</para>
/// <para>Each training Forward gathers, per feature, the local count, the local mean (in two parts) and the local
/// sum of squared deviations, which merge exactly with Chan's parallel formula; each Backward after it gathers
/// Σdy and Σdy·x̂ per feature. Non-finite values travel in the gathered data, so every worker rejects a bad batch
/// together rather than leaving the others waiting.</para>
/// </remarks>
public interface IStatisticsExchange
{
    /// <summary>Gets the number of workers, K ≥ 1.</summary>
    int WorkerCount { get; }

    /// <summary>Gets this worker's rank, in [0, K).</summary>
    int Rank { get; }

    /// <summary>Gathers <paramref name="local"/> from every worker into <paramref name="gathered"/>: worker r's values at [r·L, (r+1)·L).</summary>
    /// <param name="local">This worker's L values.</param>
    /// <param name="gathered">Receives K·L values, in rank order.</param>
    void AllGather(ReadOnlySpan<double> local, Span<double> gathered);
}
