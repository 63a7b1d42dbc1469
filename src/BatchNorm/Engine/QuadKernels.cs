using System;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static BatchNorm.ElementFormulas;

namespace BatchNorm;

/// <summary>
/// Kernels over short segments (at most <see cref="MaxLength"/> values, one block of <see cref="ColumnKernels"/>), four
/// adjacent segments at a time: the batch sizes people train with, where a column is a handful of vectors and the cost
/// of a segment is the latency of its reductions (horizontal sums, a division, a square root) rather than its memory.
/// </summary>
/// <remarks>
/// <para>Four segments of length n lie one after another in memory, segment s at [s·n, (s + 1)·n): four columns of a
/// batch, or four ghost blocks. Their sums run as four independent chains in one loop, their horizontal sums come out as
/// one vector with a lane per segment, and the scalar arithmetic that follows (the mean, the variance, 1/√(σ² + ε), the
/// means of the backward pass) runs on that vector: one division serves four segments, and the four chains overlap.</para>
/// <para>Each lane adds its segment's values exactly as <see cref="Sum"/> adds those of a single segment: four partial
/// sums (elements i ≡ 0, 1, 2, 3 mod 4), joined as (s₀ + s₁) + (s₂ + s₃), then the tail of n mod 4 values in order. So a
/// segment's statistics do not depend on which segments it is processed with, or on whether it is processed alone.</para>
/// <para>The values are double or float, read and written through <see cref="Elements{T}"/>; the arithmetic is in double.</para>
/// <para>x86 with AVX only (<see cref="IsSupported"/>); elsewhere <see cref="ColumnKernels"/> serves every segment.</para>
/// </remarks>
internal static class QuadKernels
{
    /// <summary>The longest segment these kernels take: one block of <see cref="ColumnKernels"/>.</summary>
    public const int MaxLength = ColumnKernels.BlockLength;

    /// <summary>Gets whether the kernels can run on this processor.</summary>
    public static bool IsSupported => Avx.IsSupported;

    /// <summary>
    /// The moments of four adjacent segments of length n, each exactly as <see cref="ColumnKernels.Moments{T}"/> computes
    /// them: shifted sums around the segment's first value, and for a segment whose first value lies too far from its mean
    /// a second pass around the mean found by the first.
    /// </summary>
    public static void Moments<T>(ref T x, int n, out Vector256<double> center, out Vector256<double> correction, out Vector256<double> variance)
        where T : unmanaged
    {
        center = Vector256.Create(x.At(0), x.At(n), x.At(2 * n), x.At(3 * n));
        CenteredSums(ref x, n, center, out Vector256<double> sum, out Vector256<double> squares);
        Vector256<double> done = ShiftedMoments<T>(sum, squares, n, out correction, out variance);
        if (Vector256.EqualsAll(done.AsInt64(), Vector256<long>.AllBitsSet))
        {
            return;
        }

        // Every lane passes again around its mean (the lanes already done are kept: their values are unchanged).
        Vector256<double> again = center + correction;
        CenteredSums(ref x, n, again, out sum, out squares);
        ShiftedMoments<T>(sum, squares, n, out Vector256<double> againCorrection, out Vector256<double> againVariance);
        center = Vector256.ConditionalSelect(done, center, again);
        correction = Vector256.ConditionalSelect(done, correction, againCorrection);
        variance = Vector256.ConditionalSelect(done, variance, againVariance);
    }

