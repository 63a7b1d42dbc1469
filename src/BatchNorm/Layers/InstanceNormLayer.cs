using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Instance normalization (Ulyanov et al., 2016), PyTorch's InstanceNorm1d on (N, C, S): each sample's channels are
/// normalized over their own S positions, then scaled by γ and shifted by β per channel. The input has C·S columns,
/// one row per sample, channel-major (channel c is columns [c·S, (c + 1)·S)).
/// </summary>
/// <remarks>
/// <para>Per row i and channel c: μ = (1/S)·Σₛ xᵢ,cS+s, σ² = (1/S)·Σₛ (xᵢ,cS+s − μ)², x̂ = (x − μ)/√(σ² + ε), y = γ_c·x̂ + β_c.
/// On the engine it is group norm with one group per channel.</para>
/// <para>PyTorch's defaults are kept: no γ and β (<c>affine=False</c>) and no running statistics
/// (<c>track_running_stats=False</c>), so training and inference are the same. With running statistics, a training
/// Forward averages each channel's instance statistics over the batch into them, running_mean ← (1 − m)·running_mean +
/// m·meanᵢ(μᵢ) and running_var ← (1 − m)·running_var + m·meanᵢ(σᵢ²)·S/(S − 1), and an inference Forward normalizes every
/// sample's channel with them instead, a per-channel affine map (<see cref="RunningStatisticsLayer.FoldInto(Matrix{double}, Vector{double})"/> works).
/// As in PyTorch, whose instance norm never counts <c>num_batches_tracked</c>, <see cref="RunningStatisticsLayer.BatchesTracked"/>
/// stays at what was loaded (0 for a new layer), and momentum must be a number.</para>
/// <para>Statistics of an instance need at least 2 positions (PyTorch refuses a single one the same way).</para>
/// </remarks>
public sealed class InstanceNormLayer : RunningStatisticsLayer
{
    /// <summary>Creates the layer: γ = 1, β = 0, running mean 0 and running variance 1.</summary>
    /// <param name="channels">C, at least 1.</param>
    /// <param name="spatialSize">S, the positions per channel, at least 1 (batch statistics need 2).</param>
    /// <param name="epsilon">ε, positive and finite. PyTorch's default is 1e-5.</param>
    /// <param name="momentum">m in [0, 1], the weight of each batch in the running statistics; PyTorch's default is 0.1.</param>
    /// <param name="backward">The backward strategy; closed form when null.</param>
    /// <param name="affine">Whether γ and β are learnable; false by default, as in PyTorch.</param>
    /// <param name="trackRunningStatistics">Whether to keep running statistics for inference; false by default, as in PyTorch.</param>
    /// <exception cref="ArgumentOutOfRangeException">C or S ≤ 0, C·S too large, ε not positive and finite, or m outside [0, 1] or NaN.</exception>
    public InstanceNormLayer(
        int channels, int spatialSize, double epsilon = 1e-5, double momentum = 0.1, BackwardStrategy? backward = null, bool affine = false, bool trackRunningStatistics = false)
        : base(channels, spatialSize, epsilon, momentum, backward, affine, trackRunningStatistics, nameof(channels))
    {
    }

    /// <summary>Creates a layer from a state written by <see cref="NormalizationLayer.ExportState"/> of an <see cref="InstanceNormLayer"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="NormalizationLayer.ImportState"/>, or the state is of another layer type.</exception>
    public static new InstanceNormLayer FromState(string json) => (InstanceNormLayer)LayerState.Create(json, typeof(InstanceNormLayer));

    private protected override bool DefaultTracking => false;

    private protected override bool AcceptsCumulativeAverage => false;

    /// <summary>Each instance's channels as row groups; with running statistics in inference, each channel of the whole batch with them.</summary>
    private protected override SegmentLayout Layout(int rows)
        => IsTraining || !TracksRunningStatistics
            ? SegmentLayout.RowGroupsOf(rows, Features, Channels)
            : SegmentLayout.ColumnBlocksOf(rows, Features, 1, Channels);

    private protected override string? RowRuleBroken(int rows, int columns)
        => (IsTraining || !TracksRunningStatistics) && SpatialSize < 2
            ? string.Create(CultureInfo.InvariantCulture, $"Instance statistics need at least 2 positions per channel, but this layer has {SpatialSize}.")
            : null;

    /// <summary>
    /// The running statistics after a training step: each channel's instance means and unbiased variances averaged over
    /// the batch (segment c·N + i is channel c of row i), folded in with the momentum. The batch count does not change,
    /// as PyTorch's instance norm leaves num_batches_tracked alone.
    /// </summary>
    private protected override StepFault PrepareCommit(NormalizationCache next)
    {
        if (!next.IsTraining || !TracksRunningStatistics)
        {
            return StepFault.None;
        }

        int n = next.BatchSize;
        double bessel = (double)SpatialSize / (SpatialSize - 1);
        double m = Momentum!.Value;
        ReadOnlySpan<double> mean = next.Mean, variance = next.Variance, runningMean = DenseColumns.Data(RunningMean), runningVariance = DenseColumns.Data(RunningVariance);
        Span<double> nextMean = NextMean, nextVariance = NextVariance;
        for (int c = 0; c < Channels; c++)
        {
            double batchMean = 0, batchVariance = 0;
            for (int i = 0; i < n; i++)
            {
                // Each term divided first, so that means near the largest double do not overflow their sum.
                batchMean += mean[(c * n) + i] / n;
                batchVariance += variance[(c * n) + i] * bessel / n;
            }

            nextMean[c] = ((1 - m) * runningMean[c]) + (m * batchMean);
            nextVariance[c] = ((1 - m) * runningVariance[c]) + (m * batchVariance);
        }

        NextBatches = BatchesTracked;
        return StepFault.None;
    }
}
