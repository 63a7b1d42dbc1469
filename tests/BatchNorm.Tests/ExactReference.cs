using System;
using System.Linq;
using System.Numerics;

namespace BatchNorm.Tests;

/// <summary>
/// Batch-norm quantities computed exactly in fixed point (BigInteger scaled by 2^Bits) and rounded once to
/// double: an independent reference for the hard cases. Every double converts to it without error.
/// </summary>
internal readonly struct Exact
{
    private const int Bits = 1200;
    private readonly BigInteger _scaled;

    private Exact(BigInteger scaled) => _scaled = scaled;

    public static Exact From(double value)
    {
        if (!double.IsFinite(value))
        {
            throw new ArgumentOutOfRangeException(nameof(value));
        }

        long bits = BitConverter.DoubleToInt64Bits(value);
        int exponent = (int)((bits >> 52) & 0x7FF);
        long mantissa = bits & 0xFFFFFFFFFFFFFL;
        if (exponent == 0)
        {
            exponent = 1;
        }
        else
        {
            mantissa |= 1L << 52;
        }

        int shift = exponent - 1075 + Bits;
        var magnitude = shift >= 0 ? new BigInteger(mantissa) << shift : new BigInteger(mantissa) >> -shift;
        return new Exact(value < 0 ? -magnitude : magnitude);
    }

    public static Exact FromInt(long value) => new(new BigInteger(value) << Bits);

    public static Exact operator +(Exact a, Exact b) => new(a._scaled + b._scaled);

    public static Exact operator -(Exact a, Exact b) => new(a._scaled - b._scaled);

    public static Exact operator *(Exact a, Exact b) => new((a._scaled * b._scaled) >> Bits);

    public static Exact operator /(Exact a, Exact b) => new((a._scaled << Bits) / b._scaled);

    public Exact Sqrt()
    {
        if (_scaled.Sign < 0)
        {
            throw new ArithmeticException("negative");
        }

        // √(s·2^-B) = √(s·2^B)·2^-B, by Newton's method on integers.
        BigInteger n = _scaled << Bits;
        if (n.IsZero)
        {
            return new Exact(BigInteger.Zero);
        }

        BigInteger x = BigInteger.One << (int)((n.GetBitLength() / 2) + 1);
        while (true)
        {
            BigInteger y = (x + (n / x)) >> 1;
            if (y >= x)
            {
                return new Exact(x);
            }

            x = y;
        }
    }

    public double ToDouble()
    {
        if (_scaled.IsZero)
        {
            return 0;
        }

        BigInteger magnitude = BigInteger.Abs(_scaled);
        int length = (int)magnitude.GetBitLength();
        int drop = Math.Max(0, length - 62);
        double value = Math.ScaleB((double)(long)(magnitude >> drop), drop - Bits);
        return _scaled.Sign < 0 ? -value : value;
    }

    public static Exact Sum(Exact[] values) => values.Aggregate(FromInt(0), (a, b) => a + b);
}

/// <summary>The exact forward and closed-form backward of one feature column.</summary>
internal sealed class ExactColumn
{
    /// <summary>One segment's statistics, outputs and gradients, computed exactly and rounded once.</summary>
    /// <param name="x">The segment's values.</param>
    /// <param name="gamma">γ, the same for every value.</param>
    /// <param name="beta">β.</param>
    /// <param name="epsilon">ε.</param>
    /// <param name="dy">The upstream gradient.</param>
    /// <param name="centered">False for RMS norm: μ = 0, σ² is the mean square, and dx has no mean(dy) term.</param>
    public ExactColumn(double[] x, double gamma, double beta, double epsilon, double[] dy, bool centered = true)
    {
        int n = x.Length;
        Exact count = Exact.FromInt(n);
        Exact[] xs = x.Select(Exact.From).ToArray();
        Exact mean = centered ? Exact.Sum(xs) / count : Exact.FromInt(0);
        Exact[] deviations = xs.Select(v => v - mean).ToArray();
        Exact variance = Exact.Sum(deviations.Select(c => c * c).ToArray()) / count;
        Exact inverseStd = Exact.FromInt(1) / (variance + Exact.From(epsilon)).Sqrt();
        Exact[] xHat = deviations.Select(c => c * inverseStd).ToArray();
        Exact g = Exact.From(gamma);
        Exact[] dys = dy.Select(Exact.From).ToArray();
        Exact meanDy = centered ? Exact.Sum(dys) / count : Exact.FromInt(0);
        Exact meanDyXHat = Exact.Sum(dys.Zip(xHat, (a, b) => a * b).ToArray()) / count;

        Mean = mean.ToDouble();
        Variance = variance.ToDouble();
        UnbiasedVariance = (variance * count / Exact.FromInt(n - 1)).ToDouble();
        InverseStd = inverseStd.ToDouble();
        XHat = xHat.Select(v => v.ToDouble()).ToArray();
        Y = xHat.Select(v => ((g * v) + Exact.From(beta)).ToDouble()).ToArray();
        Dx = dys.Zip(xHat, (d, h) => (g * inverseStd * (d - meanDy - (h * meanDyXHat))).ToDouble()).ToArray();
        GammaGradient = (meanDyXHat * count).ToDouble();
        SumAbsDyXHat = dy.Zip(XHat, (a, b) => Math.Abs(a * b)).Sum();
    }

    public double SumAbsDyXHat { get; }

    public double Mean { get; }

    public double Variance { get; }

    public double UnbiasedVariance { get; }

    public double InverseStd { get; }

    public double[] XHat { get; }

    public double[] Y { get; }

    public double[] Dx { get; }

    public double GammaGradient { get; }
}

/// <summary>The accuracy measure of the hard cases: errors in units of the last place of the largest exact value.</summary>
internal static class Ulps
{
    /// <summary>The bound the README promises.</summary>
    public const double Max = 4;

    /// <summary>
    /// Asserts that every actual value lies within <see cref="Max"/> units in the last place of the largest expected
    /// value (or of <paramref name="unitOf"/>, for a sum whose terms may cancel) from the expected one.
    /// </summary>
    public static void AssertClose(string what, double[] expected, double[] actual, double? unitOf = null)
    {
        double unit = Math.Max(Ulp(unitOf ?? expected.Max(Math.Abs)), double.Epsilon);
        double worst = expected.Zip(actual, (e, a) => Math.Abs(e - a) / unit).Max();
        Assert.True(
            worst <= Max,
            string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{what}: off by {worst:F1} units in the last place of its largest value (at most {Max})"));
    }

    private static double Ulp(double value) => Math.BitIncrement(value) - value;
}
