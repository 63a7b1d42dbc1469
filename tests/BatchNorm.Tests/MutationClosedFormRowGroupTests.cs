using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The closed form's pass over row groups (layer and group norm, every row a SIMD lane): a dx that overflows although dy
/// and its column sums are finite is refused, in the two-value form and in the general one, with a single row (so that
/// one lane decides) and with the overflow in a later column of the first row than of the second (so that the column
/// named is the first in the matrix, not the first met row by row). The numbers are powers of 2, so every value below is
/// exact: with a constant row σ² = 0 and 1/√(σ² + ε) = 2^300 for ε = 2^−600.
/// </summary>
public class MutationClosedFormRowGroupTests
{
    private static readonly double Epsilon = Math.Pow(2, -600);

    private const string Overflow = "cannot be back-propagated: dx, or an intermediate of the closed strategy, overflows the range of double although dy and its sums are finite";

    [Fact]
    public void A_two_value_group_whose_dx_overflows_in_a_single_row_is_refused()
    {
        // dx₁ = −dx₂ = γ·ε·(σ² + ε)^(−3/2)·(g₁ − g₂)/2 = 2^300·2^730 = 2^1030: beyond double.
        var layer = new LayerNormLayer(2, Epsilon);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 5.0, 5 } }));
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { Math.Pow(2, 730), -Math.Pow(2, 730) } });
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
        Assert.Equal("outputGradient", e.ParamName);
        Assert.StartsWith("Column 0 of outputGradient " + Overflow, e.Message, StringComparison.Ordinal);

        // With dy 2^7 times smaller dx = ±2^1023 exactly, the largest power of 2 a double holds, and nothing is refused.
        Matrix<double> dx = layer.Backward(dy / 128);
        Assert.Equal(Math.Pow(2, 1023), dx[0, 0]);
        Assert.Equal(-Math.Pow(2, 1023), dx[0, 1]);
    }

    [Fact]
    public void A_two_value_group_whose_dx_overflows_in_one_of_two_rows_is_refused()
    {
        var layer = new GroupNormLayer(4, 2, Epsilon);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 5.0, 5, 1, 3 }, { -2.0, -2, 4, 0 } }));
        double big = Math.Pow(2, 730);
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0.5, 0.25, 1 }, { 0, 0, big, -big } });

        // Row 1's second group has σ² = 4, so its dx is small; row 1's first group, constant, would overflow, but its g is 0.
        Matrix<double> fine = layer.Backward(dy);
        Assert.True(fine.ForAll(double.IsFinite));

        Matrix<double> bad = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0.5, 0.25, 1 }, { big, -big, 0, 0 } });
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(bad));
        Assert.StartsWith("Column 0 of outputGradient " + Overflow, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_group_of_three_whose_dx_overflows_in_a_single_row_is_refused()
    {
        // x̂ = 0, so dx = 2^300·(g − mean(g)) = 2^300·(0, 2^725, −2^725): columns 1 and 2 overflow.
        var layer = new LayerNormLayer(3, Epsilon);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 7.0, 7, 7 } }));
        double big = Math.Pow(2, 725);
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 0, big, -big } })));
        Assert.Equal("outputGradient", e.ParamName);
        Assert.StartsWith("Column 1 of outputGradient " + Overflow, e.Message, StringComparison.Ordinal);

        // A quarter of it is representable: 2^300·2^723 = 2^1023.
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 0, big / 4, -big / 4 } }));
        Assert.Equal(new[] { 0, Math.Pow(2, 1023), -Math.Pow(2, 1023) }, dx.Row(0).ToArray());
    }

    [Fact]
    public void The_column_named_is_the_first_that_overflows_in_any_row()
    {
        // Row 0 overflows in columns 1 and 2, row 1 in columns 0 and 2: column 0 is named, though row 0 comes first.
        var layer = new LayerNormLayer(3, Epsilon);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 7.0, 7, 7 }, { -1.0, -1, -1 } }));
        double big = Math.Pow(2, 725);
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0, big, -big }, { big, 0, -big } });
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
        Assert.StartsWith("Column 0 of outputGradient " + Overflow, e.Message, StringComparison.Ordinal);
    }
}