    /// <summary>(Σ dy, Σ dy·x̂) of four adjacent segments of length n.</summary>
    public static void SumAndDot<T>(ref T dy, ref T xHat, int n, out Vector256<double> sumDy, out Vector256<double> sumDyXHat)
        where T : unmanaged
    {
        ref T dy1 = ref Unsafe.Add(ref dy, n), dy2 = ref Unsafe.Add(ref dy, 2 * n), dy3 = ref Unsafe.Add(ref dy, 3 * n);
        ref T x1 = ref Unsafe.Add(ref xHat, n), x2 = ref Unsafe.Add(ref xHat, 2 * n), x3 = ref Unsafe.Add(ref xHat, 3 * n);
        Vector256<double> s0 = Vector256<double>.Zero, s1 = s0, s2 = s0, s3 = s0, p0 = s0, p1 = s0, p2 = s0, p3 = s0;
        int i = 0;
        for (; i <= n - 4; i += 4)
        {
            Vector256<double> d0 = Elements<T>.Load256(ref dy, (nuint)i), d1 = Elements<T>.Load256(ref dy1, (nuint)i);
            Vector256<double> d2 = Elements<T>.Load256(ref dy2, (nuint)i), d3 = Elements<T>.Load256(ref dy3, (nuint)i);
            s0 += d0;
            s1 += d1;
            s2 += d2;
            s3 += d3;
            p0 = MultiplyAdd(d0, Elements<T>.Load256(ref xHat, (nuint)i), p0);
            p1 = MultiplyAdd(d1, Elements<T>.Load256(ref x1, (nuint)i), p1);
            p2 = MultiplyAdd(d2, Elements<T>.Load256(ref x2, (nuint)i), p2);
            p3 = MultiplyAdd(d3, Elements<T>.Load256(ref x3, (nuint)i), p3);
        }

        sumDy = Join(s0, s1, s2, s3);
        sumDyXHat = Join(p0, p1, p2, p3);
        for (; i < n; i++)
        {
            sumDy += Vector256.Create(dy.At(i), dy1.At(i), dy2.At(i), dy3.At(i));
            sumDyXHat = MultiplyAdd(
                Vector256.Create(dy.At(i), dy1.At(i), dy2.At(i), dy3.At(i)), Vector256.Create(xHat.At(i), x1.At(i), x2.At(i), x3.At(i)), sumDyXHat);
        }
    }

    /// <summary>
    /// Σ a and Σ a·b of one short segment, in the order every lane of <see cref="SumAndDot"/> uses; with b = a − c and
    /// a centered by c, the shifted sums of <see cref="Moments"/>.
    /// </summary>
    public static (double Sum, double Dot) Sum<T>(ReadOnlySpan<T> a, ReadOnlySpan<T> b)
        where T : unmanaged
    {
        ref T a0 = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(a);
        ref T b0 = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(b);
        int n = a.Length, i = 0;
        Vector256<double> s = Vector256<double>.Zero, p = s;
        for (; i <= n - 4; i += 4)
        {
            Vector256<double> v = Elements<T>.Load256(ref a0, (nuint)i);
            s += v;
            p = MultiplyAdd(v, Elements<T>.Load256(ref b0, (nuint)i), p);
        }

        double sum = Lanes(s), dot = Lanes(p);
        for (; i < n; i++)
        {
            sum += a0.At(i);
            dot = MultiplyAdd(a0.At(i), b0.At(i), dot);
        }

        return (sum, dot);
    }

    /// <summary>Σ (x − c) and Σ (x − c)² of one short segment, in the order every lane of <see cref="Moments"/> uses.</summary>
    public static (double Sum, double Squares) CenteredSum<T>(ReadOnlySpan<T> x, double center)
        where T : unmanaged
    {
        ref T x0 = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        Vector256<double> c = Vector256.Create(center), s = Vector256<double>.Zero, q = s;
        for (; i <= n - 4; i += 4)
        {
            Vector256<double> d = Elements<T>.Load256(ref x0, (nuint)i) - c;
            s += d;
            q = MultiplyAdd(d, d, q);
        }

        double sum = Lanes(s), squares = Lanes(q);
        for (; i < n; i++)
        {
            double d = x0.At(i) - center;
            sum += d;
            squares = MultiplyAdd(d, d, squares);
        }

        return (sum, squares);
    }

    /// <summary>
    /// x̂ and y of four adjacent short segments at once, lane s of each vector holding segment s's values, element by
    /// element as <see cref="Normalize{T}(ref T, int, double, double, double, double, double, ref T, ref T)"/>
    /// computes them.
    /// </summary>
    /// <returns>A mask of the segments with a y that is not finite (bit s for segment s).</returns>
    public static int Normalize<T>(
        ref T x, int n, Vector256<double> center, Vector256<double> correction, Vector256<double> inverseStd, Vector256<double> gamma, Vector256<double> beta, ref T xHat, ref T y)
        where T : unmanaged
    {
        if (n % 4 != 0)
        {
            int bad = 0;
            for (int s = 0; s < 4; s++)
            {
                int at = s * n;
                bool finite = Normalize(
                    ref Unsafe.Add(ref x, at), n, center.GetElement(s), correction.GetElement(s), inverseStd.GetElement(s), gamma.GetElement(s), beta.GetElement(s), ref Unsafe.Add(ref xHat, at), ref Unsafe.Add(ref y, at));
                bad |= finite ? 0 : 1 << s;
            }

            return bad;
        }

        return FourLanes(
            new Lane(center, correction, inverseStd, gamma, beta, 0),
            new Lane(center, correction, inverseStd, gamma, beta, 1),
            new Lane(center, correction, inverseStd, gamma, beta, 2),
            new Lane(center, correction, inverseStd, gamma, beta, 3),
            ref x,
            ref xHat,
            ref y,
            n);
    }

