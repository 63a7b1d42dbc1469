using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Segments of up to 128 values are computed four at a time (QuadKernels): four columns, or four ghost blocks, share
/// their reductions and their scalar arithmetic. A segment's results must not depend on that: every column of a layer
/// gets, bit for bit, what a one-feature layer computes for it alone, one segment at a time.
/// </summary>
public class SegmentGroupingTests
{
    [BatchNormProperty(CasesFactor = 2)]
    public void Every_column_gets_the_bits_a_one_feature_layer_computes_for_it(WideBatch batch, bool inference, bool staged)
    {
        BatchCase c = batch.Case;
        BackwardStrategy strategy = staged ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;
        BatchNormLayer wide = c.Layer(strategy);
        (Matrix<double> y, Matrix<double> dx) = Step(wide, c.Input, c.Dy, inference, [.. c.Columns.Select(Mean)], [.. c.Columns.Select((_, j) => 0.5 + j)]);
        for (int j = 0; j < c.Features; j++)
        {
            var alone = new BatchNormLayer(1, c.Epsilon, backward: strategy);
            alone.Gamma[0] = c.Gamma[j];
            alone.Beta[0] = c.Beta[j];
            (Matrix<double> yAlone, Matrix<double> dxAlone) = Step(alone, c.Input.SubMatrix(0, c.Rows, j, 1), c.Dy.SubMatrix(0, c.Rows, j, 1), inference, [Mean(c.Columns[j])], [0.5 + j]);
            Same(yAlone.Column(0), y.Column(j), $"y of column {j}");
            Same(dxAlone.Column(0), dx.Column(j), $"dx of column {j}");
            Same(alone.Cache!.NormalizedColumn(0).ToArray(), wide.Cache!.NormalizedColumn(j).ToArray(), $"x̂ of column {j}");
            Assert.Equal(alone.Cache.Mean[0], wide.Cache.Mean[j]);
            Assert.Equal(alone.Cache.Variance[0], wide.Cache.Variance[j]);
            Assert.Equal(alone.Cache.InverseStandardDeviation[0], wide.Cache.InverseStandardDeviation[j]);
            Assert.Equal(alone.GammaGradient[0], wide.GammaGradient[j]);
            Assert.Equal(alone.BetaGradient[0], wide.BetaGradient[j]);
            Assert.Equal(alone.RunningMean[0], wide.RunningMean[j]);
            Assert.Equal(alone.RunningVariance[0], wide.RunningVariance[j]);
        }
    }

    [Theory]
    [InlineData(33)]
    [InlineData(128)]
    public void Nine_columns_with_a_mean_of_1e8_and_a_spread_of_1_are_grouped_without_a_trace(int rows)
    {
        // Far from the first value of each column, every segment needs its second pass; columns 0–7 go in two groups of
        // four, column 8 alone. 128 rows is the longest segment the four-at-a-time kernels take: a column alone must add
        // its values in their order there too.
        var random = new Random(5);
        Matrix<double> x = Matrix<double>.Build.Dense(rows, 9, (i, j) => 1e8 + (j * 1e7) + random.NextDouble());
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, 9, (i, j) => random.NextDouble() - 0.5);
        var wide = new BatchNormLayer(9);
        Matrix<double> y = wide.Forward(x), dx = wide.Backward(dy);
        for (int j = 0; j < 9; j++)
        {
            var alone = new BatchNormLayer(1);
            Same(alone.Forward(x.SubMatrix(0, rows, j, 1)).Column(0), y.Column(j), $"y of column {j}");
            Same(alone.Backward(dy.SubMatrix(0, rows, j, 1)).Column(0), dx.Column(j), $"dx of column {j}");
            Assert.Equal(alone.Cache!.Variance[0], wide.Cache!.Variance[j]);
        }
    }

    [BatchNormProperty]
    public void Ghost_blocks_grouped_four_at_a_time_get_the_bits_of_a_layer_on_each_block(GhostCase ghost, bool staged)
    {
        BatchCase c = ghost.Case;
        int blocks = c.Rows / ghost.BlockSize;
        BackwardStrategy strategy = staged ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;
        BatchNormLayer layer = c.Layer(strategy);
        layer.VirtualBatchSize = ghost.BlockSize;
        Matrix<double> y = layer.Forward(c.Input), dx = layer.Backward(c.Dy);
        for (int b = 0; b < blocks; b++)
        {
            BatchNormLayer alone = c.Layer(strategy);
            Matrix<double> rows(Matrix<double> m) => m.SubMatrix(b * ghost.BlockSize, ghost.BlockSize, 0, c.Features);
            Matrix<double> yAlone = alone.Forward(rows(c.Input)), dxAlone = alone.Backward(rows(c.Dy));
            for (int j = 0; j < c.Features; j++)
            {
                Same(yAlone.Column(j), rows(y).Column(j), $"y of block {b}, column {j}");
                Same(dxAlone.Column(j), rows(dx).Column(j), $"dx of block {b}, column {j}");
            }
        }
    }

    [BatchNormProperty]
    public void Layer_norm_parameter_gradients_are_each_column_summed_alone(WideBatch batch)
    {
        BatchCase c = batch.Case;
        var layer = new LayerNormLayer(c.Features);
        layer.Forward(c.Input);
        layer.Backward(c.Dy);
        for (int j = 0; j < c.Features; j++)
        {
            (double sumDy, double sumDyXHat) = ColumnKernels.SumAndDot(c.OutputGradient[j], layer.Cache!.NormalizedColumn(j));
            Assert.Equal(sumDy, layer.BetaGradient[j]);
            Assert.Equal(sumDyXHat, layer.GammaGradient[j]);
        }
    }

    /// <summary>A training step, or an inference step with running statistics near the batch's own.</summary>
    private static (Matrix<double> Y, Matrix<double> Dx) Step(BatchNormLayer layer, Matrix<double> x, Matrix<double> dy, bool inference, double[] runningMean, double[] runningVariance)
    {
        if (inference)
        {
            for (int j = 0; j < layer.Features; j++)
            {
                layer.RunningMean[j] = runningMean[j] + 0.25;
                layer.RunningVariance[j] = runningVariance[j];
            }

            layer.IsTraining = false;
        }

        return (layer.Forward(x), layer.Backward(dy));
    }

    private static double Mean(double[] column) => column.Average();

    private static void Same(Vector<double> expected, Vector<double> actual, string what) => Same(expected.ToArray(), actual.ToArray(), what);

    private static void Same(double[] expected, double[] actual, string what)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(
                BitConverter.DoubleToInt64Bits(expected[i]) == BitConverter.DoubleToInt64Bits(actual[i]),
                $"{what}, row {i}: {expected[i]:R} alone but {actual[i]:R} in the group");
        }
    }
}
