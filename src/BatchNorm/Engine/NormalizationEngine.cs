using System;
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Threading;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The shared core of every layer: forward statistics, the fused normalize, and the backward pass driven segment by
/// segment through a <see cref="BackwardStrategy"/>, over either geometry of <see cref="SegmentLayout"/>.
/// </summary>
/// <remarks>
/// <para><b>Forward, column blocks:</b> per column and block, the statistics (<see cref="ColumnKernels.Moments{T}"/>, or
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
    private readonly ColumnForward<double> _forward;
    private readonly ColumnBackward<double> _backward;
    private readonly LaneScratch _lanes = new();
    private ColumnForward<float>? _forwardSingle;
    private ColumnBackward<float>? _backwardSingle;
    private Matrix<double>? _wideDy, _wideDx;
    private NormalizationCache? _wideCache;
    private double[] _center = [], _correction = [], _givenVariance = [];
    private double[] _sums = [];
    private double[] _rowSegment = [];

    public NormalizationEngine(ColumnRunner runner)
    {
        Runner = runner;
        _forward = new ColumnForward<double>(this);
        _backward = new ColumnBackward<double>(this);
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
    /// <returns>The first column that failed (its statistics or its output not finite), or none.</returns>
    public StepFault ForwardColumns<T>(Matrix<T> x, Matrix<T> y, NormalizationCache cache, Vector<double> gamma, Vector<double> beta, ISegmentAffine? affine, bool given)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        ColumnForward<T> forward = Forward<T>();
        forward.Start(x, y, cache, gamma, beta, affine, given);
        try
        {
            Runner.Run(forward, cache.BatchSize, cache.Features, cache.ColumnBlocks);
            return forward.Fault;
        }
        finally
        {
            forward.Finish();
        }
    }

    /// <summary>The column Forward of element type T (one object per type, kept for the next step).</summary>
    private ColumnForward<T> Forward<T>()
        where T : unmanaged, IEquatable<T>, IFormattable
        => typeof(T) == typeof(double) ? (ColumnForward<T>)(object)_forward : (ColumnForward<T>)(object)(_forwardSingle ??= new ColumnForward<float>(this));

    /// <summary>The column Backward of element type T.</summary>
    private ColumnBackward<T> BackwardOf<T>()
        where T : unmanaged, IEquatable<T>, IFormattable
        => typeof(T) == typeof(double) ? (ColumnBackward<T>)(object)_backward : (ColumnBackward<T>)(object)(_backwardSingle ??= new ColumnBackward<float>(this));

    /// <summary>
    /// Normalizes a row-group layout: each group of each row with its own statistics, y = γ·x̂ + β per column. Centered
    /// (<see cref="NormalizationCache.Centered"/>), the statistics are μ and σ²; otherwise (RMS norm) the mean is 0 and the
    /// variance slot holds the mean square, so that x̂ = x/√(ms + ε) by the same formula.
    /// </summary>
    /// <param name="x">The input, dense.</param>
    /// <param name="y">Receives the output, dense.</param>
    /// <param name="cache">Receives x̂ and the statistics.</param>
    /// <param name="gamma">γ per column (a channel's value repeated over its positions).</param>
    /// <param name="beta">β per column.</param>
    /// <returns>None, or the first segment (group·N + row) whose statistics are not finite, or the first column whose output is not.</returns>
    public StepFault ForwardRows<T>(Matrix<T> x, Matrix<T> y, NormalizationCache cache, ReadOnlySpan<double> gamma, ReadOnlySpan<double> beta)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        SegmentLayout layout = cache.Layout;
        int n = layout.Rows, size = layout.SegmentColumns, segments = layout.Count;
        ReadOnlySpan<T> data = DenseColumns.Data(x);
        Span<double> center = Buffer(ref _center, segments), correction = Buffer(ref _correction, segments);
        Span<double> mean = cache.WritableMean, variance = cache.WritableVariance, inverseStd = cache.WritableInverseStd;

        // The statistics of every group of every row first: nothing is written to y until they are all finite.
        for (int g = 0; g < layout.ColumnBlocks; g++)
        {
            if (cache.Centered)
            {
                LaneKernels.Moments(data, n, g * size, size, center.Slice(g * n, n), correction.Slice(g * n, n), variance.Slice(g * n, n), _lanes);
            }
            else
            {
                LaneKernels.MeanSquares(data, n, g * size, size, variance.Slice(g * n, n), _lanes);
            }
        }

        if (!cache.Centered)
        {
            center.Clear();
            correction.Clear();
        }

        int s = 0;
        for (; QuadKernels.IsSupported && s <= segments - 4; s += 4)
        {
            Vector256<double> segmentMean = Vector256.Create<double>(center[s..]) + Vector256.Create<double>(correction[s..]);
            Vector256<double> segmentVariance = Vector256.Create<double>(variance[s..]);
            if (!Vector256.EqualsAll((segmentMean - segmentMean) + (segmentVariance - segmentVariance), Vector256<double>.Zero))
            {
                break;
            }

            segmentMean.CopyTo(mean[s..]);
            QuadKernels.InverseStandardDeviation(segmentVariance, cache.Epsilon).CopyTo(inverseStd[s..]);
        }

        for (; s < segments; s++)
        {
            mean[s] = center[s] + correction[s];
            if (!double.IsFinite(mean[s]) || !double.IsFinite(variance[s]))
            {
                return new StepFault(s, FaultCause.Statistics);
            }

            inverseStd[s] = ElementFormulas.InverseStandardDeviation(variance[s], cache.Epsilon);
        }

        Span<T> xHat = cache.Normalized<T>(), output = DenseColumns.Data(y);
        for (int g = 0; g < layout.ColumnBlocks; g++)
        {
            bool finite = LaneKernels.Normalize(
                data, n, g * size, size, center.Slice(g * n, n), correction.Slice(g * n, n), inverseStd.Slice(g * n, n), gamma, beta, xHat, output);
            for (int j = g * size; !finite && j < (g + 1) * size; j++)
            {
                StepFault fault = OutputFault<T>(j, DenseColumns.Column(x, j), cache.NormalizedColumnOf<T>(j), DenseColumns.Column(y, j), gamma[j], beta[j]);
                if (fault.Failed)
                {
                    return fault;
                }
            }
        }

        return StepFault.None;
    }

    /// <summary>
    /// Why x̂ or y = scale·x̂ + shift came out non-finite somewhere: a scale or shift that is not finite, or y or x̂
    /// overflowing (as stored) where x is finite. Where x itself is not (an inference Forward passes NaN and ±∞
    /// through), x̂ and y may not be either.
    /// </summary>
    private static StepFault OutputFault<T>(int column, ReadOnlySpan<T> x, ReadOnlySpan<T> xHat, ReadOnlySpan<T> y, double scale, double shift)
        where T : unmanaged
    {
        if (!double.IsFinite(scale) || !double.IsFinite(shift))
        {
            return new StepFault(column, FaultCause.Parameters);
        }

        for (int i = 0; i < y.Length; i++)
        {
            bool stored = double.IsFinite(Elements<T>.ToDouble(y[i])) && double.IsFinite(Elements<T>.ToDouble(xHat[i]));
            if (!stored && double.IsFinite(Elements<T>.ToDouble(x[i])))
            {
                return new StepFault(column, FaultCause.Output);
            }
        }

        return StepFault.None;
    }

    /// <summary>
    /// Why the gradient sums over <paramref name="width"/> columns from <paramref name="first"/> (a feature, or a channel's
    /// columns) are not finite, at the first column to blame: one where dy holds NaN or ±∞, or else one where the cached x̂ does; the block's first column when dy is
    /// finite but its sums overflow.
    /// </summary>
    internal static StepFault SumsFault<T>(int first, int width, NormalizationCache cache, Matrix<T> dy)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        for (int j = first; j < first + width; j++)
        {
            if (!ColumnKernels.AllFinite(DenseColumns.Column(dy, j)))
            {
                return new(j, FaultCause.OutputGradient);
            }
        }

        for (int j = first; j < first + width; j++)
        {
            if (!ColumnKernels.AllFinite<T>(cache.NormalizedColumnOf<T>(j)))
            {
                return new(j, FaultCause.Cache);
            }
        }

        return new(first, FaultCause.OutputGradient);
    }

    /// <summary>
    /// The whole backward pass of one worker, unsynchronized: dL/dx, and per feature dL/dγ′ and dL/dβ′ of the affine map
    /// y = γ′·x̂ + β′ the Forward applied, where <paramref name="scale"/> holds γ′.
    /// </summary>
    /// <returns>None, or the first feature whose gradient sums or input gradient are not finite, and why.</returns>
    public StepFault Backward<T>(BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<T> dy, Matrix<T> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (!ReadsInPlace<T>(strategy))
        {
            StepFault fault = Backward(strategy, Widened(cache), scale, Widened(dy), WideDx(dx), scaleGradient, shiftGradient);
            return NarrowDx(fault, dx);
        }

        if (cache.Layout.ByRow)
        {
            return BackwardRows(strategy, cache, scale, dy, dx, scaleGradient, shiftGradient);
        }

        StepFault dxFault = RunColumns(strategy, cache, scale, dy, dx, BackwardSteps.Both);
        return StepFault.First(ParameterGradients(cache, strategy.SumCount, dy, scaleGradient, shiftGradient), dxFault);
    }

    /// <summary>
    /// The backward pass of a synchronized Forward: every segment's sums, then the sums of all workers added up through
    /// <paramref name="synchronizer"/>, then every segment's input gradient with them.
    /// </summary>
    /// <returns>None, or the first feature that failed on this worker, and why. A worker whose own sums are not finite
    /// reports its feature; the others throw, naming it (see <see cref="StatisticsSynchronizer.AddUp"/>).</returns>
    public StepFault BackwardSynchronized<T>(
        BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<T> dy, Matrix<T> dx, Span<double> scaleGradient, Span<double> shiftGradient, StatisticsSynchronizer synchronizer)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (!ReadsInPlace<T>(strategy))
        {
            StepFault fault = BackwardSynchronized(strategy, Widened(cache), scale, Widened(dy), WideDx(dx), scaleGradient, shiftGradient, synchronizer);
            return NarrowDx(fault, dx);
        }

        RunColumns(strategy, cache, scale, dy, dx, BackwardSteps.Sums);
        int bad = synchronizer.AddUp(_sums.AsSpan(0, cache.Layout.Count * strategy.SumCount), strategy.SumCount, cache.Layout.SegmentColumns);
        if (bad >= 0)
        {
            return SumsFault(bad * cache.Layout.SegmentColumns, cache.Layout.SegmentColumns, cache, dy);
        }

        StepFault dxFault = RunColumns(strategy, cache, scale, dy, dx, BackwardSteps.InputGradient);
        return StepFault.First(ParameterGradients(cache, strategy.SumCount, dy, scaleGradient, shiftGradient), dxFault);
    }

    /// <summary>
    /// Whether the strategy reads segments of element type T where they lie: every strategy reads double, and the
    /// closed form reads float too. For any other strategy a float step is widened (exactly) into double scratch, and
    /// its dx rounded back.
    /// </summary>
    private static bool ReadsInPlace<T>(BackwardStrategy strategy) => typeof(T) == typeof(double) || strategy is ClosedFormBackward;

    /// <summary>
    /// dx of a widened step rounded into <paramref name="dx"/>, and the step's fault, or else the first column whose dx
    /// is finite in double but not once rounded to T.
    /// </summary>
    private StepFault NarrowDx<T>(StepFault fault, Matrix<T> dx)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        Matrix<double> wide = _wideDx!;
        Elements<T>.Narrow(DenseColumns.Data(wide), DenseColumns.Data(dx));
        for (int j = 0; !fault.Failed && j < wide.ColumnCount; j++)
        {
            if (!Elements<T>.AllFinite(DenseColumns.Column(wide, j)))
            {
                fault = new StepFault(j, FaultCause.InputGradient);
            }
        }

        return fault;
    }

    /// <summary>dy widened into scratch that the engine keeps.</summary>
    private Matrix<double> Widened<T>(Matrix<T> dy)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        Matrix<double> wide = DenseColumns.Scratch(dy.RowCount, dy.ColumnCount, ref _wideDy);
        Elements<T>.Widen(DenseColumns.Data(dy), DenseColumns.Data(wide));
        return wide;
    }

    /// <summary>The cache with x̂ widened, in a cache object that the engine keeps.</summary>
    private NormalizationCache Widened(NormalizationCache cache) => cache.WidenInto(ref _wideCache);

    /// <summary>Double scratch for dx, shaped as <paramref name="dx"/>.</summary>
    private Matrix<double> WideDx<T>(Matrix<T> dx)
        where T : unmanaged, IEquatable<T>, IFormattable
        => DenseColumns.Scratch(dx.RowCount, dx.ColumnCount, ref _wideDx);

    /// <returns>The first column whose input gradient came out non-finite, or none.</returns>
    private StepFault RunColumns<T>(BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<T> dy, Matrix<T> dx, BackwardSteps steps)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        Buffer(ref _sums, cache.Layout.Count * strategy.SumCount);
        ColumnBackward<T> backward = BackwardOf<T>();
        backward.Start(strategy, cache, scale, dy, dx, steps);
        try
        {
            Runner.Run(backward, cache.BatchSize, cache.Features, cache.ColumnBlocks);
            StepFault fault = backward.Fault;
            if (!fault.Failed || cache.Layout.SegmentColumns == 1)
            {
                return fault;
            }

            // The workers number column blocks. A channel of several columns is blamed on its first column where dy (or the
            // cached x̂) is not finite, and only when both are on its first column where dx overflowed.
            int n = cache.BatchSize, width = cache.Layout.SegmentColumns;
            StepFault cause = SumsFault(fault.Index * width, width, cache, dy);
            if (cause.Cause == FaultCause.OutputGradient && ColumnKernels.AllFinite(DenseColumns.Data(dy).Slice(fault.Index * width * n, width * n)))
            {
                int at = ColumnKernels.FirstNonFinite(DenseColumns.Data(dx).Slice(fault.Index * width * n, width * n));
                return new StepFault((fault.Index * width) + (Math.Max(at, 0) / n), fault.Cause);
            }

            return cause;
        }
        finally
        {
            backward.Finish();
        }
    }

    /// <summary>dL/dγ′ and dL/dβ′ per column block (feature or channel): the first two sums of each of its segments, added in row-block order.</summary>
    private StepFault ParameterGradients<T>(NormalizationCache cache, int sumCount, Matrix<T> dy, Span<double> scaleGradient, Span<double> shiftGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        int blocks = cache.RowBlocks, bad = -1;
        for (int j = 0; j < cache.ColumnBlocks; j++)
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

        return bad < 0 ? StepFault.None : SumsFault(bad * cache.Layout.SegmentColumns, cache.Layout.SegmentColumns, cache, dy);
    }

    /// <summary>
    /// Row groups: dL/dγ and dL/dβ are column sums, since each feature has its own γ within a segment; then the strategy's
    /// vectorized pass over all rows, or each segment gathered into contiguous scratch.
    /// </summary>
    private StepFault BackwardRows<T>(BackwardStrategy strategy, NormalizationCache cache, double[] gamma, Matrix<T> dy, Matrix<T> dx, Span<double> gammaGradient, Span<double> betaGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        int n = cache.BatchSize, j = 0;
        if (n <= QuadKernels.MaxLength && QuadKernels.IsSupported)
        {
            // Four columns at a time, each summed as ColumnKernels.SumAndDot sums it.
            ref T dy0 = ref MemoryMarshal.GetReference(DenseColumns.Data(dy)), xHat0 = ref MemoryMarshal.GetReference(cache.Normalized<T>());
            for (; j <= cache.Features - 4; j += 4)
            {
                QuadKernels.SumAndDot(ref Unsafe.Add(ref dy0, j * n), ref Unsafe.Add(ref xHat0, j * n), n, out Vector256<double> sumDy, out Vector256<double> sumDyXHat);
                if (!Vector256.EqualsAll((sumDy - sumDy) + (sumDyXHat - sumDyXHat), Vector256<double>.Zero))
                {
                    break;
                }

                sumDy.CopyTo(betaGradient[j..]);
                sumDyXHat.CopyTo(gammaGradient[j..]);
            }
        }

        for (; j < cache.Features; j++)
        {
            (betaGradient[j], gammaGradient[j]) = ColumnKernels.SumAndDot<T>(DenseColumns.Column(dy, j), cache.NormalizedColumnOf<T>(j));
            if (!double.IsFinite(betaGradient[j]) || !double.IsFinite(gammaGradient[j]))
            {
                return SumsFault(j, 1, cache, dy);
            }
        }

        bool vectorized = typeof(T) == typeof(double)
            ? strategy.TryBackwardRowGroups(cache, gamma, (Matrix<double>)(object)dy, (Matrix<double>)(object)dx, _lanes, out bool finite)
            : ClosedFormBackward.BackwardRowGroupsOf(cache, gamma, dy, dx, _lanes, out finite);
        if (vectorized)
        {
            return finite ? StepFault.None : FirstNonFiniteColumn(dx);
        }

        // Each group of each row, gathered: the gradient at x̂ (γⱼ·dyⱼ, so the segment's γ is 1) and x̂.
        int size = cache.SegmentColumns, sumCount = strategy.SumCount;
        Span<double> scratch = Buffer(ref _rowSegment, (3 * size) + sumCount);
        Span<double> g = scratch[..size], xHat = scratch.Slice(size, size), segmentDx = scratch.Slice(2 * size, size), sums = scratch.Slice(3 * size, sumCount);
        ReadOnlySpan<T> dyData = DenseColumns.Data(dy), xHatData = cache.Normalized<T>();
        Span<T> dxData = DenseColumns.Data(dx);
        for (int group = 0; group < cache.ColumnBlocks; group++)
        {
            for (int i = 0; i < n; i++)
            {
                for (int k = 0; k < size; k++)
                {
                    int column = (group * size) + k;
                    g[k] = gamma[column] * Elements<T>.ToDouble(dyData[(column * n) + i]);
                    xHat[k] = Elements<T>.ToDouble(xHatData[(column * n) + i]);
                }

                int s = (group * n) + i;
                var segment = new BackwardSegment(g, xHat, 1, cache.Variance[s], cache.InverseStandardDeviation[s], cache.Epsilon, frozenStatistics: false, size, 0, stream: false, cache.Centered);
                strategy.SumsUnchecked(segment, sums, segmentDx);
                if (!strategy.InputGradientFinite(segment, sums, segmentDx))
                {
                    return new StepFault((group * size) + ColumnKernels.FirstNonFinite(segmentDx), FaultCause.InputGradient);
                }

                for (int k = 0; k < size; k++)
                {
                    dxData[(((group * size) + k) * n) + i] = Elements<T>.FromDouble(segmentDx[k]);
                }
            }
        }

        return StepFault.None;
    }

    private static StepFault FirstNonFiniteColumn<T>(Matrix<T> dx)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        for (int j = 0; j < dx.ColumnCount; j++)
        {
            if (!ColumnKernels.AllFinite(DenseColumns.Column(dx, j)))
            {
                return new StepFault(j, FaultCause.InputGradient);
            }
        }

        return StepFault.None;
    }

    /// <summary>Keeps the first fault (by column) that any thread of a step records, without a lock.</summary>
    private static void Record(ref int packed, StepFault fault)
    {
        int candidate = fault.Pack(), seen;
        while (candidate < (seen = Volatile.Read(ref packed)) && Interlocked.CompareExchange(ref packed, candidate, seen) != seen)
        {
        }
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
    private sealed class ColumnForward<T>(NormalizationEngine engine) : IColumnWork
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        private Matrix<T>? _x, _y;
        private NormalizationCache? _cache;
        private Vector<double>? _gamma, _beta;
        private ISegmentAffine? _affine;
        private bool _given;
        private int _fault;

        public StepFault Fault => StepFault.Unpack(_fault);

        public void Start(Matrix<T> x, Matrix<T> y, NormalizationCache cache, Vector<double> gamma, Vector<double> beta, ISegmentAffine? affine, bool given)
        {
            (_x, _y, _cache, _gamma, _beta, _affine, _given) = (x, y, cache, gamma, beta, affine, given);
            _fault = int.MaxValue;
        }

        public void Finish() => (_x, _y, _cache, _gamma, _beta, _affine) = (null, null, null, null, null, null);

        public void Run(int start, int end)
        {
            NormalizationCache cache = _cache!;
            SegmentLayout layout = cache.Layout;
            int blocks = cache.RowBlocks, length = layout.SegmentLength;
            var step = new Segments(
                DenseColumns.Data(_x!), cache.Normalized<T>(), DenseColumns.Data(_y!), DenseColumns.Data(_gamma!), DenseColumns.Data(_beta!), cache, this);
            Span<double> mean = cache.WritableMean, variance = cache.WritableVariance, inverseStd = cache.WritableInverseStd;

            // The range is of channels; segment k is block k mod blocks of channel k / blocks.
            int k = start * blocks, last = end * blocks;
            if (!layout.Contiguous)
            {
                for (; k < last; k++)
                {
                    step.NormalizeGathered(k, engine, _given);
                }

                return;
            }

            // Segment k lies at [k·length, (k + 1)·length) of the data.
            if (length <= QuadKernels.MaxLength && QuadKernels.IsSupported)
            {
                // Short segments four at a time: their reductions and scalar arithmetic share vectors.
                ref T x = ref MemoryMarshal.GetReference(step.X);
                for (; k <= last - 4; k += 4)
                {
                    Vector256<double> center, correction, segmentVariance;
                    if (_given)
                    {
                        center = Vector256.LoadUnsafe(ref engine._center[k]);
                        correction = Vector256.LoadUnsafe(ref engine._correction[k]);
                        segmentVariance = Vector256.LoadUnsafe(ref engine._givenVariance[k]);
                    }
                    else
                    {
                        QuadKernels.Moments(ref Unsafe.Add(ref x, k * length), length, out center, out correction, out segmentVariance);
                    }

                    Vector256<double> segmentMean = center + correction;
                    Vector256<double> segmentInverseStd = QuadKernels.InverseStandardDeviation(segmentVariance, cache.Epsilon);
                    segmentMean.StoreUnsafe(ref mean[k]);
                    segmentVariance.StoreUnsafe(ref variance[k]);
                    segmentInverseStd.StoreUnsafe(ref inverseStd[k]);
                    step.Normalize(k, center, correction, segmentMean, segmentVariance, segmentInverseStd);
                }
            }

            for (; k < last; k++)
            {
                step.Statistics(k, step.X.Slice(k * length, length), engine, _given, out double center, out double correction);
                step.Normalize(k, center, correction, mean[k], variance[k], inverseStd[k]);
            }
        }

        /// <summary>The spans and settings of one Forward over a range of channels.</summary>
        private readonly ref struct Segments(
            ReadOnlySpan<T> x, Span<T> xHat, Span<T> y, ReadOnlySpan<double> gamma, ReadOnlySpan<double> beta, NormalizationCache cache, ColumnForward<T> forward)
        {
            private readonly Span<T> _xHat = xHat, _y = y;
            private readonly ReadOnlySpan<double> _gamma = gamma, _beta = beta;
            private readonly int _length = cache.Layout.SegmentLength, _blocks = cache.RowBlocks;
            private readonly bool _stream = (long)cache.BatchSize * cache.Features >= ColumnKernels.StreamingThreshold;

            public ReadOnlySpan<T> X { get; } = x;

            /// <summary>
            /// The statistics of segment k, whose values are <paramref name="values"/>: computed, or given; written into the
            /// cache (μ, σ², 1/√(σ² + ε)), the mean also returned in its two parts.
            /// </summary>
            public void Statistics<TValue>(int k, ReadOnlySpan<TValue> values, NormalizationEngine engine, bool given, out double center, out double correction)
                where TValue : unmanaged
            {
                Span<double> variance = cache.WritableVariance;
                if (given)
                {
                    center = engine._center[k];
                    correction = engine._correction[k];
                    variance[k] = engine._givenVariance[k];
                }
                else
                {
                    // The mean is kept in two parts, center + correction: see ColumnKernels.Moments.
                    // Gathered floats come widened to double, and keep float's rule for one pass.
                    ColumnKernels.Moments<TValue, T>(values, out center, out correction, out variance[k]);
                }

                cache.WritableMean[k] = center + correction;
                cache.WritableInverseStd[k] = ElementFormulas.InverseStandardDeviation(variance[k], cache.Epsilon);
            }

            /// <summary>x̂ and y of segments k to k + 3, given their statistics lane by lane, as <see cref="Normalize(int, double, double, double, double, double)"/>.</summary>
            public void Normalize(int k, Vector256<double> center, Vector256<double> correction, Vector256<double> mean, Vector256<double> variance, Vector256<double> inverseStd)
            {
                if (!Vector256.EqualsAll((mean - mean) + (variance - variance), Vector256<double>.Zero) || forward._affine is not null)
                {
                    for (int s = 0; s < 4; s++)
                    {
                        Normalize(k + s, center.GetElement(s), correction.GetElement(s), mean.GetElement(s), variance.GetElement(s), inverseStd.GetElement(s));
                    }

                    return;
                }

                Vector256<double> gamma, beta;
                if (_blocks == 1)
                {
                    gamma = Vector256.LoadUnsafe(ref MemoryMarshal.GetReference(_gamma), (nuint)k);
                    beta = Vector256.LoadUnsafe(ref MemoryMarshal.GetReference(_beta), (nuint)k);
                }
                else
                {
                    gamma = Vector256.Create(_gamma[k / _blocks], _gamma[(k + 1) / _blocks], _gamma[(k + 2) / _blocks], _gamma[(k + 3) / _blocks]);
                    beta = Vector256.Create(_beta[k / _blocks], _beta[(k + 1) / _blocks], _beta[(k + 2) / _blocks], _beta[(k + 3) / _blocks]);
                }

                int at = k * _length;
                int bad = QuadKernels.Normalize(
                    ref Unsafe.Add(ref MemoryMarshal.GetReference(X), at), _length, center, correction, inverseStd, gamma, beta, ref Unsafe.Add(ref MemoryMarshal.GetReference(_xHat), at), ref Unsafe.Add(ref MemoryMarshal.GetReference(_y), at));
                for (int s = 0; bad != 0 && s < 4; s++)
                {
                    int j = (k + s) / _blocks, segment = at + (s * _length);
                    if ((bad & (1 << s)) != 0 && OutputFault<T>(j, X.Slice(segment, _length), _xHat.Slice(segment, _length), _y.Slice(segment, _length), _gamma[j], _beta[j]) is { Failed: true } fault)
                    {
                        Record(ref forward._fault, fault);
                    }
                }
            }

            /// <summary>
            /// x̂ and y of segment k, a contiguous run of the data, given its statistics (the mean also as center + correction);
            /// records the segment's channel if its statistics or its output are not finite.
            /// </summary>
            public void Normalize(int k, double center, double correction, double mean, double variance, double inverseStd)
                => Normalize(k, X.Slice(k * _length, _length), center, correction, mean, variance, inverseStd, _xHat.Slice(k * _length, _length), _y.Slice(k * _length, _length));

            /// <summary>
            /// Statistics, x̂ and y of segment k, which is not a contiguous run of the data: gathered into scratch of
            /// doubles (widened exactly), computed there, and x̂ and y scattered back (rounded to T once).
            /// </summary>
            public void NormalizeGathered(int k, NormalizationEngine engine, bool given)
            {
                double[] scratch = ArrayPool<double>.Shared.Rent(3 * _length);
                try
                {
                    Span<double> values = scratch.AsSpan(0, _length), xHat = scratch.AsSpan(_length, _length), y = scratch.AsSpan(2 * _length, _length);
                    cache.Layout.Gather(X, k, values);
                    Statistics(k, values, engine, given, out double center, out double correction);
                    Normalize<double>(k, values, center, correction, cache.Mean[k], cache.Variance[k], cache.InverseStandardDeviation[k], xHat, y);
                    cache.Layout.Scatter(xHat, k, _xHat);
                    cache.Layout.Scatter(y, k, _y);
                    if (typeof(T) != typeof(double) && !(Elements<T>.AllFinite(y) && Elements<T>.AllFinite(xHat)))
                    {
                        // Finite in double, but beyond the range of T once rounded (for double, Normalize has judged it).
                        Record(ref forward._fault, new StepFault(k / _blocks, FaultCause.Output));
                    }
                }
                finally
                {
                    ArrayPool<double>.Shared.Return(scratch);
                }
            }

            private void Normalize<TValue>(int k, ReadOnlySpan<TValue> x, double center, double correction, double mean, double variance, double inverseStd, Span<TValue> xHat, Span<TValue> y)
                where TValue : unmanaged
            {
                int j = _blocks == 1 ? k : k / _blocks;
                if (!double.IsFinite(mean) || !double.IsFinite(variance))
                {
                    Record(ref forward._fault, new StepFault(j, FaultCause.Statistics));
                    return;
                }

                double scale = _gamma[j], shift = _beta[j];
                forward._affine?.Affine(j, mean, variance, ref scale, ref shift);
                bool finite = _length <= QuadKernels.MaxLength && QuadKernels.IsSupported
                    ? QuadKernels.Normalize(ref MemoryMarshal.GetReference(x), _length, center, correction, inverseStd, scale, shift, ref MemoryMarshal.GetReference(xHat), ref MemoryMarshal.GetReference(y))
                    : ColumnKernels.Normalize(x, center, correction, inverseStd, scale, shift, xHat, y, _stream);
                if (!finite
                    && OutputFault<TValue>(j, x, xHat, y, scale, shift) is { Failed: true } fault)
                {
                    Record(ref forward._fault, fault);
                }
            }
        }
    }

    /// <summary>One backward pass over a range of columns: per block, the strategy's sums, its input gradient, or both.</summary>
    private sealed class ColumnBackward<T>(NormalizationEngine engine) : IColumnWork
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        private BackwardStrategy? _strategy;
        private NormalizationCache? _cache;
        private double[]? _scale;
        private Matrix<T>? _dy, _dx;
        private BackwardSteps _steps;
        private int _fault;

        public StepFault Fault => StepFault.Unpack(_fault);

        public void Start(BackwardStrategy strategy, NormalizationCache cache, double[] scale, Matrix<T> dy, Matrix<T> dx, BackwardSteps steps)
        {
            (_strategy, _cache, _scale, _dy, _dx, _steps) = (strategy, cache, scale, dy, dx, steps);
            _fault = int.MaxValue;
        }

        public void Finish() => (_strategy, _cache, _scale, _dy, _dx) = (null, null, null, null, null);

        public void Run(int start, int end)
        {
            BackwardStrategy strategy = _strategy!;
            NormalizationCache cache = _cache!;
            SegmentLayout layout = cache.Layout;
            int blocks = cache.RowBlocks, length = layout.SegmentLength, sumCount = strategy.SumCount;
            bool stream = (long)cache.BatchSize * cache.Features >= ColumnKernels.StreamingThreshold;
            ReadOnlySpan<double> inverseStd = cache.InverseStandardDeviation;
            Span<T> dyData = DenseColumns.Data(_dy!), dxData = DenseColumns.Data(_dx!);
            ReadOnlySpan<T> xHatData = cache.Normalized<T>();

            // The range is of channels; segment k is block k mod blocks of channel k / blocks.
            int k = start * blocks, last = end * blocks;
            if (!layout.Contiguous)
            {
                // Each segment gathered into scratch, its dx scattered back. Ghost batches and synchronization do not
                // combine, so both steps always run here together.
                double[] scratch = ArrayPool<double>.Shared.Rent(3 * length);
                try
                {
                    Span<double> dy = scratch.AsSpan(0, length), xHat = scratch.AsSpan(length, length), dx = scratch.AsSpan(2 * length, length);
                    for (; k < last; k++)
                    {
                        layout.Gather(dyData, k, dy);
                        layout.Gather(xHatData, k, xHat);
                        Segment<double>(strategy, cache, k, dy, xHat, dx, stream);
                        layout.Scatter(dx, k, dxData);
                        if (typeof(T) != typeof(double) && !Elements<T>.AllFinite(dx))
                        {
                            // Finite in double, but beyond the range of T once rounded.
                            Record(ref _fault, new StepFault(k / blocks, FaultCause.InputGradient));
                        }
                    }
                }
                finally
                {
                    ArrayPool<double>.Shared.Return(scratch);
                }

                return;
            }

            if (_steps == BackwardSteps.Both && length <= QuadKernels.MaxLength && QuadKernels.IsSupported)
            {
                // Short segments four at a time, where the strategy has a pass for that; segment k lies at k·length.
                ref T dy = ref MemoryMarshal.GetReference(dyData);
                ref T xHat = ref MemoryMarshal.GetReference(xHatData);
                ref T dx = ref MemoryMarshal.GetReference(dxData);
                double[] scale = _scale!;
                for (; k <= last - 4; k += 4)
                {
                    Vector256<double> gamma = blocks == 1
                        ? Vector256.LoadUnsafe(ref scale[k])
                        : Vector256.Create(scale[k / blocks], scale[(k + 1) / blocks], scale[(k + 2) / blocks], scale[(k + 3) / blocks]);
                    int offset = k * length;
                    var segmentInverseStd = Vector256.Create(inverseStd[k], inverseStd[k + 1], inverseStd[k + 2], inverseStd[k + 3]);
                    Span<double> sums = engine._sums.AsSpan(k * sumCount, 4 * sumCount);
                    int bad = typeof(T) == typeof(double)
                        ? strategy.QuadBackward(
                            ref Unsafe.As<T, double>(ref Unsafe.Add(ref dy, offset)),
                            ref Unsafe.As<T, double>(ref Unsafe.Add(ref xHat, offset)),
                            length,
                            gamma,
                            segmentInverseStd,
                            cache.FrozenStatistics,
                            sums,
                            ref Unsafe.As<T, double>(ref Unsafe.Add(ref dx, offset)))
                        : ClosedFormBackward.QuadBackwardOf(
                            ref Unsafe.Add(ref dy, offset), ref Unsafe.Add(ref xHat, offset), length, gamma, segmentInverseStd, cache.FrozenStatistics, sums, ref Unsafe.Add(ref dx, offset));
                    if (bad < 0)
                    {
                        break;
                    }

                    for (int s = 0; bad != 0 && s < 4; s++)
                    {
                        if ((bad & (1 << s)) != 0)
                        {
                            Record(ref _fault, new StepFault((k + s) / blocks, FaultCause.InputGradient));
                        }
                    }
                }
            }

            for (; k < last; k++)
            {
                Segment<T>(strategy, cache, k, dyData.Slice(k * length, length), xHatData.Slice(k * length, length), dxData.Slice(k * length, length), stream);
            }
        }

        /// <summary>
        /// The strategy's steps on segment k, whose dy and x̂ are given as contiguous runs; dx goes to <paramref name="dx"/>.
        /// A segment of doubles goes to the strategy; one of floats to the closed form's kernels, which read floats (see
        /// <see cref="ReadsInPlace{T}"/>).
        /// </summary>
        private void Segment<TValue>(BackwardStrategy strategy, NormalizationCache cache, int k, ReadOnlySpan<TValue> dy, ReadOnlySpan<TValue> xHat, Span<TValue> dx, bool stream)
            where TValue : unmanaged
        {
            int j = k / cache.RowBlocks, sumCount = strategy.SumCount;
            Span<double> sums = engine._sums.AsSpan(k * sumCount, sumCount);
            bool sumsStep = (_steps & BackwardSteps.Sums) != 0, inputGradientStep = (_steps & BackwardSteps.InputGradient) != 0;
            bool finite = true;
            if (typeof(TValue) == typeof(double))
            {
                var segment = new BackwardSegment(
                    MemoryMarshal.Cast<TValue, double>(dy), MemoryMarshal.Cast<TValue, double>(xHat), _scale![j], cache.Variance[k], cache.InverseStandardDeviation[k], cache.Epsilon, cache.FrozenStatistics, cache.SegmentValues, cache.SegmentOffset, stream, centered: true);
                Span<double> segmentDx = MemoryMarshal.Cast<TValue, double>(dx);
                if (sumsStep)
                {
                    strategy.SumsUnchecked(segment, sums, segmentDx);
                }

                finite = !inputGradientStep || strategy.InputGradientFinite(segment, sums, segmentDx);
            }
            else
            {
                // The segment's numbers without its spans, which the closed form reads in their element type.
                var segment = new BackwardSegment(
                    [], [], _scale![j], cache.Variance[k], cache.InverseStandardDeviation[k], cache.Epsilon, cache.FrozenStatistics, cache.SegmentValues, cache.SegmentOffset, stream, centered: true);
                if (sumsStep)
                {
                    ClosedFormBackward.SumsOf(segment, dy, xHat, sums);
                }

                finite = !inputGradientStep || ClosedFormBackward.InputGradientOf(segment, dy, xHat, sums, dx);
            }

            if (!finite)
            {
                Record(ref _fault, new StepFault(j, FaultCause.InputGradient));
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
