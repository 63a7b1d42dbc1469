using System;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static BatchNorm.ElementFormulas;

namespace BatchNorm;

/// <summary>
/// Kernels for row groups (layer and group norm): every row of the batch is a SIMD lane, and the kernels sweep down
/// the contiguous columns of a group, so one pass handles the segments of all rows at once and nothing is transposed.
/// </summary>
/// <remarks>
/// <para>The data is a dense column-major N×D span of double or float (read and written through
/// <see cref="Elements{T}"/>, the arithmetic in double); column j is [j·N, (j+1)·N). Per-lane values (one per row of the
/// group) are N-long spans of double. Every lane is computed with the same operations in the same order, in the vector body and
/// in the scalar tail alike, so a row's result never depends on the other rows of the batch.</para>
/// <para>Rows are taken in tiles of <see cref="TileRows"/>, so the running sums of a tile stay in the first-level cache
/// while the sweep walks down each column's part of the tile. Like <see cref="ColumnKernels"/>, sums over more than
/// <see cref="ColumnKernels.BlockLength"/> columns are added block by block with Neumaier's compensation.</para>
/// </remarks>
internal static class LaneKernels
{
    /// <summary>Rows per tile: 2 KiB of each per-lane sum.</summary>
    private const int TileRows = 256;

    /// <summary>
    /// Per row, the mean and biased variance over columns [first, first + count), computed exactly as
    /// <see cref="ColumnKernels.Moments{T}"/> computes them down a column: shifted sums around the row's first value,
    /// a second pass around the mean found by the first where the row needs one, and the mean in two parts,
    /// center + correction.
    /// </summary>
    public static void Moments<T>(ReadOnlySpan<T> data, int rows, int first, int count, Span<double> center, Span<double> correction, Span<double> variance, LaneScratch scratch)
        where T : unmanaged
    {
        Elements<T>.Widen(data.Slice(first * rows, rows), center);
        Span<double> sum = scratch.First(rows), squares = scratch.Second(rows);
        for (int pass = 0; ; pass++)
        {
            Reduce(data, data, rows, first, count, default, new CenteredLanes(), center, sum, squares, scratch);
            bool again = false;
            int i = 0;
            if (QuadKernels.IsSupported)
            {
                // Four rows at a time, lane by lane as below.
                for (; i <= rows - 4; i += 4)
                {
                    Vector256<double> done = QuadKernels.ShiftedMoments<T>(
                        Vector256.Create<double>(sum[i..]), Vector256.Create<double>(squares[i..]), count, out Vector256<double> offset, out Vector256<double> rowVariance);
                    offset.CopyTo(correction[i..]);
                    rowVariance.CopyTo(variance[i..]);
                    if (pass == 0 && !Vector256.EqualsAll(done.AsInt64(), Vector256<long>.AllBitsSet))
                    {
                        Vector256<double> rowCenter = Vector256.Create<double>(center[i..]);
                        Vector256.ConditionalSelect(done, rowCenter, rowCenter + offset).CopyTo(center[i..]);
                        again = true;
                    }
                }
            }

            for (; i < rows; i++)
            {
                // A row whose center lay too far from its mean passes again around the mean; the others keep their
                // center and recompute the same values.
                if (!ColumnKernels.ShiftedMoments<T>(sum[i], squares[i], count, out correction[i], out variance[i]) && pass == 0)
                {
                    center[i] += correction[i];
                    again = true;
                }
            }

            if (!again)
            {
                return;
            }
        }
    }

    /// <summary>
    /// Per row, the mean square ms = (1/count)·Σⱼ xⱼ² over columns [first, first + count): RMS norm's statistic, in one
    /// pass with the same blocked, compensated sums as <see cref="Moments"/>. Squares beyond the range of double make it ∞.
    /// </summary>
    public static void MeanSquares<T>(ReadOnlySpan<T> data, int rows, int first, int count, Span<double> meanSquare, LaneScratch scratch)
        where T : unmanaged
    {
        Span<double> unused = scratch.Second(rows);
        Reduce(data, data, rows, first, count, default, new SquareLanes(), default, meanSquare, unused, scratch);
        ColumnKernels.Divide(meanSquare, count);
    }

