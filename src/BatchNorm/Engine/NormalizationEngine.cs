using System;
using System.Threading;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The shared core of every layer: forward statistics, the fused normalize, and the backward pass driven segment by
/// segment through a <see cref="BackwardStrategy"/>, over either geometry of <see cref="SegmentLayout"/>.
/// </summary>
/// <remarks>
/// <para><b>Forward, column blocks:</b> per column and block, the statistics (<see cref="ColumnKernels.Moments"/>, or
/// given ones: running or synchronized), then x̂ and y in one fused pass while the block is still in cache. Columns are
/// split across threads by the <see cref="ColumnRunner"/>.</para>
/// <para><b>Forward, row groups:</b> per group, the statistics of every row at once (<see cref="LaneKernels.Moments"/>),
/// then x̂ and y column by column.</para>
/// <para><b>Backward:</b> per segment, the strategy's sums and then its input gradient. With synchronized statistics the
/// two steps run apart, and the sums of all workers are added up in between (<see cref="StatisticsSynchronizer"/>).
/// dL/dγ and dL/dβ per feature are the first two sums, added over a column's blocks; for row groups, where γ varies
/// within a segment, they are the column sums Σ dy·x̂ and Σ dy.</para>
/// <para>One engine serves one layer, which serves one thread at a time; it keeps its scratch so that steps allocate nothing.</para>
/// </remarks>
internal sealed class NormalizationEngine
{
    private readonly ColumnForward _forward;
    private readonly ColumnBackward _backward;
    private readonly LaneScratch _lanes = new();
    private double[] _center = [], _correction = [], _givenVariance = [];
    private double[] _sums = [];
    private double[] _rowSegment = [];

    public NormalizationEngine(ColumnRunner runner)
    {
        Runner = runner;
        _forward = new ColumnForward(this);
        _backward = new ColumnBackward(this);
    }

    /// <summary>Gets the thread splitter of the column geometry.</summary>
    public ColumnRunner Runner { get; }

    /// <summary>
    /// Buffers for statistics a layer supplies itself (the running statistics, or the merged statistics of synchronized
    /// workers), one value per segment, for <see cref="ForwardColumns"/> with <c>given</c> set.
    /// </summary>
    public void GivenStatistics(int segments, out Span<double> center, out Span<double> correction, out Span<double> variance)
    {
        center = Buffer(ref _center, segments);
        correction = Buffer(ref _correction, segments);
        variance = Buffer(ref _givenVariance, segments);
    }

    /// <summary>
    /// Normalizes a column-block layout: y = scale·x̂ + shift per feature, where scale and shift are γ and β, or what
    /// <paramref name="affine"/> makes of them from the statistics. Writes x̂, μ, σ² and 1/√(σ² + ε) into the cache.
    /// </summary>
    /// <param name="x">The input, dense.</param>
    /// <param name="y">Receives the output, dense.</param>
    /// <param name="cache">Receives x̂ and the statistics; its layout is the step's.</param>
    /// <param name="gamma">γ per feature.</param>
    /// <param name="beta">β per feature.</param>
    /// <param name="affine">What replaces γ and β per feature, or null for γ and β.</param>
    /// <param name="given">Use the statistics put into <see cref="GivenStatistics"/>, rather than compute them.</param>
    /// <returns>The first column whose statistics are not finite, or −1.</returns>
    public int ForwardColumns(Matrix<double> x, Matrix<double> y, NormalizationCache cache, Vector<double> gamma, Vector<double> beta, ISegmentAffine? affine, bool given)
    {
        _forward.Start(x, y, cache, gamma, beta, affine, given);
        try
        {
            Runner.Run(_forward, cache.BatchSize, cache.Features);
            return _forward.BadColumn;
        }
        finally
        {
            _forward.Finish();
        }
    }

