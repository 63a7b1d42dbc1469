using System;
using System.Collections.Generic;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Sums over more than one block of 128 values are added block by block with Neumaier's compensation, down a column
/// (batch norm) and across a row's features (layer norm, each row a SIMD lane or the scalar tail). Blocks whose sums are
/// 1, 2⁵³ + 2 and −(2⁵³ + 2) add up to exactly 1 only if the 1 lost in rounding 1 + 2⁵³ + 2 is carried: a plain sum
/// gives 2, and a compensation that takes the wrong operand as the larger one gives 0.
/// </summary>
public class BlockSumAccuracyTests
{
    private const int Length = 3 * 128;

    /// <summary>0, 1 and zeros; 2⁵² + 1 twice and zeros; −(2⁵² + 1) twice and zeros: one value per block of 128.</summary>
    private static double[] Values(double scale)
    {
        var values = new double[Length];
        double big = Math.ScaleB(1, 52) + 1;
        values[1] = 1;
        values[128] = values[129] = big;
        values[256] = values[257] = -big;
        return values.Select(v => v * scale).ToArray();
    }

    [Fact]
    public void Each_compensated_step_carries_the_exact_error_Neumaiers_branch_finds_whichever_operand_is_larger()
    {
        // The scalar step finds the error of sum + value by TwoSum, falling back to Neumaier's formula where TwoSum's
        // t − sum overflows; the vector step selects between Neumaier's two formulas. Both must give the bits of
        // Neumaier's branch, (s − t) + v for |s| ≥ |v|, else (v − t) + s: on random pairs of all sizes and signs, and on
        // zeros of either sign, subnormals, equal magnitudes, sums near the largest double and non-finite values.
        double max = double.MaxValue, tiny = double.Epsilon;
        var pairs = new List<(double Sum, double Value)>
        {
            (0.0, -0.0), (-0.0, 0.0), (-0.0, -0.0), (tiny, tiny), (3 * tiny, -tiny), (1e-310, 2e-310), (1.5, -1.5), (1.5, 1.5),
            (-3 * Math.ScaleB(1, 970), max), (max, -3 * Math.ScaleB(1, 970)), (max, max), (-max, -max), (max, -max),
            (double.PositiveInfinity, 1), (1, double.NegativeInfinity), (double.NaN, 1), (1, double.NaN),
        };
        var random = new Random(7);
        for (int k = 0; k < 10_000; k++)
        {
            pairs.Add((Math.ScaleB((2 * random.NextDouble()) - 1, random.Next(-1074, 1024)), Math.ScaleB((2 * random.NextDouble()) - 1, random.Next(-1074, 1024))));
            pairs.Add((Math.ScaleB((2 * random.NextDouble()) - 1, random.Next(-60, 60)), Math.ScaleB((2 * random.NextDouble()) - 1, random.Next(-60, 60))));
        }

        foreach ((double sum, double value) in pairs)
        {
            double compensation = Math.ScaleB(1, -70);
            double t = sum + value;
            double expected = compensation + (Math.Abs(sum) >= Math.Abs(value) ? (sum - t) + value : (value - t) + sum);

            double s = sum, c = compensation;
            ElementFormulas.CompensatedAdd(ref s, ref c, value);
            Assert.Equal(BitConverter.DoubleToInt64Bits(t), BitConverter.DoubleToInt64Bits(s));
            Assert.True(BitConverter.DoubleToInt64Bits(expected) == BitConverter.DoubleToInt64Bits(c) || (double.IsNaN(expected) && double.IsNaN(c)), $"{sum:R} + {value:R}: {c:R}, not {expected:R}");

            var vs = new System.Numerics.Vector<double>(sum);
            var vc = new System.Numerics.Vector<double>(compensation);
            ElementFormulas.CompensatedAdd(ref vs, ref vc, new System.Numerics.Vector<double>(value));
            Assert.Equal(BitConverter.DoubleToInt64Bits(t), BitConverter.DoubleToInt64Bits(vs[0]));
            Assert.True(BitConverter.DoubleToInt64Bits(expected) == BitConverter.DoubleToInt64Bits(vc[0]) || (double.IsNaN(expected) && double.IsNaN(vc[0])), $"vector {sum:R} + {value:R}");
        }
    }

    [Fact]
    public void The_mean_of_a_column_of_three_blocks_keeps_what_rounding_drops_between_them()
    {
        // The first value is 0, so the shifted sums are the values' own, and the mean is exactly 1/384 of the scale.
        double[] scales = [1, 0.5, 4];
        var layer = new BatchNormLayer(3);
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(scales.Select(Values)));
        for (int j = 0; j < 3; j++)
        {
            Assert.Equal(scales[j] / Length, layer.Cache!.Mean[j]);
        }
    }

    [Fact]
    public void The_mean_of_a_row_of_three_blocks_of_features_keeps_it_in_every_lane()
    {
        // Nine rows: with 4 or 8 lanes per vector some rows take the vector path and at least one the scalar tail.
        double[] scales = [1, 2, 0.25, 8, 0.5, 16, 0.125, 4, 32];
        Matrix<double> x = Matrix<double>.Build.DenseOfRowArrays(scales.Select(Values));
        foreach (NormalizationLayer layer in new NormalizationLayer[] { new LayerNormLayer(Length), new GroupNormLayer(2 * Length, 2) })
        {
            Matrix<double> input = layer.Features == Length ? x : x.Append(x);
            layer.Forward(input);
            for (int i = 0; i < scales.Length; i++)
            {
                Assert.Equal(scales[i] / Length, layer.Cache!.Mean[i]);
            }
        }
    }

    [Fact]
    public void The_backward_sums_of_three_blocks_of_features_keep_it_too()
    {
        // x is ±1 by parity and 0 where dy holds its large values, so x̂ is 0 there: the row's Σγ·dy is the pattern's 1
        // (times the row's scale), Σγ·dy·x̂ is x̂₁ times that, and a sum that dropped the 1 would move every dx by istd/384.
        double[] scales = [1, 2, 0.25, 8, 0.5, 16, 0.125, 4, 32];
        Matrix<double> dy = Matrix<double>.Build.DenseOfRowArrays(scales.Select(Values));
        Matrix<double> x = Matrix<double>.Build.Dense(scales.Length, Length, (_, j) => j is 128 or 129 or 256 or 257 ? 0 : j % 2 == 0 ? 1 : -1);
        var layer = new LayerNormLayer(Length, backward: BackwardStrategy.ClosedForm);
        layer.Forward(x);
        Matrix<double> dx = layer.Backward(dy);
        double inverseStd = 1 / Math.Sqrt((380.0 / Length) + 1e-5);
        for (int i = 0; i < scales.Length; i++)
        {
            double meanG = scales[i] / Length, meanGXHat = -inverseStd * scales[i] / Length;
            foreach (int j in new[] { 0, 1, 2, 128, 129, 200, 256, 257, 383 })
            {
                double xHat = x[i, j] * inverseStd;
                double expected = inverseStd * (dy[i, j] - meanG - (xHat * meanGXHat));
                Assert.True(Math.Abs(expected - dx[i, j]) <= 1e-13 * (Math.Abs(expected) + 1), $"dx[{i}, {j}]: expected {expected:R}, got {dx[i, j]:R}");
            }
        }
    }
}
