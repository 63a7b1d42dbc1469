using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Ghost batch normalization: VirtualBatchSize on BatchNormLayer.</summary>
public class GhostBatchTests
{
    [BatchNormProperty(CasesFactor = 3)]
    public void Ghost_batches_equal_one_layer_run_on_each_block_in_turn(GhostCase t, BackwardStrategy strategy)
    {
        (BatchCase c, int size) = t;
        BatchNormLayer ghost = c.Layer(strategy);
        ghost.VirtualBatchSize = size;
        BatchNormLayer blockwise = c.Layer(strategy);
        Matrix<double> y = ghost.Forward(c.Input);
        Matrix<double> dx = ghost.Backward(c.Dy);
        Vector<double> dGamma = Vector<double>.Build.Dense(c.Features), dBeta = Vector<double>.Build.Dense(c.Features);
        for (int start = 0; start < c.Rows; start += size)
        {
            Assert.Equal(blockwise.Forward(c.Input.SubMatrix(start, size, 0, c.Features)), y.SubMatrix(start, size, 0, c.Features));
            Assert.Equal(blockwise.Backward(c.Dy.SubMatrix(start, size, 0, c.Features)), dx.SubMatrix(start, size, 0, c.Features));
            dGamma += blockwise.GammaGradient;
            dBeta += blockwise.BetaGradient;
        }

        Assert.True((dGamma - ghost.GammaGradient).AbsoluteMaximum() <= 1e-13 * (1 + dGamma.AbsoluteMaximum()));
        Assert.True((dBeta - ghost.BetaGradient).AbsoluteMaximum() <= 1e-13 * (1 + dBeta.AbsoluteMaximum()));
        Assert.Equal(blockwise.RunningMean, ghost.RunningMean);
        Assert.Equal(blockwise.RunningVariance, ghost.RunningVariance);
        Assert.Equal(c.Rows / size, ghost.BatchesTracked);
        Assert.Equal(c.Rows / size, ghost.Cache!.RowBlocks);
    }

    [BatchNormProperty(CasesFactor = 3)]
    public void Ghost_backward_matches_central_differences(GhostCase t, BackwardStrategy strategy)
    {
        (BatchCase c, int size) = t;
        BatchNormLayer layer = c.Layer(strategy);
        layer.VirtualBatchSize = size;
        GradientCheckResult errors = GradientCheck.Check(layer, c.Input, c.Dy);
        Assert.True(errors.Max < 1e-6, $"relative errors dx {errors.Input:E2}, dγ {errors.Gamma:E2}, dβ {errors.Beta:E2}");
    }

    [Fact]
    public void Inference_ignores_the_virtual_batch_size()
    {
        var x = Matrix<double>.Build.Dense(6, 2, (i, j) => (i * i) - j);
        var plain = new BatchNormLayer(2);
        var ghost = new BatchNormLayer(2) { VirtualBatchSize = 4 };
        plain.Forward(x.SubMatrix(0, 4, 0, 2));
        ghost.Forward(x.SubMatrix(0, 4, 0, 2));
        plain.IsTraining = ghost.IsTraining = false;
        Assert.Equal(plain.Forward(x), ghost.Forward(x));
        Assert.Equal(1, ghost.Cache!.RowBlocks);
    }

    [Fact]
    public void A_batch_that_is_not_a_multiple_of_the_virtual_batch_size_is_rejected_and_changes_nothing()
    {
        var layer = new BatchNormLayer(2) { VirtualBatchSize = 4 };
        layer.Forward(Matrix<double>.Build.Dense(8, 2, (i, j) => i + (j * i * i)));
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(10, 2, (i, j) => i - j)));
        Assert.Contains("multiple of 4", e.Message);
        Assert.Contains("10x2", e.Message);
        Matrix<double> bad = Matrix<double>.Build.Dense(8, 2, (i, j) => i + j);
        bad[6, 1] = double.NaN;
        Assert.Contains("Column 1", Assert.Throws<ArgumentException>(() => layer.Forward(bad)).Message);
        snapshot.AssertUnchanged();
        Assert.Throws<ArgumentOutOfRangeException>(() => layer.VirtualBatchSize = 1);
        Assert.Equal(4, layer.VirtualBatchSize);
    }
}
