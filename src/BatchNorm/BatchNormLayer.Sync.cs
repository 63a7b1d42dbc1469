using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <content>Statistics synchronized across data-parallel workers through an <see cref="IStatisticsExchange"/>.</content>
public sealed partial class BatchNormLayer
{
    /// <summary>Values per feature in a forward exchange: count, mean (two parts) and sum of squared deviations.</summary>
    private const int ForwardSlots = 4;

    /// <summary>
    /// A synchronized training Forward: local moments, one all-gather, Chan's merge in rank order, then x̂ and y
    /// with the global statistics. Returns the first column whose merged statistics are not finite, or −1; every
    /// worker sees the same merged values, so every worker reports the same column.
    /// </summary>
    private int ForwardSynchronized(Matrix<double> input, Matrix<double> y, BatchNormCache cache)
    {
        IStatisticsExchange exchange = _exchange!;
        Matrix<double> x = input;
        int n = x.RowCount, workers = exchange.WorkerCount;
        Span<double> local = Buffer(ref _localStatistics, ForwardSlots * Features);
        for (int j = 0; j < Features; j++)
        {
            ColumnKernels.Moments(DenseColumns.Column(x, j), out double mean, out double correction, out double variance);
            local[(ForwardSlots * j) + 0] = n;
            local[(ForwardSlots * j) + 1] = mean;
            local[(ForwardSlots * j) + 2] = correction;
            local[(ForwardSlots * j) + 3] = variance * n;
        }

        Span<double> gathered = Buffer(ref _gatheredStatistics, workers * local.Length);
        exchange.AllGather(local, gathered);

        long total = 0;
        for (int r = 0; r < workers; r++)
        {
            total += (long)gathered[r * local.Length];
        }

        if (total < 2)
        {
            throw new ArgumentException($"Training needs at least 2 rows across all workers, but there are {total}.", nameof(input));
        }

        Span<double> mean0 = cache.WritableMean, variance0 = cache.WritableVariance, inverseStd = cache.WritableInverseStd;
        Span<double> xHat = DenseColumns.Data(cache.NormalizedMatrix);
        int bad = -1;
        for (int j = 0; j < Features; j++)
        {
            // Chan et al.'s parallel formula in its summed form: with per-worker counts nᵣ, means μᵣ and sums of
            // squared deviations Mᵣ, μ = Σ nᵣμᵣ/N and M = Σ (Mᵣ + nᵣ·(μᵣ − μ)²). Means are kept as center + offset,
            // like ColumnKernels.Moments, so that x − μ keeps its digits far from zero.
            double center = gathered[(ForwardSlots * j) + 1], offset = 0;
            for (int r = 0; r < workers; r++)
            {
                int at = (r * local.Length) + (ForwardSlots * j);
                offset += gathered[at] * ((gathered[at + 1] - center) + gathered[at + 2]);
            }

            offset /= total;
            double squares = 0;
            for (int r = 0; r < workers; r++)
            {
                int at = (r * local.Length) + (ForwardSlots * j);
                double delta = (gathered[at + 1] - center) + gathered[at + 2] - offset;
                squares += gathered[at + 3] + (gathered[at] * delta * delta);
            }

            double variance = squares / total;
            mean0[j] = center + offset;
            variance0[j] = variance;
            if (!double.IsFinite(mean0[j]) || !double.IsFinite(variance))
            {
                bad = bad < 0 ? j : bad;
                continue;
            }

            inverseStd[j] = 1.0 / Math.Sqrt(variance + Epsilon);
            ColumnKernels.Normalize(DenseColumns.Column(x, j), center, offset, inverseStd[j], Gamma[j], Beta[j], xHat.Slice(j * n, n), DenseColumns.Column(y, j), stream: false);
        }

        cache.GlobalBatchSize = (int)total;
        cache.Exchange = exchange;
        return bad;
    }