    /// <summary>Normalizes a row-group layout: each group of each row with its own statistics, y = γ·x̂ + β per feature.</summary>
    /// <returns>The index (group·N + row) of the first segment whose statistics are not finite, or −1.</returns>
    public int ForwardRows(Matrix<double> x, Matrix<double> y, NormalizationCache cache, Vector<double> gamma, Vector<double> beta)
    {
        SegmentLayout layout = cache.Layout;
        int n = layout.Rows, size = layout.SegmentColumns, segments = layout.Count;
        ReadOnlySpan<double> data = DenseColumns.Data(x);
        Span<double> center = Buffer(ref _center, segments), correction = Buffer(ref _correction, segments);
        Span<double> mean = cache.WritableMean, variance = cache.WritableVariance, inverseStd = cache.WritableInverseStd;

        // The statistics of every group of every row first: nothing is written to y until they are all finite.
        for (int g = 0; g < layout.ColumnBlocks; g++)
        {
            LaneKernels.Moments(data, n, g * size, size, center.Slice(g * n, n), correction.Slice(g * n, n), variance.Slice(g * n, n), _lanes);
        }

        for (int s = 0; s < segments; s++)
        {
            mean[s] = center[s] + correction[s];
            if (!double.IsFinite(mean[s]) || !double.IsFinite(variance[s]))
            {
                return s;
            }

            inverseStd[s] = 1.0 / Math.Sqrt(variance[s] + cache.Epsilon);
        }

        Span<double> xHat = DenseColumns.Data(cache.NormalizedMatrix), output = DenseColumns.Data(y);
        for (int g = 0; g < layout.ColumnBlocks; g++)
        {
            LaneKernels.Normalize(
                data, n, g * size, size, center.Slice(g * n, n), correction.Slice(g * n, n), inverseStd.Slice(g * n, n), DenseColumns.Data(gamma), DenseColumns.Data(beta), xHat, output);
        }

        return -1;
    }

    /// <summary>The error for a segment whose statistics are not finite: the column, or the row and group.</summary>
    public static ArgumentException NotFinite(SegmentLayout layout, int bad, string parameterName)
        => layout.ByRow
            ? Guard.NotFiniteRow(parameterName, bad % layout.RowBlocks, bad / layout.RowBlocks, "cannot be normalized")
            : Guard.NotFinite(parameterName, bad, "cannot be normalized");

    /// <summary>
    /// The whole backward pass of one worker, unsynchronized: dL/dx, and per feature dL/dγ′ and dL/dβ′ of the affine map
    /// y = γ′·x̂ + β′ the Forward applied, where <paramref name="scale"/> holds γ′.
    /// </summary>
    /// <returns>The first feature whose gradient sums are not finite, or −1.</returns>
    public int Backward(BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<double> dy, Matrix<double> dx, Span<double> scaleGradient, Span<double> shiftGradient)
    {
        if (cache.Layout.ByRow)
        {
            return BackwardRows(strategy, cache, scale, dy, dx, scaleGradient, shiftGradient);
        }

        RunColumns(strategy, cache, scale, dy, dx, BackwardSteps.Both);
        return ParameterGradients(cache, strategy.SumCount, scaleGradient, shiftGradient);
    }

    /// <summary>
    /// The backward pass of a synchronized Forward: every segment's sums, then the sums of all workers added up through
    /// <paramref name="synchronizer"/>, then every segment's input gradient with them.
    /// </summary>
    /// <returns>The first feature whose gradient sums are not finite, or −1; every worker sees the same sums, so every worker reports the same feature.</returns>
    public int BackwardSynchronized(
        BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<double> dy, Matrix<double> dx, Span<double> scaleGradient, Span<double> shiftGradient, StatisticsSynchronizer synchronizer)
    {
        RunColumns(strategy, cache, scale, dy, dx, BackwardSteps.Sums);
        int bad = synchronizer.AddUp(_sums.AsSpan(0, cache.Layout.Count * strategy.SumCount), strategy.SumCount);
        if (bad >= 0)
        {
            return bad;
        }

        RunColumns(strategy, cache, scale, dy, dx, BackwardSteps.InputGradient);
        return ParameterGradients(cache, strategy.SumCount, scaleGradient, shiftGradient);
    }

    private void RunColumns(BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<double> dy, Matrix<double> dx, BackwardSteps steps)
    {
        Buffer(ref _sums, cache.Layout.Count * strategy.SumCount);
        _backward.Start(strategy, cache, scale, dy, dx, steps);
        try
        {
            Runner.Run(_backward, cache.BatchSize, cache.Features);
        }
        finally
        {
            _backward.Finish();
        }
    }

    /// <summary>dL/dγ′ and dL/dβ′ per feature: the first two sums of each of its segments, added in block order.</summary>
    private int ParameterGradients(NormalizationCache cache, int sumCount, Span<double> scaleGradient, Span<double> shiftGradient)
    {
        int blocks = cache.RowBlocks, bad = -1;
        for (int j = 0; j < cache.Features; j++)
        {
            double dScale = 0, dShift = 0;
            for (int b = 0; b < blocks; b++)
            {
                int at = ((j * blocks) + b) * sumCount;
                dScale += _sums[at];
                dShift += _sums[at + 1];
            }

            scaleGradient[j] = dScale;
            shiftGradient[j] = dShift;
            if (bad < 0 && (!double.IsFinite(dScale) || !double.IsFinite(dShift)))
            {
                bad = j;
            }
        }

        return bad;
    }