    /// <summary>
    /// Per row, Σⱼ gⱼ and Σⱼ gⱼ·x̂ⱼ over columns [first, first + count), where gⱼ = γⱼ·dyⱼ is the gradient at x̂.
    /// </summary>
    public static void ScaledSumAndDot<T>(ReadOnlySpan<T> dy, ReadOnlySpan<T> xHat, int rows, int first, int count, ReadOnlySpan<double> gamma, Span<double> sumG, Span<double> sumGXHat, LaneScratch scratch)
        where T : unmanaged
        => Reduce(dy, xHat, rows, first, count, gamma, new ScaledSumAndDotLanes(), default, sumG, sumGXHat, scratch);

    /// <summary>x̂ = ((x − center) − correction)·inverseStd and y = γⱼ·x̂ + βⱼ for columns [first, first + count), per row.</summary>
    /// <returns>Whether every y, and for float every x̂, is finite as stored.</returns>
    public static bool Normalize<T>(
        ReadOnlySpan<T> x, int rows, int first, int count, ReadOnlySpan<double> center, ReadOnlySpan<double> correction, ReadOnlySpan<double> inverseStd,
        ReadOnlySpan<double> gamma, ReadOnlySpan<double> beta, Span<T> xHat, Span<T> y)
        where T : unmanaged
        => Map(x, x, rows, first, count, gamma, beta, center, correction, inverseStd, xHat, y, new NormalizeLanes());

    /// <summary>
    /// The closed-form input gradient of each row's group: dx = istd·(g − mean(g) − x̂·mean(g·x̂)) with gⱼ = γⱼ·dyⱼ,
    /// given the per-row means of g and g·x̂.
    /// </summary>
    /// <returns>Whether every dx is finite.</returns>
    public static bool ClosedFormInputGradient<T>(
        ReadOnlySpan<T> dy, ReadOnlySpan<T> xHat, int rows, int first, int count, ReadOnlySpan<double> gamma,
        ReadOnlySpan<double> meanG, ReadOnlySpan<double> meanGXHat, ReadOnlySpan<double> inverseStd, Span<T> dx)
        where T : unmanaged
        => Map(dy, xHat, rows, first, count, gamma, gamma, meanG, meanGXHat, inverseStd, dx, dx, new ClosedFormLanes());

    /// <summary>Two sums per lane over a range of columns, compensated across blocks of columns.</summary>
    private static void Reduce<T, TOp>(
        ReadOnlySpan<T> a, ReadOnlySpan<T> b, int rows, int first, int count, ReadOnlySpan<double> columnScalars, TOp op,
        ReadOnlySpan<double> lanes, Span<double> firstSum, Span<double> secondSum, LaneScratch scratch)
        where T : unmanaged
        where TOp : struct, ILaneReduceOp
    {
        bool blocked = count > ColumnKernels.BlockLength;
        for (int t0 = 0; t0 < rows; t0 += TileRows)
        {
            int t1 = Math.Min(rows, t0 + TileRows), width = t1 - t0;
            Span<double> sum1 = firstSum.Slice(t0, width), sum2 = secondSum.Slice(t0, width);
            Span<double> part1 = blocked ? scratch.PartialFirst(rows).Slice(t0, width) : sum1;
            Span<double> part2 = blocked ? scratch.PartialSecond(rows).Slice(t0, width) : sum2;
            Span<double> comp1 = scratch.CompensationFirst(rows).Slice(t0, width), comp2 = scratch.CompensationSecond(rows).Slice(t0, width);
            sum1.Clear();
            sum2.Clear();
            comp1.Clear();
            comp2.Clear();
            ReadOnlySpan<double> lane = lanes.IsEmpty ? lanes : lanes.Slice(t0, width);
            for (int start = first; start < first + count; start += ColumnKernels.BlockLength)
            {
                int end = Math.Min(start + ColumnKernels.BlockLength, first + count);
                if (blocked)
                {
                    part1.Clear();
                    part2.Clear();
                }

                // Rows in chunks of four vectors whose sums stay in registers across the block's columns; the rest of the
                // tile lane by lane through memory. Either way each lane adds its columns in order.
                int chunked = Vector.IsHardwareAccelerated ? width - (width % (4 * Vector<double>.Count)) : 0;
                for (int r = 0; r < chunked; r += 4 * Vector<double>.Count)
                {
                    AccumulateChunk(a, b, rows, t0 + r, start, end, columnScalars, lane.IsEmpty ? lane : lane[r..], part1[r..], part2[r..], op);
                }

                for (int j = start; chunked < width && j < end; j++)
                {
                    double scalar = columnScalars.IsEmpty ? 0 : columnScalars[j];
                    AccumulateColumn(
                        a.Slice((j * rows) + t0 + chunked, width - chunked), b.Slice((j * rows) + t0 + chunked, width - chunked), lane.IsEmpty ? lane : lane[chunked..], scalar, part1[chunked..], part2[chunked..], op);
                }

                if (blocked)
                {
                    AddCompensated(sum1, comp1, part1);
                    AddCompensated(sum2, comp2, part2);
                }
            }

            if (blocked)
            {
                for (int i = 0; i < width; i++)
                {
                    sum1[i] += comp1[i];
                    sum2[i] += comp2[i];
                }
            }
        }
    }