    /// <summary>
    /// The closed-form backward pass with the global sums: one all-gather of Σdy and Σdy·x̂ per feature, summed in
    /// rank order, then dx = γ·istd·(dy − ΣΣdy/N − x̂·ΣΣdy·x̂/N) for this worker's rows.
    /// </summary>
    private void BackwardSynchronizedClosedForm(BatchNormCache cache, IStatisticsExchange exchange, Matrix<double> dy, Matrix<double> dx)
    {
        int workers = exchange.WorkerCount;
        Span<double> local = Buffer(ref _localStatistics, 2 * Features);
        for (int j = 0; j < Features; j++)
        {
            (local[2 * j], local[(2 * j) + 1]) = ColumnKernels.SumAndDot(DenseColumns.Column(dy, j), cache.NormalizedColumn(j));
        }

        Span<double> gathered = Buffer(ref _gatheredStatistics, workers * local.Length);
        exchange.AllGather(local, gathered);
        double total = cache.GlobalBatchSize;
        for (int j = 0; j < Features; j++)
        {
            double sumDy = 0, sumDyXHat = 0;
            for (int r = 0; r < workers; r++)
            {
                sumDy += gathered[(r * local.Length) + (2 * j)];
                sumDyXHat += gathered[(r * local.Length) + (2 * j) + 1];
            }

            _betaGradientScratch[j] = sumDy;
            _gammaGradientScratch[j] = sumDyXHat;
            if (double.IsFinite(sumDy) && double.IsFinite(sumDyXHat))
            {
                ColumnKernels.ClosedFormInputGradient(
                    DenseColumns.Column(dy, j), cache.NormalizedColumn(j), sumDy / total, sumDyXHat / total, Gamma[j] * cache.InverseStandardDeviation[j], DenseColumns.Column(dx, j), stream: false);
            }
        }
    }

    /// <summary>
    /// The staged backward pass with the global sums. The stages that sum over rows (node y: dγ and dβ; nodes σ² and μ:
    /// dσ², the direct part of dμ and Σ(x − μ)) run on this worker's rows; one all-gather adds them up in rank order;
    /// then node x gives this worker's rows of dx with N the total row count.
    /// </summary>
    private void BackwardSynchronizedStaged(BatchNormCache cache, IStatisticsExchange exchange, Matrix<double> dy, Matrix<double> dx)
    {
        const int slots = 5;
        int workers = exchange.WorkerCount;
        Span<double> local = Buffer(ref _localStatistics, slots * Features);
        for (int j = 0; j < Features; j++)
        {
            Span<double> dXHat = DenseColumns.Column(dx, j);
            StagedBackward.OutputNode(DenseColumns.Column(dy, j), cache.NormalizedColumn(j), Gamma[j], dXHat, out local[slots * j], out local[(slots * j) + 1]);
            StagedBackward.StatisticsNodes(
                cache.NormalizedColumn(j), cache.InverseStandardDeviation[j], dXHat, out local[(slots * j) + 2], out local[(slots * j) + 3], out local[(slots * j) + 4]);
        }

        Span<double> gathered = Buffer(ref _gatheredStatistics, workers * local.Length);
        exchange.AllGather(local, gathered);
        for (int j = 0; j < Features; j++)
        {
            double dGamma = 0, dBeta = 0, dVariance = 0, dMean = 0, sumCentered = 0;
            for (int r = 0; r < workers; r++)
            {
                int at = (r * local.Length) + (slots * j);
                dGamma += gathered[at];
                dBeta += gathered[at + 1];
                dVariance += gathered[at + 2];
                dMean += gathered[at + 3];
                sumCentered += gathered[at + 4];
            }

            _gammaGradientScratch[j] = dGamma;
            _betaGradientScratch[j] = dBeta;
            StagedBackward.InputNode(cache.NormalizedColumn(j), cache.InverseStandardDeviation[j], cache.GlobalBatchSize, dVariance, dMean, sumCentered, DenseColumns.Column(dx, j));
        }
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