    /// <summary>
    /// x̂ = ((x − center) − correction)·inverseStd and y = γ·x̂ + β over one short segment, element by element as
    /// <see cref="ColumnKernels.Normalize"/> computes them; y may be the same memory as x.
    /// </summary>
    /// <returns>Whether every y, and for float every x̂, is finite as stored.</returns>
    public static bool Normalize<T>(ref T x, int n, double center, double correction, double inverseStd, double gamma, double beta, ref T xHat, ref T y)
        where T : unmanaged
    {
        Vector256<double> c = Vector256.Create(center), k = Vector256.Create(correction), s = Vector256.Create(inverseStd);
        Vector256<double> g = Vector256.Create(gamma), b = Vector256.Create(beta), probe = Vector256<double>.Zero;
        int i = 0;
        for (; i <= n - 4; i += 4)
        {
            Vector256<double> h = Normalized(Elements<T>.Load256(ref x, (nuint)i), c, k, s);
            Vector256<double> output = MultiplyAdd(h, g, b);
            probe |= Elements<T>.Outputs(Elements<T>.Store256(h, ref xHat, (nuint)i), Elements<T>.Store256(output, ref y, (nuint)i));
        }

        double scalarProbe = 0;
        for (; i < n; i++)
        {
            double h = Normalized(x.At(i), center, correction, inverseStd), output = MultiplyAdd(h, gamma, beta);
            Elements<T>.Set(ref xHat, i, h);
            Elements<T>.Set(ref y, i, output);
            scalarProbe += Elements<T>.Probe(h, output);
        }

        return !double.IsNaN(scalarProbe) && !Elements<T>.HasFault(probe);
    }

    /// <summary>
    /// dx of four adjacent short segments at once, lane s of each vector holding segment s's values, element by element as
    /// <see cref="InputGradient{T}(ref T, ref T, int, double, double, double, bool, ref T)"/> computes it.
    /// </summary>
    /// <returns>A mask of the segments with a dx that is not finite (bit s for segment s).</returns>
    public static int InputGradient<T>(
        ref T dy, ref T xHat, int n, Vector256<double> meanDy, Vector256<double> meanDyXHat, Vector256<double> scale, bool frozen, ref T dx)
        where T : unmanaged
    {
        if (n % 4 != 0 || frozen)
        {
            int bad = 0;
            for (int s = 0; s < 4; s++)
            {
                int at = s * n;
                bool finite = InputGradient(
                    ref Unsafe.Add(ref dy, at), ref Unsafe.Add(ref xHat, at), n, meanDy.GetElement(s), meanDyXHat.GetElement(s), scale.GetElement(s), frozen, ref Unsafe.Add(ref dx, at));
                bad |= finite ? 0 : 1 << s;
            }

            return bad;
        }

        return FourLanes(
            new GradientLane(meanDy, meanDyXHat, scale, 0),
            new GradientLane(meanDy, meanDyXHat, scale, 1),
            new GradientLane(meanDy, meanDyXHat, scale, 2),
            new GradientLane(meanDy, meanDyXHat, scale, 3),
            ref dy,
            ref xHat,
            ref dx,
            n);
    }

    /// <summary>
    /// The element-wise pass over four adjacent segments of n values (n a multiple of 4), segment s with lane op s, four
    /// values of each segment per step; returns the mask of segments whose output is not finite (bit s for segment s).
    /// </summary>
    private static int FourLanes<T, TLane>(TLane l0, TLane l1, TLane l2, TLane l3, ref T input, ref T normalized, ref T output, int n)
        where T : unmanaged
        where TLane : struct, IQuadLane
    {
        Vector256<double> p0 = Vector256<double>.Zero, p1 = p0, p2 = p0, p3 = p0;
        for (int i = 0; i < n; i += 4)
        {
            p0 |= l0.Apply(ref input, ref normalized, ref output, (nuint)i);
            p1 |= l1.Apply(ref input, ref normalized, ref output, (nuint)(n + i));
            p2 |= l2.Apply(ref input, ref normalized, ref output, (nuint)((2 * n) + i));
            p3 |= l3.Apply(ref input, ref normalized, ref output, (nuint)((3 * n) + i));
        }

        return (Elements<T>.HasFault(p0) ? 1 : 0) | (Elements<T>.HasFault(p1) ? 2 : 0) | (Elements<T>.HasFault(p2) ? 4 : 0) | (Elements<T>.HasFault(p3) ? 8 : 0);
    }

