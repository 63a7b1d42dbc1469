using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static BatchNorm.ElementFormulas;

namespace BatchNorm;

/// <summary>
/// Kernels over one feature column, a contiguous span of a column-major matrix.
/// Two loop skeletons (<see cref="Reduce{T, TOp}"/> and <see cref="Map{T, TOp}"/>) hold the vectorized loops;
/// the operations plug into them as small structs. The data are of element type T, double or float, read and written
/// through <see cref="Elements{T}"/>: the operations and every sum are in double either way.
/// </summary>
internal static class ColumnKernels
{
    /// <summary>Elements summed in SIMD lanes before the partial sum joins the compensated total.</summary>
    internal const int BlockLength = 128;

    /// <summary>
    /// Effectively computes the mean μ = (1/n)·Σ x[i] and the biased variance σ² = (1/n)·Σ (x[i] − μ)².
    /// The mean comes in two parts, μ = <paramref name="mean"/> + <paramref name="meanCorrection"/>, so that
    /// x − μ can be formed as (x − mean) − meanCorrection without losing the digits that a rounded μ would.
    /// </summary>
    /// <remarks>
    /// Shifted sums around a center c, first c = x[0]: d = x − c is exact near the mean (Sterbenz's lemma),
    /// the correction is mean(d), and the corrected sum of squares Σd² − (Σd)²/n gives σ². When c turns out
    /// to lie too far from the mean (<see cref="ShiftedMoments{T}"/>: σ/4 for double, 16σ for float), a second pass
    /// repeats this around the mean found by the first.
    /// Never E[x²] − E[x]². NaN or infinity in x gives a non-finite result.
    /// </remarks>
    public static void Moments<T>(ReadOnlySpan<T> x, out double mean, out double meanCorrection, out double variance)
        where T : unmanaged
        => Moments<T, T>(x, out mean, out meanCorrection, out variance);

    /// <summary>
    /// <see cref="Moments{T}"/> of data of element type <typeparamref name="TData"/> read as <typeparamref name="T"/>
    /// (floats gathered and widened into doubles): the center's reach is judged by <typeparamref name="TData"/>'s rule,
    /// so that a segment's statistics do not depend on whether its values lie contiguously.
    /// </summary>
    public static void Moments<T, TData>(ReadOnlySpan<T> x, out double mean, out double meanCorrection, out double variance)
        where T : unmanaged
        where TData : unmanaged
    {
        int n = x.Length;
        double center = Elements<T>.ToDouble(x[0]);
        bool isShort = n <= QuadKernels.MaxLength && QuadKernels.IsSupported;
        for (int pass = 0; ; pass++)
        {
            // A short segment adds in the order of QuadKernels, which computes four segments at once.
            (double sum, double sumOfSquares) = isShort ? QuadKernels.CenteredSum(x, center) : Reduce(x, x, new CenteredSums(center));
            if (ShiftedMoments<TData>(sum, sumOfSquares, n, out double offset, out variance) || pass == 1)
            {
                mean = center;
                meanCorrection = offset;
                return;
            }

            center += offset;
        }
    }

    /// <summary>
    /// From the sums of one pass around a center c, Σd and Σd² with d = x − c over n values of type T: the offset of the
    /// mean from c, the biased variance by the corrected formula (Σd² − Σd·offset)/n, and whether c lay close enough to
    /// the mean for that formula to keep the digits T needs.
    /// </summary>
    /// <returns>True when one pass suffices: when c lies close enough to the mean (<see cref="Elements{T}.CenterWeight"/>:
    /// within σ/4 for double, within 16σ for float, which magnifies the sums' rounding errors at most 1.6 or 770 times) and
    /// the squares did not overflow; otherwise the caller passes again around the mean. A non-finite offset (NaN or ±∞ in
    /// the data) needs no second pass.</returns>
    public static bool ShiftedMoments<T>(double sum, double sumOfSquares, int n, out double offset, out double variance)
        where T : unmanaged
    {
        offset = sum / n;
        variance = Math.Max(0.0, (sumOfSquares - (sum * offset)) / n);

        // Where the squares around a far center overflowed, those around the mean may still fit: pass again.
        return (Elements<T>.CenterWeight * offset * offset <= variance && double.IsFinite(variance)) || !double.IsFinite(offset);
    }