    /// <summary>
    /// Adds the terms of columns [start, end) to the sums of four vectors of lanes from row <paramref name="row"/>, keeping
    /// the sums in registers; each lane adds its columns in order, as <see cref="AccumulateColumn"/> does.
    /// </summary>
    private static void AccumulateChunk<T, TOp>(
        ReadOnlySpan<T> a, ReadOnlySpan<T> b, int rows, int row, int start, int end, ReadOnlySpan<double> columnScalars, ReadOnlySpan<double> lanes, Span<double> sum1, Span<double> sum2, TOp op)
        where T : unmanaged
        where TOp : struct, ILaneReduceOp
    {
        int w = Vector<double>.Count;
        ref T a0 = ref MemoryMarshal.GetReference(a), b0 = ref MemoryMarshal.GetReference(b);
        ref double l0 = ref MemoryMarshal.GetReference(lanes);
        ref double s10 = ref MemoryMarshal.GetReference(sum1), s20 = ref MemoryMarshal.GetReference(sum2);
        Vector<double> x0 = Vector.LoadUnsafe(ref s10), x1 = Vector.LoadUnsafe(ref s10, (nuint)w), x2 = Vector.LoadUnsafe(ref s10, (nuint)(2 * w)), x3 = Vector.LoadUnsafe(ref s10, (nuint)(3 * w));
        Vector<double> y0 = Vector.LoadUnsafe(ref s20), y1 = Vector.LoadUnsafe(ref s20, (nuint)w), y2 = Vector.LoadUnsafe(ref s20, (nuint)(2 * w)), y3 = Vector.LoadUnsafe(ref s20, (nuint)(3 * w));
        Vector<double> c0 = default, c1 = default, c2 = default, c3 = default;
        if (!lanes.IsEmpty)
        {
            c0 = Vector.LoadUnsafe(ref l0);
            c1 = Vector.LoadUnsafe(ref l0, (nuint)w);
            c2 = Vector.LoadUnsafe(ref l0, (nuint)(2 * w));
            c3 = Vector.LoadUnsafe(ref l0, (nuint)(3 * w));
        }

        for (int j = start; j < end; j++)
        {
            var scalar = new Vector<double>(columnScalars.IsEmpty ? 0 : columnScalars[j]);
            nuint at = (nuint)((j * rows) + row);
            op.Accumulate(Elements<T>.LoadVector(ref a0, at), Elements<T>.LoadVector(ref b0, at), c0, scalar, ref x0, ref y0);
            op.Accumulate(Elements<T>.LoadVector(ref a0, at + (nuint)w), Elements<T>.LoadVector(ref b0, at + (nuint)w), c1, scalar, ref x1, ref y1);
            op.Accumulate(Elements<T>.LoadVector(ref a0, at + (nuint)(2 * w)), Elements<T>.LoadVector(ref b0, at + (nuint)(2 * w)), c2, scalar, ref x2, ref y2);
            op.Accumulate(Elements<T>.LoadVector(ref a0, at + (nuint)(3 * w)), Elements<T>.LoadVector(ref b0, at + (nuint)(3 * w)), c3, scalar, ref x3, ref y3);
        }

        x0.StoreUnsafe(ref s10);
        x1.StoreUnsafe(ref s10, (nuint)w);
        x2.StoreUnsafe(ref s10, (nuint)(2 * w));
        x3.StoreUnsafe(ref s10, (nuint)(3 * w));
        y0.StoreUnsafe(ref s20);
        y1.StoreUnsafe(ref s20, (nuint)w);
        y2.StoreUnsafe(ref s20, (nuint)(2 * w));
        y3.StoreUnsafe(ref s20, (nuint)(3 * w));
    }

