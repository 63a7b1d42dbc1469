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
}