    /// <summary>Effectively computes (Σ dy[i], Σ dy[i]·x̂[i]).</summary>
    public static (double SumDy, double SumDyXHat) SumAndDot<T>(ReadOnlySpan<T> dy, ReadOnlySpan<T> xHat)
        where T : unmanaged
        => dy.Length <= QuadKernels.MaxLength && QuadKernels.IsSupported && xHat.Length >= dy.Length
            ? QuadKernels.Sum(dy, xHat)
            : Reduce(dy, xHat, default(SumAndDotOp));

    /// <summary>Effectively computes x̂[i] = ((x[i] − mean) − meanCorrection)·inverseStd and y[i] = γ·x̂[i] + β.</summary>
    /// <returns>Whether every y, and for float every x̂, is finite as stored.</returns>
    /// <remarks>y may be the same memory as x. With <c>stream</c> set, x̂ is written with non-temporal stores (see <see cref="StreamingThreshold"/>).</remarks>
    public static bool Normalize<T>(ReadOnlySpan<T> x, double mean, double meanCorrection, double inverseStd, double gamma, double beta, Span<T> xHat, Span<T> y, bool stream)
        where T : unmanaged
        => Map(x, x, xHat, y, new NormalizeOp(mean, meanCorrection, inverseStd, gamma, beta), stream);

    /// <summary>Effectively computes dx[i] = scale·(dy[i] − meanDy − x̂[i]·meanDyXHat).</summary>
    /// <returns>Whether every dx is finite.</returns>
    /// <remarks>With <c>stream</c> set, dx is written with non-temporal stores (see <see cref="StreamingThreshold"/>).</remarks>
    public static bool ClosedFormInputGradient<T>(ReadOnlySpan<T> dy, ReadOnlySpan<T> xHat, double meanDy, double meanDyXHat, double scale, Span<T> dx, bool stream)
        where T : unmanaged
        => Map(dy, xHat, dx, dx, new ClosedFormOp(meanDy, meanDyXHat, scale), stream);

    /// <summary>Effectively computes dx[i] = scale·dy[i].</summary>
    /// <returns>Whether every dx is finite.</returns>
    /// <remarks>With <c>stream</c> set, dx is written with non-temporal stores (see <see cref="StreamingThreshold"/>).</remarks>
    public static bool Scale<T>(ReadOnlySpan<T> dy, double scale, Span<T> dx, bool stream)
        where T : unmanaged
        => Map(dy, dy, dx, dx, new ScaleOp(scale), stream);

    /// <summary>values[i] /= divisor, each quotient correctly rounded as a scalar division would give it.</summary>
    public static void Divide(Span<double> values, double divisor)
    {
        int width = Vector<double>.Count, i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref double v0 = ref MemoryMarshal.GetReference(values);
            var d = new Vector<double>(divisor);
            for (; i <= values.Length - width; i += width)
            {
                (Vector.LoadUnsafe(ref v0, (nuint)i) / d).StoreUnsafe(ref v0, (nuint)i);
            }
        }

