using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The short-column kernels (four columns at a time, and a column left over) must name the one column whose y or dx
/// overflows, whichever of the four it is, when it overflows to +∞ alone: no −∞ beside it whose sum with it would be NaN
/// anyway, and no other column failing with it. (A lone +∞ among finite dx of both signs in a group of four, 16 rows:
/// <see cref="MutationColumnKernelTests.A_lone_training_dx_of_plus_infinity_among_finite_values_of_either_sign_is_named"/>.)
/// </summary>
public class MutationQuadKernelTests
{
    public static TheoryData<int, int, string> ShortColumns => Columns(3, 4, 5, 8);

    // With (0, 0, 1), rows 0 and 1 always get opposite dx (see Row0Dy); n = 5 covers a length that is not a multiple of 4.
    public static TheoryData<int, int, string> TrainingColumns => Columns(4, 5, 8);

    private static TheoryData<int, int, string> Columns(params int[] rowCounts)
    {
        var data = new TheoryData<int, int, string>();
        foreach (int rows in rowCounts)
        {
            for (int column = 0; column < 5; column++)
            {
                data.Add(rows, column, column % 2 == 0 ? "closed" : "staged");
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(ShortColumns))]
    public void A_lone_output_overflowing_to_plus_infinity_in_any_short_column_is_named(int rows, int column, string strategy)
    {
        // Every column is (0, …, 0, 1): x̂ is √(n − 1) in the last row and −1/√(n − 1) elsewhere. γ = 1.5e308 and
        // β = γ/√(n − 1) make the last row's y = γ·√(n − 1) + β ≥ 2.1e308 overflow, to +∞, and leave the others near 0, so
        // even twice each y, or their sum, is +∞ and not NaN. Five columns: 0–3 go through the kernels as a group of four,
        // column 4 alone.
        var layer = new BatchNormLayer(5, backward: ContractTests.Strategy(strategy));
        layer.Gamma[column] = 1.5e308;
        layer.Beta[column] = 1.5e308 / Math.Sqrt(rows - 1);
        OverflowAssert.ForwardNames(layer, LastRowOnes(rows), column);
    }

    [Theory]
    [MemberData(nameof(TrainingColumns))]
    public void A_lone_training_dx_overflowing_to_plus_infinity_in_any_short_column_is_named(int rows, int column, string strategy)
    {
        var layer = new BatchNormLayer(5, epsilon: double.Epsilon, backward: ContractTests.Strategy(strategy));
        layer.Forward(LastRowOnes(rows));
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, 5);
        dy[0, column] = Row0Dy(rows, 1.5);
        OverflowAssert.BackwardNames(layer, dy, column);
    }

    [Theory]
    [MemberData(nameof(ShortColumns))]
    public void A_lone_inference_dx_overflowing_to_plus_infinity_in_any_short_column_is_named(int rows, int column, string strategy)
    {
        // Inference with the initial running statistics (mean 0, variance 1): dx = γ/√(1 + ε)·dy, so γ = 1e308 and a single
        // dy of 2, once in the first row (the kernels' vector part) and once in the last (their scalar tail for n = 3 and 5).
        foreach (int row in new[] { 0, rows - 1 })
        {
            var layer = new BatchNormLayer(5, backward: ContractTests.Strategy(strategy)) { IsTraining = false };
            layer.Gamma[column] = 1e308;
            layer.Forward(Matrix<double>.Build.Dense(rows, 5));
            Matrix<double> dy = Matrix<double>.Build.Dense(rows, 5);
            dy[row, column] = 2;
            OverflowAssert.BackwardNames(layer, dy, column);
        }
    }

    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(8)]
    public void Just_below_the_overflow_every_short_column_back_propagates_the_values_worked_out_by_hand(int rows)
    {
        // The same batches with dx in row 0 at 0.9·max in every column: no fault where there is none, and the values.
        var layer = new BatchNormLayer(5, epsilon: double.Epsilon);
        layer.Forward(LastRowOnes(rows));
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, 5);
        dy.SetRow(0, Vector<double>.Build.Dense(5, Row0Dy(rows, 0.9)));

        Matrix<double> dx = layer.Backward(dy);

        for (int column = 0; column < 5; column++)
        {
            Assert.Equal(0.9 * double.MaxValue, dx[0, column], 1e-14 * double.MaxValue);
            for (int row = 1; row < rows - 1; row++)
            {
                Assert.Equal(-0.9 / (rows - 2) * double.MaxValue, dx[row, column], 1e-14 * double.MaxValue);
            }

            Assert.Equal(0, dx[rows - 1, column], 1e-14 * double.MaxValue);
        }
    }

    /// <summary>n rows of five columns (0, …, 0, 1).</summary>
    private static Matrix<double> LastRowOnes(int rows)
    {
        Matrix<double> x = Matrix<double>.Build.Dense(rows, 5);
        x.SetRow(rows - 1, Vector<double>.Build.Dense(5, 1));
        return x;
    }

    /// <summary>
    /// The dy in row 0 (all other dy 0) that makes dx in row 0 equal <paramref name="times"/>·max, with ε ≈ 0 (the smallest double) and γ = 1.
    /// </summary>
    /// <remarks>
    /// Every column is (0, …, 0, 1): μ = 1/n, σ = √(n − 1)/n, x̂ = −1/√(n − 1) above the last row and √(n − 1) in it. With
    /// dy = c in row 0, mean dy = c/n and mean(dy·x̂) = −c/(n√(n − 1)), so dx = (1/σ)·(dy − mean dy − x̂·mean(dy·x̂)) is
    /// (c/σ)·(n − 2)/(n − 1) in row 0, −(c/σ)/(n − 1) in the middle rows and 0 in the last. Row 0 beyond the range of
    /// double leaves the middle rows at most half of it for n ≥ 4 (for n = 3 they are −row 0: two infinities).
    /// </remarks>
    private static double Row0Dy(int rows, double times)
        => times * (rows - 1) / (rows - 2) * (Math.Sqrt(rows - 1) / rows) * double.MaxValue;
}
