using System;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace BatchNorm;

/// <summary>
/// Kernels over one feature column, a contiguous span of a column-major matrix.
/// Two loop skeletons (<see cref="Reduce{TOp}"/> and <see cref="Map{TOp}"/>) hold the vectorized loops;
/// the operations plug into them as small structs.
/// </summary>
internal static class ColumnKernels
{
    /// <summary>Elements summed in SIMD lanes before the partial sum joins the compensated total.</summary>
    private const int BlockLength = 128;

    /// <summary>
    /// Effectively computes the mean μ = (1/n)·Σ x[i] and the biased variance σ² = (1/n)·Σ (x[i] − μ)².
    /// The mean comes in two parts, μ = <paramref name="mean"/> + <paramref name="meanCorrection"/>, so that
    /// x − μ can be formed as (x − mean) − meanCorrection without losing the digits that a rounded μ would.
    /// </summary>
    /// <remarks>
    /// Two passes: the mean of x − x[0] (exact differences when values sit far from zero, by Sterbenz's lemma),
    /// then d = x − mean, whose average is the correction and whose corrected sum of squares
    /// Σd² − (Σd)²/n gives σ². Never E[x²] − E[x]². NaN or infinity in x gives a non-finite result.
    /// </remarks>
    public static void Moments(ReadOnlySpan<double> x, out double mean, out double meanCorrection, out double variance)
    {
        int n = x.Length;
        double shift = x[0];
        (double shiftedSum, _) = Reduce(x, x, new CenteredSums(shift));
        mean = shift + (shiftedSum / n);
        (double sum, double sumOfSquares) = Reduce(x, x, new CenteredSums(mean));
        meanCorrection = sum / n;
        variance = Math.Max(0.0, (sumOfSquares - (sum * meanCorrection)) / n);
    }

    /// <summary>Effectively computes (Σ dy[i], Σ dy[i]·x̂[i]).</summary>
    public static (double SumDy, double SumDyXHat) SumAndDot(ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat)
        => Reduce(dy, xHat, default(SumAndDotOp));

    /// <summary>Effectively computes x̂[i] = ((x[i] − mean) − meanCorrection)·inverseStd and y[i] = γ·x̂[i] + β.</summary>
    /// <remarks><paramref name="y"/> may be the same memory as <paramref name="x"/>.</remarks>
    public static void Normalize(ReadOnlySpan<double> x, double mean, double meanCorrection, double inverseStd, double gamma, double beta, Span<double> xHat, Span<double> y)
        => Map(x, x, xHat, y, new NormalizeOp(mean, meanCorrection, inverseStd, gamma, beta));

    /// <summary>Effectively computes dx[i] = scale·(dy[i] − meanDy − x̂[i]·meanDyXHat).</summary>
    public static void ClosedFormInputGradient(ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat, double meanDy, double meanDyXHat, double scale, Span<double> dx)
        => Map(dy, xHat, dx, dx, new ClosedFormOp(meanDy, meanDyXHat, scale));

    /// <summary>Effectively computes dx[i] = scale·dy[i].</summary>
    public static void Scale(ReadOnlySpan<double> dy, double scale, Span<double> dx)
        => Map(dy, dy, dx, dx, new ScaleOp(scale));

    /// <summary>Two sums over a and b, accumulated in SIMD lanes per block and compensated across blocks.</summary>
    private static (double First, double Second) Reduce<TOp>(ReadOnlySpan<double> a, ReadOnlySpan<double> b, TOp op)
        where TOp : struct, IReduceOp
    {
        var first = new CompensatedSum();
        var second = new CompensatedSum();
        int width = Vector<double>.Count;
        for (int start = 0; start < a.Length; start += BlockLength)
        {
            int end = Math.Min(start + BlockLength, a.Length);
            int i = start;
            var f0 = Vector<double>.Zero;
            var f1 = Vector<double>.Zero;
            var s0 = Vector<double>.Zero;
            var s1 = Vector<double>.Zero;
            if (Vector.IsHardwareAccelerated)
            {
                for (; i <= end - (2 * width); i += 2 * width)
                {
                    Vector<double> a0 = Load(a, i), b0 = Load(b, i);
                    Vector<double> a1 = Load(a, i + width), b1 = Load(b, i + width);
                    f0 += op.First(a0, b0);
                    s0 += op.Second(a0, b0);
                    f1 += op.First(a1, b1);
                    s1 += op.Second(a1, b1);
                }
            }

            double blockFirst = Vector.Sum(f0 + f1);
            double blockSecond = Vector.Sum(s0 + s1);
            for (; i < end; i++)
            {
                blockFirst += op.First(a[i], b[i]);
                blockSecond += op.Second(a[i], b[i]);
            }

            first.Add(blockFirst);
            second.Add(blockSecond);
        }

        return (first.Value, second.Value);
    }

