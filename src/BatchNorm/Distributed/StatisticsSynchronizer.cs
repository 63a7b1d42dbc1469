using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Synchronized batch norm around the shared engine: it exchanges what couples the workers' rows and nothing else.
/// Forward: each worker's moments per feature, merged with Chan's parallel formula. Backward: the strategy's sums per
/// segment, added up. Every worker merges the gathered values itself, in rank order, so all compute bit-identical results.
/// </summary>
/// <remarks>One synchronizer serves one layer; its gather buffers are kept, so steps allocate nothing of their own.</remarks>
internal sealed class StatisticsSynchronizer(IStatisticsExchange exchange)
{
    /// <summary>Values per feature in a forward exchange: count, mean (two parts) and sum of squared deviations.</summary>
    private const int ForwardSlots = 4;

    private double[] _local = [], _gathered = [];

    /// <summary>Gets the transport.</summary>
    public IStatisticsExchange Exchange { get; } = exchange;

    /// <summary>
    /// The statistics of all workers' rows together: local moments per feature, one all-gather, then Chan's merge in rank
    /// order into the center, correction (the mean is their sum, kept in two parts as by <see cref="ColumnKernels.Moments"/>)
    /// and biased variance of each feature.
    /// </summary>
    /// <returns>The total row count over all workers, and the index of this worker's first row among them.</returns>
    /// <exception cref="ArgumentException">All workers together hold fewer than 2 rows; every worker throws it.</exception>
    public (int Total, int Offset) MergeMoments(Matrix<double> input, Span<double> center, Span<double> correction, Span<double> variance)
    {
        int workers = WorkerCount(), rank = Exchange.Rank, n = input.RowCount, features = input.ColumnCount;
        Span<double> local = Buffer(ref _local, ForwardSlots * features);
        for (int j = 0; j < features; j++)
        {
            // A worker with no rows still takes part, with a count of 0, so that no peer waits for it.
            double mean = 0, offset = 0, squares = 0;
            if (n > 0)
            {
                ColumnKernels.Moments(DenseColumns.Column(input, j), out mean, out offset, out double v);
                squares = v * n;
            }

            local[ForwardSlots * j] = n;
            local[(ForwardSlots * j) + 1] = mean;
            local[(ForwardSlots * j) + 2] = offset;
            local[(ForwardSlots * j) + 3] = squares;
        }

        Span<double> gathered = Buffer(ref _gathered, workers * local.Length);
        Exchange.AllGather(local, gathered);

        long total = 0, first = 0;
        for (int r = 0; r < workers; r++)
        {
            long count = (long)gathered[r * local.Length];
            total += count;
            first += r < rank ? count : 0;
        }

        if (total < 2)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"Training needs at least 2 rows across all workers, but there are {total}."), nameof(input));
        }

        for (int j = 0; j < features; j++)
        {
            // Chan et al.'s parallel formula in its summed form: with per-worker counts nᵣ, means μᵣ and sums of squared
            // deviations Mᵣ, μ = Σ nᵣμᵣ/N and M = Σ (Mᵣ + nᵣ·(μᵣ − μ)²). Means are kept as center + offset, so that
            // x − μ keeps its digits far from zero. Workers without rows add nothing.
            double c = 0, offset = 0;
            for (int r = 0; r < workers; r++)
            {
                int at = (r * local.Length) + (ForwardSlots * j);
                if (gathered[at] > 0)
                {
                    c = gathered[at + 1];
                    break;
                }
            }

            for (int r = 0; r < workers; r++)
            {
                int at = (r * local.Length) + (ForwardSlots * j);
                offset += gathered[at] * ((gathered[at + 1] - c) + gathered[at + 2]);
            }

            offset /= total;
            double squares = 0;
            for (int r = 0; r < workers; r++)
            {
                int at = (r * local.Length) + (ForwardSlots * j);
                double delta = (gathered[at + 1] - c) + gathered[at + 2] - offset;
                squares += gathered[at + 3] + (gathered[at] * delta * delta);
            }

            center[j] = c;
            correction[j] = offset;
            variance[j] = squares / total;
        }

        return ((int)total, (int)first);
    }

    /// <summary>Adds up the per-segment sums of every worker, in rank order, in place.</summary>
    public void AddUp(Span<double> sums)
    {
        int workers = WorkerCount();
        Span<double> gathered = Buffer(ref _gathered, workers * sums.Length);
        Exchange.AllGather(sums, gathered);
        for (int k = 0; k < sums.Length; k++)
        {
            double total = 0;
            for (int r = 0; r < workers; r++)
            {
                total += gathered[(r * sums.Length) + k];
            }

            sums[k] = total;
        }
    }

    private int WorkerCount()
    {
        int workers = Exchange.WorkerCount, rank = Exchange.Rank;
        if (workers < 1 || rank < 0 || rank >= workers)
        {
            throw new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"The statistics exchange {Exchange.GetType().Name} reports worker count {workers} and rank {rank}; it needs at least 1 worker and a rank in [0, count)."));
        }

        return workers;
    }

    private static Span<double> Buffer(ref double[] buffer, int length)
    {
        if (buffer.Length != length)
        {
            buffer = new double[length];
        }

        return buffer;
    }
}
