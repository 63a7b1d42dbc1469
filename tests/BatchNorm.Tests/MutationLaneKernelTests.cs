using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The row-group kernels (layer and group norm, every row a SIMD lane) must notice a lone +∞ in y or dx in any row, in
/// the vector lanes (rows 0–3 of 5) and in the scalar tail (row 4), with no −∞ or NaN beside it, and leave the layer
/// untouched.
/// </summary>
public class MutationLaneKernelTests
{
    public static TheoryData<int, int> RowsAndFeatures => new()
    {
        { 0, 6 }, { 1, 6 }, { 3, 6 }, { 4, 6 }, { 0, 200 }, { 2, 200 }, { 4, 200 },
    };

    [Theory]
    [MemberData(nameof(RowsAndFeatures))]
    public void A_lone_output_overflowing_to_plus_infinity_in_any_row_is_named(int row, int features)
    {
        // The row is 1 in the last feature and 0 elsewhere: x̂ = √(D − 1) there. Only the last feature has γ ≠ 0, at
        // 1.5·max/√(D − 1): its y is 1.5·max (+∞) in that row and finite in the others, every other y is β = 0.
        var layer = new LayerNormLayer(features);
        layer.Gamma.Clear();
        layer.Gamma[features - 1] = 1.5 / Math.Sqrt(features - 1) * double.MaxValue;
        Matrix<double> x = Matrix<double>.Build.Dense(5, features);
        x[row, features - 1] = 1;
        for (int other = 0; other < 5; other++)
        {
            x[other, 0] = other == row ? 0 : 1;     // the other rows' x̂ in the last feature is −1/√(D − 1)
        }

        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));

        Assert.Contains("y = γ·x̂ + β overflows", e.Message);
        Assert.Null(layer.Cache);
    }

    [Theory]
    [MemberData(nameof(RowsAndFeatures))]
    public void A_lone_dx_of_plus_infinity_among_finite_values_of_either_sign_is_named_in_any_row(int row, int features)
    {
        // In the row, x is 0 in features 0, 1, 2, 3 and ±1 (mean 0) in the rest, so x̂ = 0 there; dy = c·(3, −1, −1, −1)
        // in those features has mean 0 and Σ dy·x̂ = 0, so dx = s·dy exactly with s = 1/√(σ² + ε). With s·c = 0.45·max only
        // feature 0 overflows (+∞); the −0.45·max come after it in the row's lane. Other rows: dy = 0.
        var layer = new LayerNormLayer(features);
        Matrix<double> x = Matrix<double>.Build.Dense(5, features);
        for (int r = 0; r < 5; r++)
        {
            for (int j = 4; j < features; j++)
            {
                x[r, j] = j % 2 == 0 ? 1 : -1;
            }
        }

        layer.Forward(x);
        double c = 0.45 * double.MaxValue / layer.Cache!.InverseStandardDeviation[row];
        Matrix<double> dy = Matrix<double>.Build.Dense(5, features);
        dy[row, 0] = 3 * c;
        dy[row, 1] = dy[row, 2] = dy[row, 3] = -c;
        NormalizationCache cache = layer.Cache;

        var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));

        Assert.Contains("cannot be back-propagated", e.Message);
        Assert.Same(cache, layer.Cache);
        Assert.All(layer.GammaGradient, g => Assert.Equal(0, g));

        dy[row, 0] = dy[row, 2] = c;
        Matrix<double> dx = layer.Backward(dy);
        for (int j = 0; j < features; j++)
        {
            double expected = j >= 4 ? 0 : (j % 2 == 0 ? 0.45 : -0.45) * double.MaxValue;
            Assert.Equal(expected, dx[row, j], 1e-14 * double.MaxValue);
        }
    }

    /// <summary>Rows × features × groups: chunks of 16 rows and a rest, blocks of 128 features, tiles of 256 rows.</summary>
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 37, 6, 1 }, { 37, 6, 3 }, { 37, 300, 1 }, { 37, 300, 3 }, { 300, 300, 1 }, { 300, 12, 2 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Every_row_gets_the_bits_it_gets_alone(int rows, int features, int groups)
    {
        // Rows are SIMD lanes, 16 at a time in registers, the rest one by one, tiles of 256; a row's statistics, y and dx
        // must not depend on where it falls. Group g's values lie near 1e8·(g + 1) with a spread of 1, so a lost pass
        // around the mean, a wrong center or a wrong column shows in the last bits.
        var random = new Random(rows + features + groups);
        int size = features / groups;
        Matrix<double> x = Matrix<double>.Build.Dense(rows, features, (i, j) => (1e8 * (1 + (j / size))) + random.NextDouble());
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, features, (i, j) => random.NextDouble() - 0.5);
        NormalizationLayer all = Layer(features, groups, random.Next());
        Matrix<double> y = all.Forward(x), dx = all.Backward(dy);
        for (int i = 0; i < rows; i++)
        {
            NormalizationLayer alone = Layer(features, groups, random.Next());
            CopyParameters(all, alone);
            Matrix<double> yAlone = alone.Forward(x.SubMatrix(i, 1, 0, features)), dxAlone = alone.Backward(dy.SubMatrix(i, 1, 0, features));
            for (int g = 0; g < groups; g++)
            {
                Bits(alone.Cache!.Mean[g], all.Cache!.Mean[(g * rows) + i], $"mean of row {i}, group {g}");
                Bits(alone.Cache.Variance[g], all.Cache.Variance[(g * rows) + i], $"variance of row {i}, group {g}");
            }

            for (int j = 0; j < features; j++)
            {
                Bits(yAlone[0, j], y[i, j], $"y[{i}, {j}]");
                Bits(dxAlone[0, j], dx[i, j], $"dx[{i}, {j}]");
            }
        }
    }

    [Theory]
    [InlineData(37, 6, 3)]
    [InlineData(37, 300, 2)]
    public void Every_group_gets_the_bits_a_layer_norm_on_its_features_computes(int rows, int features, int groups)
    {
        // A group's statistics start from its own first feature, whatever the other groups hold.
        var random = new Random(features * groups);
        int size = features / groups;
        Matrix<double> x = Matrix<double>.Build.Dense(rows, features, (i, j) => (1e8 * (1 + (3 * (j / size)))) + random.NextDouble());
        var group = new GroupNormLayer(features, groups);
        Matrix<double> y = group.Forward(x);
        for (int g = 0; g < groups; g++)
        {
            var layer = new LayerNormLayer(size);
            Matrix<double> yAlone = layer.Forward(x.SubMatrix(0, rows, g * size, size));
            for (int i = 0; i < rows; i++)
            {
                Bits(layer.Cache!.Mean[i], group.Cache!.Mean[(g * rows) + i], $"mean of row {i}, group {g}");
                Bits(layer.Cache.Variance[i], group.Cache.Variance[(g * rows) + i], $"variance of row {i}, group {g}");
                for (int j = 0; j < size; j++)
                {
                    Bits(yAlone[i, j], y[i, (g * size) + j], $"y[{i}, {(g * size) + j}]");
                }
            }
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void A_row_whose_squares_overflow_around_its_mean_too_is_named(int row)
    {
        // ±1e155 around a mean of 0: the squares overflow around the first value and again around the mean, so the
        // statistics cannot be formed; rows 0–3 go four at a time, row 4 alone.
        var layer = new LayerNormLayer(4);
        Matrix<double> x = Matrix<double>.Build.Dense(5, 4, (i, j) => j + 1.0);
        x.SetRow(row, new[] { 1e155, -1e155, 1e155, -1e155 });

        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));

        Assert.Contains($"Row {row} of input", e.Message);
        Assert.Contains("statistics overflow", e.Message);
        Assert.Null(layer.Cache);
    }

    [Fact]
    public void Sums_over_blocks_of_features_carry_their_rounding_error_to_the_end()
    {
        // 300 features in blocks of 128, 128 and 44. Every row is 0 and ±2²⁶ in block 1 (Σx² = 2⁵³), ±0.5 twice in
        // block 2 (0.5) and four times in block 3 (1): Σx = 0, so the variance is Σx²/300 = (2⁵³ + 1.5)/300. Added block by
        // block, 2⁵³ + 0.5 and then + 1 round to 2⁵³ (the spacing there is 2); the compensation keeps the 1.5, and
        // (2⁵³ + 1.5)/300 rounds to 30023997515803.312, where 2⁵³/300 or (2⁵³ − 1.5)/300 give 30023997515803.305 and .3.
        // 17 rows: 16 in registers, one alone.
        Matrix<double> x = Matrix<double>.Build.Dense(17, 300);
        for (int i = 0; i < 17; i++)
        {
            x[i, 1] = 1 << 26;
            x[i, 2] = -(1 << 26);
            x[i, 128] = x[i, 256] = x[i, 258] = 0.5;
            x[i, 129] = x[i, 257] = x[i, 259] = -0.5;
        }

        var layer = new LayerNormLayer(300);
        layer.Forward(x);

        for (int i = 0; i < 17; i++)
        {
            Assert.Equal(0, layer.Cache!.Mean[i]);
            Assert.Equal(30023997515803.312, layer.Cache.Variance[i]);
        }
    }

    private static NormalizationLayer Layer(int features, int groups, int seed)
    {
        var random = new Random(seed);
        NormalizationLayer layer = groups == 1 ? new LayerNormLayer(features) : new GroupNormLayer(features, groups);
        layer.Gamma.MapInplace(_ => 0.5 + random.NextDouble());
        layer.Beta.MapInplace(_ => random.NextDouble() - 0.5);
        return layer;
    }

    private static void CopyParameters(NormalizationLayer from, NormalizationLayer to)
    {
        from.Gamma.CopyTo(to.Gamma);
        from.Beta.CopyTo(to.Beta);
    }

    private static void Bits(double expected, double actual, string what)
        => Assert.True(
            BitConverter.DoubleToInt64Bits(expected) == BitConverter.DoubleToInt64Bits(actual),
            $"{what}: {expected:R} alone but {actual:R} among the others");
}