    /// <summary>
    /// Row groups: dL/dγ and dL/dβ are column sums, since each feature has its own γ within a segment; then the strategy's
    /// vectorized pass over all rows, or each segment gathered into contiguous scratch.
    /// </summary>
    private int BackwardRows(BackwardStrategy strategy, NormalizationCache cache, double[] gamma, Matrix<double> dy, Matrix<double> dx, Span<double> gammaGradient, Span<double> betaGradient)
    {
        int bad = -1;
        for (int j = 0; j < cache.Features; j++)
        {
            (betaGradient[j], gammaGradient[j]) = ColumnKernels.SumAndDot(DenseColumns.Column(dy, j), cache.NormalizedColumn(j));
            if (bad < 0 && (!double.IsFinite(betaGradient[j]) || !double.IsFinite(gammaGradient[j])))
            {
                bad = j;
            }
        }

        if (bad >= 0 || strategy.TryBackwardRowGroups(cache, gamma, dy, dx, _lanes))
        {
            return bad;
        }

        // Each group of each row, gathered: the gradient at x̂ (γⱼ·dyⱼ, so the segment's γ is 1) and x̂.
        int n = cache.BatchSize, size = cache.SegmentColumns, sumCount = strategy.SumCount;
        Span<double> scratch = Buffer(ref _rowSegment, (3 * size) + sumCount);
        Span<double> g = scratch[..size], xHat = scratch.Slice(size, size), segmentDx = scratch.Slice(2 * size, size), sums = scratch.Slice(3 * size, sumCount);
        ReadOnlySpan<double> dyData = DenseColumns.Data(dy), xHatData = cache.NormalizedInput;
        Span<double> dxData = DenseColumns.Data(dx);
        for (int group = 0; group < cache.ColumnBlocks; group++)
        {
            for (int i = 0; i < n; i++)
            {
                for (int k = 0; k < size; k++)
                {
                    int j = (group * size) + k;
                    g[k] = gamma[j] * dyData[(j * n) + i];
                    xHat[k] = xHatData[(j * n) + i];
                }

                var segment = new BackwardSegment(g, xHat, 1, cache.InverseStandardDeviation[(group * n) + i], cache.Epsilon, frozenStatistics: false, size, 0, stream: false);
                strategy.SumsUnchecked(segment, sums, segmentDx);
                strategy.InputGradientUnchecked(segment, sums, segmentDx);
                for (int k = 0; k < size; k++)
                {
                    dxData[(((group * size) + k) * n) + i] = segmentDx[k];
                }
            }
        }

        return -1;
    }

    private static Span<double> Buffer(ref double[] buffer, int length)
    {
        if (buffer.Length < length)
        {
            buffer = new double[length];
        }

        return buffer.AsSpan(0, length);
    }

    /// <summary>Which steps of the strategy a backward pass over the columns runs.</summary>
    [Flags]
    private enum BackwardSteps
    {
        Sums = 1,
        InputGradient = 2,
        Both = Sums | InputGradient,
    }

    /// <summary>
    /// One Forward over a range of columns. Each block is finished while it is still in cache: its statistics, then x̂ and
    /// y in one fused pass. A column whose statistics are not finite is recorded and skipped; the caller throws for the
    /// first such column.
    /// </summary>
    private sealed class ColumnForward(NormalizationEngine engine) : IColumnWork
    {
        private Matrix<double>? _x, _y;
        private NormalizationCache? _cache;
        private Vector<double>? _gamma, _beta;
        private ISegmentAffine? _affine;
        private bool _given;
        private int _badColumn;

        public int BadColumn => _badColumn == int.MaxValue ? -1 : _badColumn;

        public void Start(Matrix<double> x, Matrix<double> y, NormalizationCache cache, Vector<double> gamma, Vector<double> beta, ISegmentAffine? affine, bool given)
        {
            (_x, _y, _cache, _gamma, _beta, _affine, _given) = (x, y, cache, gamma, beta, affine, given);
            _badColumn = int.MaxValue;
        }

        public void Finish() => (_x, _y, _cache, _gamma, _beta, _affine) = (null, null, null, null, null, null);

