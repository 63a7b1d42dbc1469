using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The long-column kernels (columns of more than 128 values, in SIMD blocks with a scalar tail, and the streaming stores
/// of batches of 2¹⁹ values or more) must name the one column whose y or dx overflows when it overflows to +∞ alone,
/// in the vector part and in the scalar tail, and leave the layer untouched.
/// </summary>
public class MutationColumnKernelTests
{
    /// <summary>Rows × columns: long columns of a multiple of 4 and with a tail; the same, streamed (≥ 2¹⁹ values).</summary>
    public static TheoryData<int, int, int> LongColumns => new()
    {
        { 200, 3, 0 }, { 200, 3, 199 }, { 203, 3, 0 }, { 203, 3, 202 }, { 203, 3, 201 },
        { 1024, 512, 0 }, { 1027, 512, 0 }, { 1027, 512, 1026 }, { 1027, 512, 517 },
    };

    [Theory]
    [MemberData(nameof(LongColumns))]
    public void A_lone_output_overflowing_to_plus_infinity_in_a_long_column_is_named(int rows, int columns, int row)
    {
        // Column c is 1 in the given row and 0 elsewhere: x̂ = √(n − 1) there and −1/√(n − 1) elsewhere. γ = 1.5·max/√(n − 1)
        // and β = γ/√(n − 1) give y = 1.5·max + β there (+∞) and y ≈ 0 elsewhere, so no −∞ or NaN beside the +∞ (twice any
        // y, or their sum, is still +∞). Each of the last (up to) four columns in turn: with 1027 rows a column starts 3
        // values later in the 32-byte alignment than the one before, so row 0 falls in the scalar steps that the streaming
        // stores take before the first aligned address in at least three of them, whatever the array's own alignment.
        for (int column = Math.Max(0, columns - 4); column < columns; column++)
        {
            var layer = new BatchNormLayer(columns);
            layer.Gamma[column] = 1.5 / Math.Sqrt(rows - 1) * double.MaxValue;
            layer.Beta[column] = layer.Gamma[column] / Math.Sqrt(rows - 1);
            Matrix<double> x = Matrix<double>.Build.Dense(rows, columns);
            x[row, column] = 1;
            OverflowAssert.ForwardNames(layer, x, column);
        }
    }

    [Theory]
    [MemberData(nameof(LongColumns))]
    public void A_lone_inference_dx_overflowing_to_plus_infinity_in_a_long_column_is_named(int rows, int columns, int row)
    {
        // Inference with the initial running statistics: dx = γ/√(1 + ε)·dy, so γ = 1e308 and one dy of 2 give one +∞.
        int column = columns - 2;
        var layer = new BatchNormLayer(columns) { IsTraining = false };
        layer.Gamma[column] = 1e308;
        layer.Forward(Matrix<double>.Build.Dense(rows, columns));
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, columns);
        dy[row, column] = 2;
        OverflowAssert.BackwardNames(layer, dy, column);

        // Half of it is 1e308 there and 0 elsewhere.
        dy[row, column] = 1;
        Matrix<double> dx = layer.Backward(dy);
        Assert.Equal(1e308 / Math.Sqrt(1 + layer.Epsilon), dx[row, column]);
        Assert.Equal(1e308 / Math.Sqrt(1 + layer.Epsilon), dx.Column(column).Sum());
    }

    [Theory]
    [InlineData(16, 5, 0)]
    [InlineData(16, 5, 1)]
    [InlineData(16, 5, 2)]
    [InlineData(16, 5, 3)]
    [InlineData(200, 3, 1)]
    [InlineData(1024, 512, 510)]
    public void A_lone_training_dx_of_plus_infinity_among_finite_values_of_either_sign_is_named(int rows, int columns, int column)
    {
        // 16 rows and 5 columns: any of the four columns the short kernels take together; then a long column, and a
        // streamed one. In the column, x is 0 in rows 0, 4, 8, 12 and ±1 (mean 0, σ² = 3/4) in the rest, so x̂ = 0 there,
        // and dy = c·(3, −1, −1, −1) in those rows has mean 0 and Σ dy·x̂ = 0: dx = s·dy exactly. With s·c = 0.45·max only
        // row 0 overflows (+∞), and rows 4, 8, 12 sit in the same SIMD lane after it at −0.45·max.
        var layer = new BatchNormLayer(columns);
        layer.Gamma[column] = 4;
        Matrix<double> x = Matrix<double>.Build.Dense(rows, columns);
        for (int row = 0; row < rows; row++)
        {
            x[row, column] = (row % 4) switch { 0 => 0, 1 => 1, 2 => -1, _ => row / 4 % 2 == 0 ? 1 : -1 };
        }

        layer.Forward(x);
        Assert.Equal(0.75, layer.Cache!.Variance[column]);
        double c = 0.45 * double.MaxValue / (4 * layer.Cache.InverseStandardDeviation[column]);
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, columns);
        dy[0, column] = 3 * c;
        dy[4, column] = dy[8, column] = dy[12, column] = -c;
        OverflowAssert.BackwardNames(layer, dy, column);

        dy[0, column] = dy[8, column] = c;
        Matrix<double> dx = layer.Backward(dy);
        for (int row = 0; row < rows; row++)
        {
            double expected = row % 4 != 0 || row > 12 ? 0 : (row % 8 == 0 ? 0.45 : -0.45) * double.MaxValue;
            Assert.Equal(expected, dx[row, column], 1e-14 * double.MaxValue);
        }
    }

    [Fact]
    public void The_kernels_refuse_spans_shorter_than_the_first_source()
    {
        // Internal preconditions: every caller passes spans of one length, so these guard the kernels' own use.
        double[] three = new double[3], two = new double[2];
        Assert.Equal("b", Assert.Throws<ArgumentException>(() => ColumnKernels.SumAndDot(three, two)).ParamName);
        Assert.Contains("shorter than the first", Assert.Throws<ArgumentException>(() => ColumnKernels.SumAndDot(three, two)).Message);
        Assert.Contains("at least as long", Assert.Throws<ArgumentException>(() => ColumnKernels.ClosedFormInputGradient(three, two, 0, 0, 1, new double[3], false)).Message);
        Assert.Contains("at least as long", Assert.Throws<ArgumentException>(() => ColumnKernels.Scale(three, 1, two, false)).Message);
        Assert.Contains("at least as long", Assert.Throws<ArgumentException>(() => ColumnKernels.Normalize(three, 0, 0, 1, 1, 0, new double[3], two, false)).Message);

        // Equal lengths pass, and longer destinations are fine.
        Assert.Equal((6.0, 14.0), ColumnKernels.SumAndDot(new[] { 1.0, 2, 3 }, new[] { 1.0, 2, 3, 4 }));
        double[] dx = new double[4];
        Assert.True(ColumnKernels.Scale(new[] { 1.0, 2, 3 }, 2, dx, false));
        Assert.Equal(new[] { 2.0, 4, 6, 0 }, dx);
    }
}