    /// <summary>Adds one column's terms to the per-lane sums.</summary>
    private static void AccumulateColumn<T, TOp>(ReadOnlySpan<T> a, ReadOnlySpan<T> b, ReadOnlySpan<double> lanes, double scalar, Span<double> sum1, Span<double> sum2, TOp op)
        where T : unmanaged
        where TOp : struct, ILaneReduceOp
    {
        int width = Vector<double>.Count, n = a.Length, i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref T a0 = ref MemoryMarshal.GetReference(a), b0 = ref MemoryMarshal.GetReference(b);
            ref double l0 = ref MemoryMarshal.GetReference(lanes);
            ref double s10 = ref MemoryMarshal.GetReference(sum1), s20 = ref MemoryMarshal.GetReference(sum2);
            var vectorScalar = new Vector<double>(scalar);
            for (; i <= n - width; i += width)
            {
                Vector<double> s1 = Vector.LoadUnsafe(ref s10, (nuint)i), s2 = Vector.LoadUnsafe(ref s20, (nuint)i);
                Vector<double> lane = lanes.IsEmpty ? default : Vector.LoadUnsafe(ref l0, (nuint)i);
                op.Accumulate(Elements<T>.LoadVector(ref a0, (nuint)i), Elements<T>.LoadVector(ref b0, (nuint)i), lane, vectorScalar, ref s1, ref s2);
                s1.StoreUnsafe(ref s10, (nuint)i);
                s2.StoreUnsafe(ref s20, (nuint)i);
            }
        }