    /// <summary>One segment's element-wise op on four values at index i of three arrays; returns the probe of what it stored.</summary>
    private interface IQuadLane
    {
        Vector256<double> Apply<T>(ref T input, ref T normalized, ref T output, nuint i)
        where T : unmanaged;
    }

    /// <summary>
    /// dx = scale·(dy − meanDy − x̂·meanDyXHat) over one short segment, element by element as
    /// <see cref="ColumnKernels.ClosedFormInputGradient"/> computes it; with <paramref name="frozen"/>, dx = scale·dy.
    /// </summary>
    /// <returns>Whether every dx is finite.</returns>
    public static bool InputGradient<T>(ref T dy, ref T xHat, int n, double meanDy, double meanDyXHat, double scale, bool frozen, ref T dx)
        where T : unmanaged
    {
        Vector256<double> m = Vector256.Create(meanDy), p = Vector256.Create(meanDyXHat), s = Vector256.Create(scale), probe = Vector256<double>.Zero;
        int i = 0;
        for (; i <= n - 4; i += 4)
        {
            Vector256<double> g = Elements<T>.Load256(ref dy, (nuint)i);
            Vector256<double> r = frozen ? g * s : ClosedFormInputGradient(g, Elements<T>.Load256(ref xHat, (nuint)i), m, p, s);
            probe |= Elements<T>.Store256(r, ref dx, (nuint)i);
        }

        double scalarProbe = 0;
        for (; i < n; i++)
        {
            double r = frozen ? dy.At(i) * scale : ClosedFormInputGradient(dy.At(i), xHat.At(i), meanDy, meanDyXHat, scale);
            Elements<T>.Set(ref dx, i, r);
            scalarProbe += Elements<T>.Probe(r);
        }

        return !double.IsNaN(scalarProbe) && !Elements<T>.HasFault(probe);
    }

    /// <summary>1/√(σ² + ε) per lane, as <see cref="ElementFormulas.InverseStandardDeviation"/> computes it.</summary>
    public static Vector256<double> InverseStandardDeviation(Vector256<double> variance, double epsilon)
    {
        Vector256<double> sum = variance + Vector256.Create(epsilon);
        if (Vector256.EqualsAll(sum - sum, Vector256<double>.Zero))
        {
            return Vector256<double>.One / Vector256.Sqrt(sum);
        }

        return Vector256.Create(
            ElementFormulas.InverseStandardDeviation(variance.GetElement(0), epsilon),
            ElementFormulas.InverseStandardDeviation(variance.GetElement(1), epsilon),
            ElementFormulas.InverseStandardDeviation(variance.GetElement(2), epsilon),
            ElementFormulas.InverseStandardDeviation(variance.GetElement(3), epsilon));
    }

    /// <summary>One segment's normalization constants, broadcast.</summary>
    private readonly struct Lane(Vector256<double> center, Vector256<double> correction, Vector256<double> inverseStd, Vector256<double> gamma, Vector256<double> beta, int s) : IQuadLane
    {
        private readonly Vector256<double> _center = Vector256.Create(center.GetElement(s)), _correction = Vector256.Create(correction.GetElement(s));
        private readonly Vector256<double> _inverseStd = Vector256.Create(inverseStd.GetElement(s)), _gamma = Vector256.Create(gamma.GetElement(s));
        private readonly Vector256<double> _beta = Vector256.Create(beta.GetElement(s));

        /// <summary>Normalizes four values of x at index i into x̂ and y; returns the probe of what it stored.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<double> Apply<T>(ref T x, ref T xHat, ref T y, nuint i)
            where T : unmanaged
        {
            Vector256<double> h = Normalized(Elements<T>.Load256(ref x, i), _center, _correction, _inverseStd);
            Vector256<double> output = MultiplyAdd(h, _gamma, _beta);
            return Elements<T>.Outputs(Elements<T>.Store256(h, ref xHat, i), Elements<T>.Store256(output, ref y, i));
        }
    }

    /// <summary>One segment's closed-form gradient constants, broadcast.</summary>
    private readonly struct GradientLane(Vector256<double> meanDy, Vector256<double> meanDyXHat, Vector256<double> scale, int s) : IQuadLane
    {
        private readonly Vector256<double> _meanDy = Vector256.Create(meanDy.GetElement(s)), _meanDyXHat = Vector256.Create(meanDyXHat.GetElement(s));
        private readonly Vector256<double> _scale = Vector256.Create(scale.GetElement(s));

        /// <summary>dx of four values at index i from dy and x̂; returns the probe of what it stored.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<double> Apply<T>(ref T dy, ref T xHat, ref T dx, nuint i)
            where T : unmanaged
        {
            Vector256<double> r = ClosedFormInputGradient(Elements<T>.Load256(ref dy, i), Elements<T>.Load256(ref xHat, i), _meanDy, _meanDyXHat, _scale);
            return Elements<T>.Store256(r, ref dx, i);
        }
    }

