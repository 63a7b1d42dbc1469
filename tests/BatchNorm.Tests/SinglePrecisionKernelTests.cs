using System;
using System.Linq;
using System.Numerics;
using System.Runtime.Intrinsics;

namespace BatchNorm.Tests;

/// <summary>
/// The kernels over float data (<see cref="Elements{T}"/>): a float element is widened exactly as it is loaded, all
/// arithmetic is in double, and a result is rounded only as it is stored. So over float data every backward sum is bit
/// for bit the one the double kernels compute over the widened values, and every stored value is theirs rounded once,
/// whatever path (SIMD body, scalar tail, four segments at once, streaming stores, tiles and chunks of rows) an element
/// takes. The statistics may take one pass where double takes two (<see cref="Elements{T}.CenterWeight"/>): they agree
/// with the double kernels' to within the bound that rule allows (<see cref="StatisticsBounds"/>).
/// </summary>
public class SinglePrecisionKernelTests
{
    // Lengths around every boundary of the column kernels: the vector width, four vectors, the scalar tail, the quad
    // kernels' 128, a block of 128 and the streaming threshold of 64.
    public static TheoryData<int, double, double> Columns()
    {
        var data = new TheoryData<int, double, double>();
        foreach (int n in new[] { 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 300, 1031 })
        {
            data.Add(n, 1e4, 1e-2);
            data.Add(n, 0, 1);
            data.Add(n, -100, 30);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Columns))]
    public void Column_kernels_over_float_data_are_the_double_kernels_rounded_once(int n, double mean, double spread)
    {
        var random = new Random(n * 31 + (int)spread);
        float[] x = Data(random, n, mean, spread), dy = Data(random, n, 0.5, 2);
        double[] xd = Widen(x), dyd = Widen(dy);

        ColumnKernels.Moments<float>(x, out double m, out double c, out double v);
        ColumnKernels.Moments<double>(xd, out double md, out double cd, out double vd);
        AssertStatisticsClose(n, x[0], (md, cd, vd), (m, c, v));

        double istd = ElementFormulas.InverseStandardDeviation(v, 1e-5);
        foreach (bool stream in new[] { false, true })
        {
            float[] xHat = new float[n], y = new float[n];
            double[] xHatD = new double[n], yd = new double[n];
            Assert.True(ColumnKernels.Normalize<float>(x, m, c, istd, 1.5, 0.25, xHat, y, stream));
            Assert.True(ColumnKernels.Normalize<double>(xd, m, c, istd, 1.5, 0.25, xHatD, yd, stream));
            Assert.Equal(Round(xHatD), xHat);
            Assert.Equal(Round(yd), y);

            // The backward kernels read the stored float x̂, so their reference reads it widened.
            double[] xHatWide = Widen(xHat);
            Assert.Equal(ColumnKernels.SumAndDot<double>(dyd, xHatWide), ColumnKernels.SumAndDot<float>(dy, xHat));
            float[] dx = new float[n];
            double[] dxd = new double[n];
            Assert.True(ColumnKernels.ClosedFormInputGradient<float>(dy, xHat, 0.125, -0.375, 3, dx, stream));
            Assert.True(ColumnKernels.ClosedFormInputGradient<double>(dyd, xHatWide, 0.125, -0.375, 3, dxd, stream));
            Assert.Equal(Round(dxd), dx);
            Assert.True(ColumnKernels.Scale<float>(dy, 0.3, dx, stream));
            Assert.True(ColumnKernels.Scale<double>(dyd, 0.3, dxd, stream));
            Assert.Equal(Round(dxd), dx);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(8)]
    [InlineData(13)]
    [InlineData(128)]
    public void Four_short_segments_over_float_data_are_the_double_kernels_rounded_once(int n)
    {
        if (!QuadKernels.IsSupported)
        {
            // The quad kernels need AVX; .ci/run's second pass, with AVX off, takes the general kernels, tested above.
            return;
        }
        var random = new Random(n);
        float[] x = Data(random, 4 * n, 1e4, 1e-2), dy = Data(random, 4 * n, 0, 1);
        double[] xd = Widen(x), dyd = Widen(dy);

        QuadKernels.Moments(ref x[0], n, out Vector256<double> center, out Vector256<double> correction, out Vector256<double> variance);
        QuadKernels.Moments(ref xd[0], n, out Vector256<double> centerD, out Vector256<double> correctionD, out Vector256<double> varianceD);
        for (int s = 0; s < 4; s++)
        {
            AssertStatisticsClose(n, x[s * n], (centerD[s], correctionD[s], varianceD[s]), (center[s], correction[s], variance[s]));
        }

        Vector256<double> istd = QuadKernels.InverseStandardDeviation(variance, 1e-5);
        Vector256<double> gamma = Vector256.Create(1.5, -2, 0.5, 3), beta = Vector256.Create(0.25, 1, -1, 0);
        float[] xHat = new float[4 * n], y = new float[4 * n];
        double[] xHatD = new double[4 * n], yd = new double[4 * n];
        Assert.Equal(0, QuadKernels.Normalize(ref x[0], n, center, correction, istd, gamma, beta, ref xHat[0], ref y[0]));
        Assert.Equal(0, QuadKernels.Normalize(ref xd[0], n, center, correction, istd, gamma, beta, ref xHatD[0], ref yd[0]));
        Assert.Equal(Round(xHatD), xHat);
        Assert.Equal(Round(yd), y);

        double[] xHatWide = Widen(xHat);
        QuadKernels.SumAndDot(ref dy[0], ref xHat[0], n, out Vector256<double> sumDy, out Vector256<double> sumDyXHat);
        QuadKernels.SumAndDot(ref dyd[0], ref xHatWide[0], n, out Vector256<double> sumDyD, out Vector256<double> sumDyXHatD);
        Assert.Equal((sumDyD, sumDyXHatD), (sumDy, sumDyXHat));
        foreach (bool frozen in new[] { false, true })
        {
            float[] dx = new float[4 * n];
            double[] dxd = new double[4 * n];
            Vector256<double> meanDy = sumDy / n, meanDyXHat = sumDyXHat / n, scale = gamma * istd;
            Assert.Equal(0, QuadKernels.InputGradient(ref dy[0], ref xHat[0], n, meanDy, meanDyXHat, scale, frozen, ref dx[0]));
            Assert.Equal(0, QuadKernels.InputGradient(ref dyd[0], ref xHatWide[0], n, meanDy, meanDyXHat, scale, frozen, ref dxd[0]));
            Assert.Equal(Round(dxd), dx);
        }
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    [InlineData(17, 5)]
    [InlineData(64, 129)]
    [InlineData(300, 3)]
    [InlineData(530, 40)]
    public void Row_group_kernels_over_float_data_are_the_double_kernels_rounded_once(int rows, int count)
    {
        var random = new Random(rows + count);
        int columns = count + 2, first = 1;
        float[] x = Data(random, rows * columns, 1e4, 1e-2), dy = Data(random, rows * columns, 0, 1);
        double[] xd = Widen(x), dyd = Widen(dy);
        double[] gamma = Enumerable.Range(0, columns).Select(j => 1 + (0.25 * j)).ToArray(), beta = Enumerable.Range(0, columns).Select(j => -0.5 * j).ToArray();
        var scratch = new LaneScratch();

        double[] center = new double[rows], correction = new double[rows], variance = new double[rows];
        double[] centerD = new double[rows], correctionD = new double[rows], varianceD = new double[rows];
        LaneKernels.Moments<float>(x, rows, first, count, center, correction, variance, scratch);
        LaneKernels.Moments<double>(xd, rows, first, count, centerD, correctionD, varianceD, scratch);
        for (int i = 0; i < rows; i++)
        {
            AssertStatisticsClose(count, x[(first * rows) + i], (centerD[i], correctionD[i], varianceD[i]), (center[i], correction[i], variance[i]));
        }

        double[] meanSquare = new double[rows], meanSquareD = new double[rows];
        LaneKernels.MeanSquares<float>(x, rows, first, count, meanSquare, scratch);
        LaneKernels.MeanSquares<double>(xd, rows, first, count, meanSquareD, scratch);
        Assert.Equal(meanSquareD, meanSquare);

        double[] istd = variance.Select(s => ElementFormulas.InverseStandardDeviation(s, 1e-5)).ToArray();
        float[] xHat = new float[rows * columns], y = new float[rows * columns];
        double[] xHatD = new double[rows * columns], yd = new double[rows * columns];
        Assert.True(LaneKernels.Normalize<float>(x, rows, first, count, center, correction, istd, gamma, beta, xHat, y));
        Assert.True(LaneKernels.Normalize<double>(xd, rows, first, count, center, correction, istd, gamma, beta, xHatD, yd));
        Assert.Equal(Round(xHatD), xHat);
        Assert.Equal(Round(yd), y);

        double[] xHatWide = Widen(xHat);
        double[] sumG = new double[rows], sumGXHat = new double[rows], sumGD = new double[rows], sumGXHatD = new double[rows];
        LaneKernels.ScaledSumAndDot<float>(dy, xHat, rows, first, count, gamma, sumG, sumGXHat, scratch);
        LaneKernels.ScaledSumAndDot<double>(dyd, xHatWide, rows, first, count, gamma, sumGD, sumGXHatD, scratch);
        Assert.Equal(sumGD, sumG);
        Assert.Equal(sumGXHatD, sumGXHat);

        float[] dx = new float[rows * columns];
        double[] dxd = new double[rows * columns];
        Assert.True(LaneKernels.ClosedFormInputGradient<float>(dy, xHat, rows, first, count, gamma, sumG, sumGXHat, istd, dx));
        Assert.True(LaneKernels.ClosedFormInputGradient<double>(dyd, xHatWide, rows, first, count, gamma, sumG, sumGXHat, istd, dxd));
        Assert.Equal(Round(dxd), dx);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(5)]
    [InlineData(64)]
    [InlineData(1000)]
    public void Float_statistics_and_outputs_are_the_exact_ones_rounded_to_float_within_one_unit(int n)
    {
        // The hard case of the issue: mean 1e4, spread 1e-2, where float arithmetic loses the spread.
        var random = new Random(7 * n);
        float[] x = Data(random, n, 1e4, 1e-2), dy = Data(random, n, 0, 1);
        var exact = new ExactColumn(Widen(x), 1.5, 0.25, 1e-5, Widen(dy));
        ColumnKernels.Moments<float>(x, out double center, out double correction, out double variance);
        Assert.Equal(exact.Mean, center + correction, 1e-15 * exact.Mean);
        Assert.Equal(exact.Variance, variance, 1e-12 * exact.Variance);

        double istd = ElementFormulas.InverseStandardDeviation(variance, 1e-5);
        float[] xHat = new float[n], y = new float[n], dx = new float[n];
        Assert.True(ColumnKernels.Normalize<float>(x, center, correction, istd, 1.5, 0.25, xHat, y, stream: false));
        AssertWithinOneUnit("x̂", exact.XHat, xHat);
        AssertWithinOneUnit("y", exact.Y, y);
    }

    [Fact]
    public void A_result_that_rounds_to_float_infinity_fails_the_probe_and_one_that_rounds_to_the_largest_float_passes()
    {
        // The least double that rounds to float +∞: the largest float plus half its spacing, 2¹²⁸ − 2¹⁰³ (a tie, which
        // rounds to the even neighbour, ∞).
        const double limit = 3.4028235677973366E+38;
        Assert.Equal(float.PositiveInfinity, (float)limit);
        Assert.Equal(float.MaxValue, (float)Math.BitDecrement(limit));
        foreach (double value in new[] { limit, -limit, double.MaxValue, double.PositiveInfinity, double.NaN })
        {
            Assert.True(double.IsNaN(Elements<float>.Probe(value)), $"{value}");
            for (int lane = 0; lane < Vector<double>.Count; lane++)
            {
                // One bad lane among finite ones, in every position of the stored vector.
                Assert.True(Elements<float>.HasFault(StoreFloats(OneLane(Vector<double>.Count, lane, value))), $"{value}, lane {lane}");
            }

            for (int lane = 0; lane < 4; lane++)
            {
                Assert.True(Elements<float>.HasFault(Store256Floats(Vector256.Create(OneLane(4, lane, value)))), $"{value}, lane {lane}");
            }
        }

        foreach (double value in new[] { Math.BitDecrement(limit), -Math.BitDecrement(limit), float.MaxValue, 0, -1e-300 })
        {
            Assert.Equal(0, Elements<float>.Probe(value));
            Assert.False(Elements<float>.HasFault(StoreFloats(OneLane(Vector<double>.Count, 0, value))), $"{value}");
            Assert.False(Elements<float>.HasFault(Store256Floats(Vector256.Create(value))), $"{value}");
        }

        // A double keeps what float cannot.
        Assert.Equal(0, Elements<double>.Probe(limit));
        Assert.True(double.IsNaN(Elements<double>.Probe(double.PositiveInfinity)));
        double[] doubles = new double[Vector<double>.Count];
        Assert.False(Elements<double>.HasFault(Elements<double>.StoreVector(new Vector<double>(limit), ref doubles[0], 0)));
        Assert.True(Elements<double>.HasFault(Elements<double>.StoreVector(new Vector<double>(OneLane(Vector<double>.Count, Vector<double>.Count - 1, double.NegativeInfinity)), ref doubles[0], 0)));
        Assert.Equal(double.NegativeInfinity, doubles[^1]);

        static double[] OneLane(int count, int lane, double value) => [.. Enumerable.Range(0, count).Select(i => i == lane ? value : 1.5)];

        static Vector<double> StoreFloats(double[] lanes)
        {
            float[] stored = new float[lanes.Length];
            Vector<double> probe = Elements<float>.StoreVector(new Vector<double>(lanes), ref stored[0], 0);
            Assert.Equal(Round(lanes), stored);
            return probe;
        }

        static Vector256<double> Store256Floats(Vector256<double> lanes)
        {
            float[] stored = new float[4];
            Vector256<double> probe = Elements<float>.Store256(lanes, ref stored[0], 0);
            Assert.Equal(Round([lanes[0], lanes[1], lanes[2], lanes[3]]), stored);
            return probe;
        }
    }

    [Fact]
    public void Float_statistics_take_one_pass_around_a_center_within_16_sigma_of_the_mean_and_two_beyond()
    {
        // n − 1 values spread over ±1 around 0 and a first value k: the first value lies some k/σ standard deviations from
        // the mean (at most √(n − 1) of them, so only columns of more than 257 values can put it beyond 16σ).
        foreach ((int n, double first, bool onePass) in new[] { (1001, 10.0, true), (1001, 12.0, false), (4001, 9.0, true), (4001, 10.0, false) })
        {
            var random = new Random(n);
            float[] x = [(float)first, .. Data(random, n - 1, 0, 1)];
            var exact = new ExactColumn(Widen(x), 1, 0, 0, new double[n]);
            double reach = Math.Abs(x[0] - exact.Mean) / Math.Sqrt(exact.Variance);
            Assert.True(onePass ? reach is > 14 and < 16 : reach is > 16 and < 18, $"the first value lies {reach:F1}σ from the mean");

            // One pass keeps the first value as the center; a second moves the center to the mean of the first.
            ColumnKernels.Moments<float>(x, out double center, out double correction, out double variance);
            Assert.Equal(onePass, center == x[0]);
            Assert.Equal(exact.Variance, variance, 1e-13 * exact.Variance);
            Assert.Equal(exact.Mean, center + correction, 1e-15);

            // Double keeps its rule, σ/4: two passes either way.
            ColumnKernels.Moments<double>(Widen(x), out double centerD, out _, out _);
            Assert.NotEqual(x[0], centerD);
        }

        if (!QuadKernels.IsSupported)
        {
            return;
        }

        // Four short segments, each with its first value about 7σ from its mean: one pass for float, two for double.
        float[] quad = [.. Enumerable.Range(0, 4).SelectMany(s => new[] { 8f + s }.Concat(Data(new Random(s), 63, 0, 1)))];
        QuadKernels.Moments(ref quad[0], 64, out Vector256<double> quadCenter, out _, out _);
        QuadKernels.Moments(ref Widen(quad)[0], 64, out Vector256<double> quadCenterD, out _, out _);
        for (int s = 0; s < 4; s++)
        {
            Assert.Equal(quad[64 * s], quadCenter[s]);
            Assert.NotEqual(quad[64 * s], quadCenterD[s]);
        }
    }

    [Fact]
    public void Element_types_other_than_double_and_float_are_refused_by_name()
    {
        Assert.Equal("The element type Int32 is not supported: use double or float.", Assert.Throws<NotSupportedException>(() => Elements<int>.ToDouble(1)).Message);
        Assert.Throws<NotSupportedException>(() => Elements<int>.FromDouble(1));
        Assert.Equal(2.5, Elements<float>.ToDouble(2.5f));
        Assert.Equal(0.1f, Elements<float>.FromDouble(0.1));
    }

    [Fact]
    public void Widening_and_rounding_whole_spans_go_value_by_value()
    {
        float[] single = [1.5f, -0.1f, 3e38f];
        double[] wide = new double[3];
        Elements<float>.Widen(single, wide);
        Assert.Equal(new[] { 1.5, (double)-0.1f, (double)3e38f }, wide);
        float[] back = new float[3];
        Elements<float>.Narrow([0.1, 2.5, 1e39], back);
        Assert.Equal(new[] { 0.1f, 2.5f, float.PositiveInfinity }, back);
        Assert.True(Elements<float>.AllFinite([0.1, 3e38, -3e38]));
        Assert.False(Elements<float>.AllFinite([0.1, 1e39, 1]));
        Assert.False(Elements<float>.AllFinite([double.NaN]));
        Assert.True(Elements<double>.AllFinite([1e39]));
        double[] copy = new double[2];
        Elements<double>.Narrow([1.25, -2], copy);
        Assert.Equal(new[] { 1.25, -2 }, copy);
    }

    [Theory]
    [InlineData(5, 0)]
    [InlineData(5, 4)]
    [InlineData(100, 1)]
    [InlineData(100, 50)]
    [InlineData(100, 99)]
    public void A_lone_float_overflow_is_caught_where_the_double_value_is_finite(int n, int at)
    {
        // dy = 1 everywhere but at one place 2e38, and dx = 2·dy: 4e38 is finite in double but +∞ in float.
        float[] dy = Enumerable.Repeat(1f, n).ToArray(), dx = new float[n];
        dy[at] = 2e38f;
        foreach (bool stream in new[] { false, true })
        {
            Assert.False(ColumnKernels.Scale<float>(dy, 2, dx, stream));
            Assert.Equal(float.PositiveInfinity, dx[at]);
            Assert.True(ColumnKernels.Scale<float>(dy, 1.5, dx, stream));
            Assert.True(ColumnKernels.Scale<double>(Widen(dy), 2, new double[n], stream));
        }

        Assert.Equal(-1, ColumnKernels.FirstNonFinite<float>(dy));
        dy[at] = float.PositiveInfinity;
        Assert.Equal(at, ColumnKernels.FirstNonFinite<float>(dy));
        dy[at] = float.NaN;
        Assert.Equal(at, ColumnKernels.FirstNonFinite<float>(dy));
    }

    [Fact]
    public void The_row_group_and_quad_kernels_catch_a_float_overflow_too()
    {
        // Two rows, two features: x̂ = ±1 per row, γ = 3e38 makes y = ±3e38 finite; γ = 4e38 overflows float only.
        float[] x = [0, 1, 1, 0];
        double[] center = [0, 1], correction = [0.5, -0.5], istd = [2, 2], beta = [0, 0];
        var scratch = new LaneScratch();
        float[] xHat = new float[4], y = new float[4];
        Assert.True(LaneKernels.Normalize<float>(x, 2, 0, 2, center, correction, istd, [3e38, 3e38], beta, xHat, y));
        Assert.False(LaneKernels.Normalize<float>(x, 2, 0, 2, center, correction, istd, [1, 4e38], beta, xHat, y));
        Assert.True(double.IsInfinity(y[2]) && double.IsInfinity(y[3]));
        Assert.True(LaneKernels.Normalize<double>(Widen(x), 2, 0, 2, center, correction, istd, [1, 4e38], beta, new double[4], new double[4]));

        if (!QuadKernels.IsSupported)
        {
            // The quad kernels need AVX; .ci/run's second pass, with AVX off, takes the general kernels, tested above.
            return;
        }
        float[] quad = Enumerable.Range(0, 16).Select(i => (float)(i % 4 == 0 ? 1 : 0)).ToArray(), quadXHat = new float[16], quadY = new float[16];
        QuadKernels.Moments(ref quad[0], 4, out Vector256<double> c, out Vector256<double> k, out Vector256<double> v);
        Vector256<double> s = QuadKernels.InverseStandardDeviation(v, 1e-5);
        Assert.Equal(0b0100, QuadKernels.Normalize(ref quad[0], 4, c, k, s, Vector256.Create(1, 1, 3e38, 1), Vector256<double>.Zero, ref quadXHat[0], ref quadY[0]));
        Assert.Equal(float.PositiveInfinity, quadY[8]);
    }

    /// <summary>
    /// Float statistics against the double kernels' over the same values. Where float takes one pass around a center c
    /// within 16σ of the mean and double two, the float pass sums n exact terms d = x − c (in any order, each sum errs by
    /// at most n·u of the sum of the magnitudes, u = 2⁻⁵³) and n squares (rounded once each). Σd² = n(σ² + δ²) ≤ 257nσ²
    /// with δ = μ − c, and Σ|d| ≤ n·√257·σ enters σ² multiplied by 2|δ| ≤ 32σ: so |Δσ²| ≤ (257 + 32·√257)·n·u·σ² ≈
    /// 770·n·u·σ², and |Δμ| ≤ √257·n·u·σ plus the rounding of μ. Double's own errors, around a center within σ/4, are
    /// 1.6·n·u·σ² and 1.04·n·u·σ. Bounds with room for the few roundings that do not grow with n:
    /// |Δσ²| ≤ 800·(n + 1)·u·σ² and |Δμ| ≤ 2n·17·u·σ + 2u·|μ|.
    /// </summary>
    internal static (double Mean, double Variance) StatisticsBounds(int n, double mean, double variance)
    {
        const double u = 1.0 / (1L << 53);
        return ((2 * n * 17 * u * Math.Sqrt(variance)) + (2 * u * Math.Abs(mean)), 800 * (n + 1) * u * variance);
    }

    /// <summary>Float statistics against the double's within <see cref="StatisticsBounds"/>.</summary>
    internal static void AssertStatisticsClose(int n, double expectedMean, double expectedVariance, double mean, double variance)
    {
        (double meanBound, double varianceBound) = StatisticsBounds(n, expectedMean, expectedVariance);
        Assert.True(Math.Abs(variance - expectedVariance) <= varianceBound, $"variance {variance:R} against {expectedVariance:R}");
        Assert.True(Math.Abs(mean - expectedMean) <= meanBound, $"mean {mean:R} against {expectedMean:R}");
    }

    /// <summary>
    /// Float statistics against the double's, given in two parts, center + correction: where double kept the first value
    /// as its center (one pass), float took the same pass over the same values and must agree bit for bit; otherwise
    /// within <see cref="StatisticsBounds"/>.
    /// </summary>
    internal static void AssertStatisticsClose(int n, double first, (double Center, double Correction, double Variance) expected, (double Center, double Correction, double Variance) actual)
    {
        if (expected.Center == first)
        {
            Assert.Equal(expected, actual);
            return;
        }

        AssertStatisticsClose(n, expected.Center + expected.Correction, expected.Variance, actual.Center + actual.Correction, actual.Variance);
    }

    private static float[] Data(Random random, int n, double mean, double spread)
        => Enumerable.Range(0, n).Select(_ => (float)(mean + (spread * ((2 * random.NextDouble()) - 1)))).ToArray();

    private static double[] Widen(float[] values) => values.Select(v => (double)v).ToArray();

    private static float[] Round(double[] values) => values.Select(v => (float)v).ToArray();

    private static void AssertWithinOneUnit(string what, double[] exact, float[] actual)
    {
        for (int i = 0; i < exact.Length; i++)
        {
            float rounded = (float)exact[i];
            Assert.True(
                actual[i] == rounded || actual[i] == MathF.BitIncrement(rounded) || actual[i] == MathF.BitDecrement(rounded),
                $"{what}[{i}] = {actual[i]:R}, the exact value rounded to float is {rounded:R}");
        }
    }
}