        public void Run(int start, int end)
        {
            NormalizationCache cache = _cache!;
            int n = cache.BatchSize, blocks = cache.RowBlocks, rows = cache.SegmentRows;
            bool stream = (long)n * cache.Features >= ColumnKernels.StreamingThreshold;
            Span<double> mean = cache.WritableMean, variance = cache.WritableVariance, inverseStd = cache.WritableInverseStd;
            Span<double> xHat = DenseColumns.Data(cache.NormalizedMatrix);
            Span<double> gamma = DenseColumns.Data(_gamma!), beta = DenseColumns.Data(_beta!);
            for (int j = start; j < end; j++)
            {
                for (int b = 0; b < blocks; b++)
                {
                    // Block b of column j: the whole column unless ghost batches split it.
                    int k = (j * blocks) + b, offset = (j * n) + (b * rows);
                    ReadOnlySpan<double> x = DenseColumns.Column(_x!, j).Slice(b * rows, rows);
                    double center, correction;
                    if (_given)
                    {
                        center = engine._center[k];
                        correction = engine._correction[k];
                        variance[k] = engine._givenVariance[k];
                    }
                    else
                    {
                        // The mean is kept in two parts, center + correction: see ColumnKernels.Moments.
                        ColumnKernels.Moments(x, out center, out correction, out variance[k]);
                    }

                    mean[k] = center + correction;
                    if (!double.IsFinite(mean[k]) || !double.IsFinite(variance[k]))
                    {
                        RecordBadColumn(j);
                        break;
                    }

                    inverseStd[k] = 1.0 / Math.Sqrt(variance[k] + cache.Epsilon);
                    double scale = gamma[j], shift = beta[j];
                    _affine?.Affine(j, mean[k], variance[k], ref scale, ref shift);
                    ColumnKernels.Normalize(x, center, correction, inverseStd[k], scale, shift, xHat.Slice(offset, rows), DenseColumns.Column(_y!, j).Slice(b * rows, rows), stream);
                }
            }
        }

        private void RecordBadColumn(int column)
        {
            int seen;
            while (column < (seen = Volatile.Read(ref _badColumn)) && Interlocked.CompareExchange(ref _badColumn, column, seen) != seen)
            {
            }
        }
    }

    /// <summary>One backward pass over a range of columns: per block, the strategy's sums, its input gradient, or both.</summary>
    private sealed class ColumnBackward(NormalizationEngine engine) : IColumnWork
    {
        private BackwardStrategy? _strategy;
        private NormalizationCache? _cache;
        private double[]? _scale;
        private Matrix<double>? _dy, _dx;
        private BackwardSteps _steps;

        public void Start(BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<double> dy, Matrix<double> dx, BackwardSteps steps)
            => (_strategy, _cache, _scale, _dy, _dx, _steps) = (strategy, cache, scale, dy, dx, steps);

        public void Finish() => (_strategy, _cache, _scale, _dy, _dx) = (null, null, null, null, null);

        public void Run(int start, int end)
        {
            BackwardStrategy strategy = _strategy!;
            NormalizationCache cache = _cache!;
            int blocks = cache.RowBlocks, rows = cache.SegmentRows, sumCount = strategy.SumCount;
            bool stream = (long)cache.BatchSize * cache.Features >= ColumnKernels.StreamingThreshold;
            ReadOnlySpan<double> inverseStd = cache.InverseStandardDeviation;
            for (int j = start; j < end; j++)
            {
                for (int b = 0; b < blocks; b++)
                {
                    int k = (j * blocks) + b;
                    var segment = new BackwardSegment(
                        DenseColumns.Column(_dy!, j).Slice(b * rows, rows),
                        cache.NormalizedColumn(j).Slice(b * rows, rows),
                        _scale![j],
                        inverseStd[k],
                        cache.Epsilon,
                        cache.FrozenStatistics,
                        cache.SegmentValues,
                        cache.SegmentOffset,
                        stream);
                    Span<double> sums = engine._sums.AsSpan(k * sumCount, sumCount), dx = DenseColumns.Column(_dx!, j).Slice(b * rows, rows);
                    if ((_steps & BackwardSteps.Sums) != 0)
                    {
                        strategy.SumsUnchecked(segment, sums, dx);
                    }

                    if ((_steps & BackwardSteps.InputGradient) != 0)
                    {
                        strategy.InputGradientUnchecked(segment, sums, dx);
                    }
                }
            }
        }
    }
}

/// <summary>
/// A layer whose Forward applies another affine map than γ and β, worked out per feature from the batch statistics
/// (batch renormalization's γ·r and γ·d + β).
/// </summary>
internal interface ISegmentAffine
{
    /// <summary>Replaces γ and β of a feature by the scale and shift the layer applies to x̂, given the segment's μ and σ².</summary>
    void Affine(int feature, double mean, double variance, ref double scale, ref double shift);
}