        for (; i < values.Length; i++)
        {
            values[i] /= divisor;
        }
    }

    /// <summary>Gets whether every value is finite.</summary>
    public static bool AllFinite<T>(ReadOnlySpan<T> values)
        where T : unmanaged
        => FirstNonFinite(values) < 0;

    /// <summary>Gets the index of the first value that is NaN or ±∞, or −1.</summary>
    public static int FirstNonFinite<T>(ReadOnlySpan<T> values)
        where T : unmanaged
    {
        int width = Vector<double>.Count, i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            ref T v0 = ref MemoryMarshal.GetReference(values);
            for (; i <= values.Length - width; i += width)
            {
                // v − v is 0 for a finite v and NaN for NaN or ±∞ (widened exactly: a float ±∞ is a double ±∞).
                Vector<double> v = Elements<T>.LoadVector(ref v0, (nuint)i);
                if (!Vector.EqualsAll(v - v, Vector<double>.Zero))
                {
                    break;
                }
            }
        }

        for (; i < values.Length; i++)
        {
            if (!double.IsFinite(Elements<T>.ToDouble(values[i])))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Two sums over a and b, accumulated in SIMD lanes per block and compensated across blocks.</summary>
    private static (double First, double Second) Reduce<T, TOp>(ReadOnlySpan<T> a, ReadOnlySpan<T> b, TOp op)
        where T : unmanaged
        where TOp : struct, IReduceOp
    {
        if (b.Length < a.Length)
        {
            throw new ArgumentException("The second span is shorter than the first.", nameof(b));
        }

        var first = default(CompensatedSum);
        var second = default(CompensatedSum);
        ref T a0 = ref MemoryMarshal.GetReference(a);
        ref T b0 = ref MemoryMarshal.GetReference(b);
        int width = Vector<double>.Count, length = a.Length;
        for (int start = 0; start < length; start += BlockLength)
        {
            int end = Math.Min(start + BlockLength, length);
            int i = start;
            Vector<double> f0 = Vector<double>.Zero, f1 = f0, f2 = f0, f3 = f0;
            Vector<double> s0 = f0, s1 = f0, s2 = f0, s3 = f0;
            if (Vector.IsHardwareAccelerated)
            {
                for (; i <= end - (4 * width); i += 4 * width)
                {
                    // Offsets from one reference per source: constants the loads fold into their addresses.
                    ref T ai = ref Unsafe.Add(ref a0, i), bi = ref Unsafe.Add(ref b0, i);
                    Vector<double> a1 = Elements<T>.LoadVector(ref ai, 0), b1 = LoadB(op.ReadsB, ref bi, 0);
                    Vector<double> a2 = Elements<T>.LoadVector(ref ai, (nuint)width), b2 = LoadB(op.ReadsB, ref bi, (nuint)width);
                    Vector<double> a3 = Elements<T>.LoadVector(ref ai, (nuint)(2 * width)), b3 = LoadB(op.ReadsB, ref bi, (nuint)(2 * width));
                    Vector<double> a4 = Elements<T>.LoadVector(ref ai, (nuint)(3 * width)), b4 = LoadB(op.ReadsB, ref bi, (nuint)(3 * width));
                    f0 += op.First(a1, b1);
                    f1 += op.First(a2, b2);
                    f2 += op.First(a3, b3);
                    f3 += op.First(a4, b4);
                    s0 = op.AccumulateSecond(a1, b1, s0);
                    s1 = op.AccumulateSecond(a2, b2, s1);
                    s2 = op.AccumulateSecond(a3, b3, s2);
                    s3 = op.AccumulateSecond(a4, b4, s3);
                }

                for (; i <= end - width; i += width)
                {
                    Vector<double> a1 = Elements<T>.LoadVector(ref a0, (nuint)i), b1 = LoadB(op.ReadsB, ref b0, (nuint)i);
                    f0 += op.First(a1, b1);
                    s0 = op.AccumulateSecond(a1, b1, s0);
                }
            }

            double blockFirst = Vector.Sum((f0 + f1) + (f2 + f3));
            double blockSecond = Vector.Sum((s0 + s1) + (s2 + s3));
            for (; i < end; i++)
            {
                double ai = Elements<T>.ToDouble(a[i]), bi = Elements<T>.ToDouble(b[i]);
                blockFirst += op.First(ai, bi);
                blockSecond += op.Second(ai, bi);
            }

            first.Add(blockFirst);
            second.Add(blockSecond);
        }

        return (first.Value, second.Value);
    }

    /// <summary>An element-wise map from a and b to one or two destinations.</summary>
    /// <returns>Whether every checked value is finite as stored: the first destination's, or with two destinations (x̂ and y) y's, and for float x̂'s too (see <see cref="Elements{T}.Outputs(Vector{double}, Vector{double})"/>).</returns>
    /// <remarks>
    /// Each element is read before it is written, so a destination may alias a source. The check costs two operations
    /// per stored vector in registers: the store's probe, or-ed into a register (<see cref="Elements{T}.HasFault(Vector{double})"/>).
    /// </remarks>
    private static bool Map<T, TOp>(ReadOnlySpan<T> a, ReadOnlySpan<T> b, Span<T> first, Span<T> second, TOp op, bool stream)
        where T : unmanaged
        where TOp : struct, IMapOp
    {
        int width = Vector<double>.Count, length = a.Length;
        if (b.Length < length || first.Length < length || (op.HasSecond && second.Length < length))
        {
            throw new ArgumentException("Spans must be at least as long as the first source.");
        }

        ref T a0 = ref MemoryMarshal.GetReference(a);
        ref T b0 = ref MemoryMarshal.GetReference(b);
        ref T first0 = ref MemoryMarshal.GetReference(first);
        ref T second0 = ref MemoryMarshal.GetReference(second);
        int i = 0;
        bool streamedFinite = true;
        if (Vector.IsHardwareAccelerated && stream && width == Vector256<double>.Count && Vector256.IsHardwareAccelerated && length >= 64)
        {
            (i, streamedFinite) = MapStreaming(ref a0, ref b0, first, ref second0, length, op);
        }

        // The probe gathers in a register, and lives only as long as the loop: one whose address is taken (passed by
        // reference), or that lives across a call, is kept in memory instead, and each step then waits on the last one's
        // store.
        bool vectorsFinite = true;
        if (Vector.IsHardwareAccelerated)
        {
            Vector<double> probe = Vector<double>.Zero;
            for (; i <= length - width; i += width)
            {
                op.Apply(Elements<T>.LoadVector(ref a0, (nuint)i), LoadB(op.ReadsB, ref b0, (nuint)i), out Vector<double> r1, out Vector<double> r2);
                probe |= Elements<T>.StoreResults(op.HasSecond, r1, ref first0, r2, ref second0, (nuint)i);
            }

            vectorsFinite = !Elements<T>.HasFault(probe);
        }

        double scalarProbe = 0;
        for (; i < length; i++)
        {
            op.Apply(Elements<T>.Get(ref a0, i), Elements<T>.Get(ref b0, i), out double r1, out double r2);
            scalarProbe += Elements<T>.SetResults(op.HasSecond, r1, ref first0, r2, ref second0, i);
        }

        return streamedFinite && vectorsFinite && !double.IsNaN(scalarProbe);
    }

    /// <summary>
    /// Outputs of at least this many elements (4 MiB of doubles, 2 MiB of floats) are written with non-temporal stores:
    /// they would not stay in the per-core caches anyway, and streaming them saves the read that a cached write costs
    /// first. Measured with benchmarks/BatchNorm.Benchmarks: below it, streaming slows the step down.
    /// </summary>
    public const long StreamingThreshold = 1 << 19;

    /// <summary>
    /// The vector body of <see cref="Map{T, TOp}"/> with non-temporal stores to the first destination, which is
    /// pinned so that its alignment cannot change under a compacting GC. Returns where the scalar tail starts, and whether
    /// every value it stored is finite.
    /// </summary>
    private static unsafe (int Next, bool Finite) MapStreaming<T, TOp>(ref T a0, ref T b0, Span<T> first, ref T second0, int length, TOp op)
        where T : unmanaged
        where TOp : struct, IMapOp
    {
        int width = Vector256<double>.Count, alignment = Elements<T>.StreamAlignment;
        fixed (T* destination = first)
        {
            // Scalars until the destination is aligned for a store of eight elements; then aligned streaming stores.
            int i = (int)((nuint)(alignment - ((nint)destination & (alignment - 1))) & (nuint)(alignment - 1)) / Elements<T>.Size;
            double scalarProbe = 0;
            for (int k = 0; k < i; k++)
            {
                op.Apply(Elements<T>.Get(ref a0, k), Elements<T>.Get(ref b0, k), out double r1, out double r2);
                scalarProbe += Elements<T>.SetResults(op.HasSecond, r1, ref *destination, r2, ref second0, k);
            }

            Vector<double> probe = Vector<double>.Zero;
            for (; i <= length - (2 * width); i += 2 * width)
            {
                ref T ai = ref Unsafe.Add(ref a0, i), bi = ref Unsafe.Add(ref b0, i), secondI = ref Unsafe.Add(ref second0, i);
                op.Apply(Elements<T>.LoadVector(ref ai, 0), LoadB(op.ReadsB, ref bi, 0), out Vector<double> r1, out Vector<double> r2);
                op.Apply(Elements<T>.LoadVector(ref ai, (nuint)width), LoadB(op.ReadsB, ref bi, (nuint)width), out Vector<double> s1, out Vector<double> s2);
                Vector<double> stored = Elements<T>.Stream256(r1.AsVector256(), s1.AsVector256(), destination + i).AsVector();
                probe |= op.HasSecond
                    ? Elements<T>.Outputs(stored, Elements<T>.StoreVector(r2, ref secondI, 0) | Elements<T>.StoreVector(s2, ref secondI, (nuint)width))
                    : stored;
            }

            return (i, !double.IsNaN(scalarProbe) && !Elements<T>.HasFault(probe));
        }
    }

    /// <summary>The second source's vector at <paramref name="index"/>, or zeros for an op that does not read it: the loop then neither loads it nor checks its address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<double> LoadB<T>(bool reads, ref T b0, nuint index)
        where T : unmanaged
        => reads ? Elements<T>.LoadVector(ref b0, index) : default;

    /// <summary>A reduction's element-wise terms; <see cref="ReadsB"/> false lets the loop skip the second source.</summary>
    private interface IReduceOp
    {
        bool ReadsB { get; }

        Vector<double> First(Vector<double> a, Vector<double> b);

        Vector<double> AccumulateSecond(Vector<double> a, Vector<double> b, Vector<double> sum);

        double First(double a, double b);

        double Second(double a, double b);
    }

    /// <summary>A map's element-wise operation; <see cref="ReadsB"/> false lets the loop skip the second source.</summary>
    private interface IMapOp
    {
        bool ReadsB { get; }

        bool HasSecond { get; }

        void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second);

        void Apply(double a, double b, out double first, out double second);
    }

    /// <summary>Σ(a − c) and Σ(a − c)².</summary>
    private readonly struct CenteredSums(double center) : IReduceOp
    {
        private readonly Vector<double> _center = new(center);

        public bool ReadsB => false;

        public Vector<double> First(Vector<double> a, Vector<double> b) => a - _center;

        public Vector<double> AccumulateSecond(Vector<double> a, Vector<double> b, Vector<double> sum)
        {
            Vector<double> d = a - _center;
            return MultiplyAdd(d, d, sum);
        }

        public double First(double a, double b) => a - center;

        public double Second(double a, double b) => (a - center) * (a - center);
    }

    /// <summary>Σa and Σa·b.</summary>
    private readonly struct SumAndDotOp : IReduceOp
    {
        public bool ReadsB => true;

        public Vector<double> First(Vector<double> a, Vector<double> b) => a;

        public Vector<double> AccumulateSecond(Vector<double> a, Vector<double> b, Vector<double> sum) => MultiplyAdd(a, b, sum);

        public double First(double a, double b) => a;

        public double Second(double a, double b) => a * b;
    }

    private readonly struct NormalizeOp(double mean, double meanCorrection, double inverseStd, double gamma, double beta) : IMapOp
    {
        private readonly Vector<double> _mean = new(mean), _correction = new(meanCorrection), _inverseStd = new(inverseStd), _gamma = new(gamma), _beta = new(beta);

        public bool ReadsB => false;

        public bool HasSecond => true;

        public void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second)
        {
            first = Normalized(a, _mean, _correction, _inverseStd);
            second = MultiplyAdd(first, _gamma, _beta);
        }

        public void Apply(double a, double b, out double first, out double second)
        {
            first = Normalized(a, mean, meanCorrection, inverseStd);
            second = MultiplyAdd(first, gamma, beta);
        }
    }

    private readonly struct ClosedFormOp(double meanDy, double meanDyXHat, double scale) : IMapOp
    {
        private readonly Vector<double> _meanDy = new(meanDy), _meanDyXHat = new(meanDyXHat), _scale = new(scale);

        public bool ReadsB => true;

        public bool HasSecond => false;

        public void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second)
        {
            first = ElementFormulas.ClosedFormInputGradient(a, b, _meanDy, _meanDyXHat, _scale);
            second = default;
        }

        public void Apply(double a, double b, out double first, out double second)
        {
            first = ElementFormulas.ClosedFormInputGradient(a, b, meanDy, meanDyXHat, scale);
            second = 0;
        }
    }

    private readonly struct ScaleOp(double scale) : IMapOp
    {
        private readonly Vector<double> _scale = new(scale);

        public bool ReadsB => false;

        public bool HasSecond => false;

        public void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second)
        {
            first = a * _scale;
            second = default;
        }

        public void Apply(double a, double b, out double first, out double second)
        {
            first = a * scale;
            second = 0;
        }
    }

    /// <summary>Neumaier's compensated sum: the rounding error of each addition is carried along.</summary>
    private struct CompensatedSum
    {
        private double _sum;
        private double _compensation;

        public readonly double Value => _sum + _compensation;

        public void Add(double value) => CompensatedAdd(ref _sum, ref _compensation, value);
    }
}