    /// <summary>An element-wise map from a and b to one or two destinations.</summary>
    /// <remarks>Each element is read before it is written, so a destination may alias a source.</remarks>
    private static void Map<TOp>(ReadOnlySpan<double> a, ReadOnlySpan<double> b, Span<double> first, Span<double> second, TOp op)
        where TOp : struct, IMapOp
    {
        int width = Vector<double>.Count;
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            for (; i <= a.Length - width; i += width)
            {
                op.Apply(Load(a, i), Load(b, i), out Vector<double> r1, out Vector<double> r2);
                Store(r1, first, i);
                if (op.HasSecond)
                {
                    Store(r2, second, i);
                }
            }
        }

        for (; i < a.Length; i++)
        {
            op.Apply(a[i], b[i], out double r1, out double r2);
            first[i] = r1;
            if (op.HasSecond)
            {
                second[i] = r2;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<double> Load(ReadOnlySpan<double> span, int index)
        => new(span.Slice(index, Vector<double>.Count));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector<double> value, Span<double> span, int index)
        => value.CopyTo(span.Slice(index, Vector<double>.Count));

    private interface IReduceOp
    {
        Vector<double> First(Vector<double> a, Vector<double> b);

        Vector<double> Second(Vector<double> a, Vector<double> b);

        double First(double a, double b);

        double Second(double a, double b);
    }

    private interface IMapOp
    {
        bool HasSecond { get; }

        void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second);

        void Apply(double a, double b, out double first, out double second);
    }

    /// <summary>Σ(a − c) and Σ(a − c)².</summary>
    private readonly struct CenteredSums(double center) : IReduceOp
    {
        private readonly Vector<double> _center = new(center);

        public Vector<double> First(Vector<double> a, Vector<double> b) => a - _center;

        public Vector<double> Second(Vector<double> a, Vector<double> b)
        {
            Vector<double> d = a - _center;
            return d * d;
        }

        public double First(double a, double b) => a - center;

        public double Second(double a, double b) => (a - center) * (a - center);
    }

    /// <summary>Σa and Σa·b.</summary>
    private readonly struct SumAndDotOp : IReduceOp
    {
        public Vector<double> First(Vector<double> a, Vector<double> b) => a;

        public Vector<double> Second(Vector<double> a, Vector<double> b) => a * b;

        public double First(double a, double b) => a;

        public double Second(double a, double b) => a * b;
    }

    private readonly struct NormalizeOp(double mean, double meanCorrection, double inverseStd, double gamma, double beta) : IMapOp
    {
        private readonly Vector<double> _mean = new(mean);
        private readonly Vector<double> _meanCorrection = new(meanCorrection);
        private readonly Vector<double> _inverseStd = new(inverseStd);
        private readonly Vector<double> _gamma = new(gamma);
        private readonly Vector<double> _beta = new(beta);

        public bool HasSecond => true;

        public void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second)
        {
            first = (a - _mean - _meanCorrection) * _inverseStd;
            second = (first * _gamma) + _beta;
        }

        public void Apply(double a, double b, out double first, out double second)
        {
            first = (a - mean - meanCorrection) * inverseStd;
            second = (first * gamma) + beta;
        }
    }

    private readonly struct ClosedFormOp(double meanDy, double meanDyXHat, double scale) : IMapOp
    {
        private readonly Vector<double> _meanDy = new(meanDy);
        private readonly Vector<double> _meanDyXHat = new(meanDyXHat);
        private readonly Vector<double> _scale = new(scale);

        public bool HasSecond => false;

        public void Apply(Vector<double> a, Vector<double> b, out Vector<double> first, out Vector<double> second)
        {
            first = _scale * (a - _meanDy - (b * _meanDyXHat));
            second = default;
        }

        public void Apply(double a, double b, out double first, out double second)
        {
            first = scale * (a - meanDy - (b * meanDyXHat));
            second = 0;
        }
    }

    private readonly struct ScaleOp(double scale) : IMapOp
    {
        private readonly Vector<double> _scale = new(scale);

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

        public void Add(double value)
        {
            double t = _sum + value;
            _compensation += Math.Abs(_sum) >= Math.Abs(value) ? (_sum - t) + value : (value - t) + _sum;
            _sum = t;
        }
    }
}
