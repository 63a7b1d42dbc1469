using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// What <see cref="BatchNormLayer.Forward(Matrix{double})"/> keeps for the backward pass: the normalized
/// input x̂, the statistics μ and σ² it was normalized with, and 1/√(σ² + ε).
/// </summary>
/// <remarks>
/// <para>
/// After a training Forward, μ and σ² are the batch mean and the biased batch variance (divided by N), and
/// <see cref="IsTraining"/> is true. After an inference Forward they are copies of the running mean and
/// running variance, and <see cref="IsTraining"/> is false.
/// </para>
/// <para>
/// Everything is read-only from outside. While the batch shape stays the same a layer alternates between
/// two cache objects, writing the next step into the one it is not currently exposing and switching only
/// once the step has succeeded. So a cache you hold keeps its values through the next Forward and is
/// overwritten by the one after; copy them (for example with <see cref="NormalizedInputToMatrix"/>) to keep them.
/// </para>
/// <para>
/// Reading a cache allocates nothing except <see cref="NormalizedInputToMatrix"/>. Any number of threads may read
/// a cache while its layer is not running a Forward; a backward strategy must not be run on one cache from two
/// threads at once (the closed form keeps per-cache scratch state).
/// </para>
/// </remarks>
public sealed class BatchNormCache
{
    private readonly Matrix<double> _normalized;
    private readonly double[] _mean;
    private readonly double[] _variance;
    private readonly double[] _inverseStd;

    internal BatchNormCache(int batchSize, int features, ColumnRunner runner, int virtualBatches = 1)
    {
        Runner = runner;
        VirtualBatches = virtualBatches;
        _normalized = Matrix<double>.Build.Dense(batchSize, features);
        _mean = new double[features * virtualBatches];
        _variance = new double[features * virtualBatches];
        _inverseStd = new double[features * virtualBatches];
    }

    /// <summary>Gets N, the number of rows of the input the cache was made from.</summary>
    public int BatchSize => _normalized.RowCount;

    /// <summary>Gets D, the number of features (columns).</summary>
    public int Features => _normalized.ColumnCount;

    /// <summary>
    /// Gets a value indicating whether the statistics are the batch's own (training Forward, true) or the
    /// running statistics (inference Forward, false). Backward uses the full gradient through μ and σ² in
    /// the first case and the frozen-statistics gradient in the second.
    /// </summary>
    public bool IsTraining { get; internal set; }

    /// <summary>
    /// Gets B, the number of blocks of rows normalized separately: 1, or N/<see cref="BatchNormLayer.VirtualBatchSize"/>
    /// after a training Forward with ghost batches. With B &gt; 1, <see cref="Mean"/>, <see cref="Variance"/> and
    /// <see cref="InverseStandardDeviation"/> hold B values per feature: block b of feature j at index j·B + b.
    /// </summary>
    public int VirtualBatches { get; }

    /// <summary>Gets the number of rows in each block, N/B.</summary>
    public int VirtualBatchSize => BatchSize / VirtualBatches;

    /// <summary>Gets the ε the layer normalized with.</summary>
    public double Epsilon { get; internal set; }

    /// <summary>Gets μ per feature (per feature and block with ghost batches): the batch mean in training, the running mean in inference.</summary>
    public ReadOnlySpan<double> Mean => _mean;

    /// <summary>Gets σ² per feature: the biased batch variance in training, the running variance in inference.</summary>
    public ReadOnlySpan<double> Variance => _variance;

    /// <summary>Gets 1/√(σ² + ε) per feature.</summary>
    public ReadOnlySpan<double> InverseStandardDeviation => _inverseStd;

    /// <summary>Gets the whole of x̂ in column-major order: feature j occupies elements [j·N, (j+1)·N).</summary>
    public ReadOnlySpan<double> NormalizedInput => DenseColumns.Data(_normalized);

    /// <summary>The dense matrix behind x̂; for the built-in strategies, which never write to it.</summary>
    internal Matrix<double> NormalizedMatrix => _normalized;

    /// <summary>The number of rows the statistics were computed over: N, or all workers' rows when synchronized.</summary>
    internal int GlobalBatchSize { get; set; }

    /// <summary>The exchange a synchronized training Forward used, which its Backward must use too; null otherwise.</summary>
    internal IStatisticsExchange? Exchange { get; set; }

    /// <summary>The layer's thread splitter, which strategies may use for column-parallel work.</summary>
    internal ColumnRunner Runner { get; }

    /// <summary>Per-cache scratch state of the closed-form strategy, so that its steps allocate nothing.</summary>
    internal IColumnWork? StrategyWork { get; set; }

    internal Span<double> WritableMean => _mean;

    internal Span<double> WritableVariance => _variance;

    internal Span<double> WritableInverseStd => _inverseStd;

    /// <summary>Gets x̂ for one feature: the normalized values of column <paramref name="feature"/>, one per row.</summary>
    /// <param name="feature">The column index, 0 ≤ feature &lt; <see cref="Features"/>.</param>
    /// <returns>A read-only view of N values.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="feature"/> is outside [0, D).</exception>
    public ReadOnlySpan<double> NormalizedColumn(int feature)
    {
        if ((uint)feature >= (uint)Features)
        {
            throw new ArgumentOutOfRangeException(nameof(feature), feature, $"The feature index must lie in [0, {Features}).");
        }

        return NormalizedInput.Slice(feature * BatchSize, BatchSize);
    }

    /// <summary>Copies x̂ into a new N×D matrix, for inspection or for a strategy written with MathNet operators.</summary>
    /// <returns>A new dense matrix that the caller owns.</returns>
    public Matrix<double> NormalizedInputToMatrix() => _normalized.Clone();
}