    /// <summary>Σ (x − c) and Σ (x − c)² of four adjacent segments, lane s around c[s].</summary>
    private static void CenteredSums<T>(ref T x, int n, Vector256<double> center, out Vector256<double> sum, out Vector256<double> squares)
        where T : unmanaged
    {
        ref T x1 = ref Unsafe.Add(ref x, n), x2 = ref Unsafe.Add(ref x, 2 * n), x3 = ref Unsafe.Add(ref x, 3 * n);
        Vector256<double> c0 = Vector256.Create(center.GetElement(0)), c1 = Vector256.Create(center.GetElement(1));
        Vector256<double> c2 = Vector256.Create(center.GetElement(2)), c3 = Vector256.Create(center.GetElement(3));
        Vector256<double> s0 = Vector256<double>.Zero, s1 = s0, s2 = s0, s3 = s0, q0 = s0, q1 = s0, q2 = s0, q3 = s0;
        int i = 0;
        for (; i <= n - 4; i += 4)
        {
            Vector256<double> d0 = Elements<T>.Load256(ref x, (nuint)i) - c0, d1 = Elements<T>.Load256(ref x1, (nuint)i) - c1;
            Vector256<double> d2 = Elements<T>.Load256(ref x2, (nuint)i) - c2, d3 = Elements<T>.Load256(ref x3, (nuint)i) - c3;
            s0 += d0;
            s1 += d1;
            s2 += d2;
            s3 += d3;
            q0 = MultiplyAdd(d0, d0, q0);
            q1 = MultiplyAdd(d1, d1, q1);
            q2 = MultiplyAdd(d2, d2, q2);
            q3 = MultiplyAdd(d3, d3, q3);
        }

        sum = Join(s0, s1, s2, s3);
        squares = Join(q0, q1, q2, q3);
        for (; i < n; i++)
        {
            Vector256<double> d = Vector256.Create(x.At(i), x1.At(i), x2.At(i), x3.At(i)) - center;
            sum += d;
            squares = MultiplyAdd(d, d, squares);
        }
    }

    /// <summary>
    /// <see cref="ColumnKernels.ShiftedMoments{T}"/> on four lanes: the offset, the variance, and a mask of the lanes for
    /// which one pass suffices.
    /// </summary>
    public static Vector256<double> ShiftedMoments<T>(Vector256<double> sum, Vector256<double> squares, int n, out Vector256<double> offset, out Vector256<double> variance)
        where T : unmanaged
    {
        Vector256<double> count = Vector256.Create((double)n), zero = Vector256<double>.Zero;
        offset = sum / count;
        Vector256<double> raw = (squares - (sum * offset)) / count;

        // Math.Max(0, v): 0 where v < 0, v itself where v is NaN.
        variance = Vector256.ConditionalSelect(Vector256.LessThan(raw, zero), zero, raw);
        Vector256<double> finiteVariance = Vector256.Equals(variance - variance, zero);
        Vector256<double> finiteOffset = Vector256.Equals(offset - offset, zero);
        Vector256<double> close = Vector256.LessThanOrEqual(Vector256.Create(Elements<T>.CenterWeight) * offset * offset, variance);
        return (close & finiteVariance) | ~finiteOffset;
    }

    /// <summary>Lane s of the result is the sum of the lanes of vector s, as (v₀ + v₁) + (v₂ + v₃).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> Join(Vector256<double> a, Vector256<double> b, Vector256<double> c, Vector256<double> d)
    {
        Vector256<double> ab = Avx.HorizontalAdd(a, b), cd = Avx.HorizontalAdd(c, d);
        return Avx.Permute2x128(ab, cd, 0x20) + Avx.Permute2x128(ab, cd, 0x31);
    }

    /// <summary>The lanes of one vector added as <see cref="Join"/> adds them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double Lanes(Vector256<double> v) => (v.GetElement(0) + v.GetElement(1)) + (v.GetElement(2) + v.GetElement(3));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double At<T>(this ref T first, int index)
        where T : unmanaged
        => Elements<T>.Get(ref first, index);
}