        for (; i < n; i++)
        {
            op.Accumulate(Elements<T>.ToDouble(a[i]), Elements<T>.ToDouble(b[i]), lanes.IsEmpty ? 0 : lanes[i], scalar, ref sum1[i], ref sum2[i]);
        }
    }

    private static void AddCompensated(Span<double> sum, Span<double> compensation, ReadOnlySpan<double> values)
    {
        int width = Vector<double>.Count, n = sum.Length, i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref double s0 = ref MemoryMarshal.GetReference(sum), c0 = ref MemoryMarshal.GetReference(compensation), v0 = ref MemoryMarshal.GetReference(values);
            for (; i <= n - width; i += width)
            {
                Vector<double> s = Vector.LoadUnsafe(ref s0, (nuint)i), c = Vector.LoadUnsafe(ref c0, (nuint)i);
                CompensatedAdd(ref s, ref c, Vector.LoadUnsafe(ref v0, (nuint)i));
                s.StoreUnsafe(ref s0, (nuint)i);
                c.StoreUnsafe(ref c0, (nuint)i);
            }
        }

        for (; i < n; i++)
        {
            CompensatedAdd(ref sum[i], ref compensation[i], values[i]);
        }
    }

    /// <summary>An element-wise map over columns [first, first + count) with one or two destinations.</summary>
    /// <returns>Whether every checked value is finite as stored (with two destinations, x̂ and y: y's, and for float x̂'s too), as in <see cref="ColumnKernels"/>' map.</returns>
    /// <remarks>Each element is read before it is written, so a destination may alias a source.</remarks>
    private static bool Map<T, TOp>(
        ReadOnlySpan<T> a, ReadOnlySpan<T> b, int rows, int first, int count, ReadOnlySpan<double> columnScalars1, ReadOnlySpan<double> columnScalars2,
        ReadOnlySpan<double> lanes1, ReadOnlySpan<double> lanes2, ReadOnlySpan<double> lanes3, Span<T> out1, Span<T> out2, TOp op)
        where T : unmanaged
        where TOp : struct, ILaneMapOp
    {
        int width = Vector<double>.Count;
        Vector<double> probe = Vector<double>.Zero;
        double scalarProbe = 0;
        ref double l10 = ref MemoryMarshal.GetReference(lanes1), l20 = ref MemoryMarshal.GetReference(lanes2), l30 = ref MemoryMarshal.GetReference(lanes3);
        for (int j = first; j < first + count; j++)
        {
            int offset = j * rows, i = 0;
            double p1 = columnScalars1[j], p2 = columnScalars2[j];
            ref T a0 = ref At(a, offset), b0 = ref At(b, offset);
            ref T o10 = ref MemoryMarshal.GetReference(out1.Slice(offset, rows)), o20 = ref MemoryMarshal.GetReference(out2.Slice(offset, rows));
            if (Vector.IsHardwareAccelerated)
            {
                Vector<double> v1 = new(p1), v2 = new(p2);
                for (; i <= rows - width; i += width)
                {
                    op.Apply(
                        Elements<T>.LoadVector(ref a0, (nuint)i), Elements<T>.LoadVector(ref b0, (nuint)i), v1, v2,
                        Vector.LoadUnsafe(ref l10, (nuint)i), Vector.LoadUnsafe(ref l20, (nuint)i), Vector.LoadUnsafe(ref l30, (nuint)i),
                        out Vector<double> r1, out Vector<double> r2);
                    probe |= Elements<T>.StoreResults(op.HasSecond, r1, ref o10, r2, ref o20, (nuint)i);
                }
            }

            for (; i < rows; i++)
            {
                op.Apply(Elements<T>.Get(ref a0, i), Elements<T>.Get(ref b0, i), p1, p2, lanes1[i], lanes2[i], lanes3[i], out double r1, out double r2);
                scalarProbe += Elements<T>.SetResults(op.HasSecond, r1, ref o10, r2, ref o20, i);
            }
        }

        return !double.IsNaN(scalarProbe) && !Elements<T>.HasFault(probe);

        static ref T At(ReadOnlySpan<T> data, int offset) => ref MemoryMarshal.GetReference(data.Slice(offset));
    }

    private interface ILaneReduceOp
    {
        void Accumulate(Vector<double> a, Vector<double> b, Vector<double> lane, Vector<double> scalar, ref Vector<double> sum1, ref Vector<double> sum2);

        void Accumulate(double a, double b, double lane, double scalar, ref double sum1, ref double sum2);
    }

    private interface ILaneMapOp
    {
        bool HasSecond { get; }

        void Apply(Vector<double> a, Vector<double> b, Vector<double> p1, Vector<double> p2, Vector<double> l1, Vector<double> l2, Vector<double> l3, out Vector<double> r1, out Vector<double> r2);

        void Apply(double a, double b, double p1, double p2, double l1, double l2, double l3, out double r1, out double r2);
    }

    /// <summary>Σ(a − center) and Σ(a − center)², the center per lane.</summary>
    private readonly struct CenteredLanes : ILaneReduceOp
    {
        public void Accumulate(Vector<double> a, Vector<double> b, Vector<double> lane, Vector<double> scalar, ref Vector<double> sum1, ref Vector<double> sum2)
        {
            Vector<double> d = a - lane;
            sum1 += d;
            sum2 = MultiplyAdd(d, d, sum2);
        }

        public void Accumulate(double a, double b, double lane, double scalar, ref double sum1, ref double sum2)
        {
            double d = a - lane;
            sum1 += d;
            sum2 = MultiplyAdd(d, d, sum2);
        }
    }

    /// <summary>Σ a², in the first sum; the second stays 0.</summary>
    private readonly struct SquareLanes : ILaneReduceOp
    {
        public void Accumulate(Vector<double> a, Vector<double> b, Vector<double> lane, Vector<double> scalar, ref Vector<double> sum1, ref Vector<double> sum2)
            => sum1 = MultiplyAdd(a, a, sum1);

        public void Accumulate(double a, double b, double lane, double scalar, ref double sum1, ref double sum2)
            => sum1 = MultiplyAdd(a, a, sum1);
    }

    /// <summary>Σ γ·a and Σ γ·a·b, γ per column.</summary>
    private readonly struct ScaledSumAndDotLanes : ILaneReduceOp
    {
        public void Accumulate(Vector<double> a, Vector<double> b, Vector<double> lane, Vector<double> scalar, ref Vector<double> sum1, ref Vector<double> sum2)
        {
            Vector<double> g = a * scalar;
            sum1 += g;
            sum2 = MultiplyAdd(g, b, sum2);
        }

        public void Accumulate(double a, double b, double lane, double scalar, ref double sum1, ref double sum2)
        {
            double g = a * scalar;
            sum1 += g;
            sum2 = MultiplyAdd(g, b, sum2);
        }
    }

    /// <summary>x̂ from x with the per-lane center, correction and inverse standard deviation; y = γ·x̂ + β per column.</summary>
    private readonly struct NormalizeLanes : ILaneMapOp
    {
        public bool HasSecond => true;

        public void Apply(Vector<double> a, Vector<double> b, Vector<double> p1, Vector<double> p2, Vector<double> l1, Vector<double> l2, Vector<double> l3, out Vector<double> r1, out Vector<double> r2)
        {
            r1 = Normalized(a, l1, l2, l3);
            r2 = MultiplyAdd(r1, p1, p2);
        }

        public void Apply(double a, double b, double p1, double p2, double l1, double l2, double l3, out double r1, out double r2)
        {
            r1 = Normalized(a, l1, l2, l3);
            r2 = MultiplyAdd(r1, p1, p2);
        }
    }

    /// <summary>dx from dy and x̂ with g = γ·dy per column and the per-lane means and inverse standard deviation.</summary>
    private readonly struct ClosedFormLanes : ILaneMapOp
    {
        public bool HasSecond => false;

        public void Apply(Vector<double> a, Vector<double> b, Vector<double> p1, Vector<double> p2, Vector<double> l1, Vector<double> l2, Vector<double> l3, out Vector<double> r1, out Vector<double> r2)
        {
            r1 = ElementFormulas.ClosedFormInputGradient(a * p1, b, l1, l2, l3);
            r2 = default;
        }

        public void Apply(double a, double b, double p1, double p2, double l1, double l2, double l3, out double r1, out double r2)
        {
            r1 = ElementFormulas.ClosedFormInputGradient(a * p1, b, l1, l2, l3);
            r2 = 0;
        }
    }
}

/// <summary>Per-lane scratch of <see cref="LaneKernels"/>, kept by a layer so that its steps allocate nothing.</summary>
internal sealed class LaneScratch
{
    private double[] _first = [], _second = [], _partialFirst = [], _partialSecond = [], _compensationFirst = [], _compensationSecond = [];

    public Span<double> First(int rows) => Get(ref _first, rows);

    public Span<double> Second(int rows) => Get(ref _second, rows);

    public Span<double> PartialFirst(int rows) => Get(ref _partialFirst, rows);

    public Span<double> PartialSecond(int rows) => Get(ref _partialSecond, rows);

    public Span<double> CompensationFirst(int rows) => Get(ref _compensationFirst, rows);

    public Span<double> CompensationSecond(int rows) => Get(ref _compensationSecond, rows);

    private static Span<double> Get(ref double[] buffer, int rows)
    {
        if (buffer.Length < rows)
        {
            buffer = new double[rows];
        }

        return buffer.AsSpan(0, rows);
    }
}
