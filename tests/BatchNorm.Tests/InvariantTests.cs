using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Invariants of the forward and backward passes and of the running statistics.</summary>
public class InvariantTests
{
    [BatchNormProperty(CasesFactor = 3)]
    public void Training_input_gradient_columns_sum_to_zero(TallBatch tall, BackwardStrategy strategy)
    {
        BatchCase c = tall.Case;
        BatchNormLayer layer = c.Layer(strategy);
        layer.Forward(c.Input);
        Matrix<double> dx = layer.Backward(c.Dy);
        for (int j = 0; j < c.Features; j++)
        {
            // Σᵢ dxᵢ = γ·istd·(Σdy − N·mean(dy) − Σx̂·mean(dy·x̂)) = 0, up to rounding of terms of size γ·istd·Σ|dy|.
            double size = Math.Abs(layer.Gamma[j]) * layer.Cache!.InverseStandardDeviation[j] * c.Dy.Column(j).L1Norm() * 4;
            Assert.True(Math.Abs(dx.Column(j).Sum()) <= 1e-13 * size * c.Rows, $"column {j} of dx sums to {dx.Column(j).Sum():E3}");
        }
    }

    [BatchNormProperty(CasesFactor = 3)]
    public void Beta_gradient_is_the_column_sum_of_the_output_gradient(TallBatch tall, BackwardStrategy strategy)
    {
        BatchCase c = tall.Case;
        BatchNormLayer layer = c.Layer(strategy);
        layer.Forward(c.Input);
        layer.Backward(c.Dy);
        Vector<double> sums = c.Dy.ColumnSums();
        for (int j = 0; j < c.Features; j++)
        {
            Assert.True(Math.Abs(layer.BetaGradient[j] - sums[j]) <= 1e-14 * c.Dy.Column(j).L1Norm());
        }
    }

    [BatchNormProperty]
    public void Training_output_columns_have_mean_beta_and_the_predicted_spread(TallBatch tall)
    {
        BatchCase c = tall.Case;
        BatchNormLayer layer = c.Layer(BackwardStrategy.ClosedForm);
        Matrix<double> y = layer.Forward(c.Input);
        for (int j = 0; j < c.Features; j++)
        {
            double variance = layer.Cache!.Variance[j];
            double expectedStd = Math.Abs(c.Gamma[j]) * Math.Sqrt(variance / (variance + layer.Epsilon));
            double mean = y.Column(j).Sum() / c.Rows;
            double std = Math.Sqrt(y.Column(j).Select(v => (v - mean) * (v - mean)).Sum() / c.Rows);
            Assert.True(Math.Abs(mean - c.Beta[j]) <= 1e-13 * (Math.Abs(c.Beta[j]) + Math.Abs(c.Gamma[j])), $"column {j}: mean {mean:R}, β {c.Beta[j]:R}");
            // Each y is rounded to within a few ulps of max |y|, which bounds what the measured spread can resolve:
            // with β = 1.6 and γ·x̂ near 1e-5 that is 1e-11 of the spread itself.
            double resolution = 4 * Math.ScaleB(1, -53) * y.Column(j).AbsoluteMaximum();
            Assert.True(Math.Abs(std - expectedStd) <= (1e-12 * expectedStd) + resolution, $"column {j}: std {std:R}, expected {expectedStd:R}");
        }
    }

    [BatchNormProperty]
    public void Inference_forward_leaves_the_running_statistics_untouched(BatchCase c)
    {
        BatchNormLayer layer = c.Layer(BackwardStrategy.ClosedForm);
        layer.Forward(c.Input);
        layer.Forward(c.Input.Multiply(2));
        layer.IsTraining = false;
        double[] mean = layer.RunningMean.ToArray(), variance = layer.RunningVariance.ToArray();
        long batches = layer.BatchesTracked;

        Matrix<double> y = layer.Forward(c.Input);

        Assert.Equal(mean, layer.RunningMean.ToArray());
        Assert.Equal(variance, layer.RunningVariance.ToArray());
        Assert.Equal(batches, layer.BatchesTracked);
        for (int j = 0; j < c.Features; j++)
        {
            double scale = c.Gamma[j] / Math.Sqrt(variance[j] + layer.Epsilon);
            for (int i = 0; i < c.Rows; i++)
            {
                double expected = ((c.Input[i, j] - mean[j]) * scale) + c.Beta[j];
                Assert.True(Math.Abs(y[i, j] - expected) <= 1e-13 * (Math.Abs(expected) + Math.Abs(c.Input[i, j] * scale)));
            }
        }
    }

    [Fact]
    public void Inference_forward_works_on_a_single_row()
    {
        var layer = new BatchNormLayer(3);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2, 3 }, { 3, 6, 9 } }));
        layer.IsTraining = false;
        Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 2.0, 4, 6 } }));
        // running mean 0.1·(2, 4, 6), running var 0.9 + 0.1·(2, 8, 18)
        double[] expected = [1.8 / Math.Sqrt(1.1 + 1e-5), 3.6 / Math.Sqrt(1.7 + 1e-5), 5.4 / Math.Sqrt(2.7 + 1e-5)];
        for (int j = 0; j < 3; j++)
        {
            Assert.Equal(expected[j], y[0, j], 1e-14);
        }

        Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 1, 1 } }));
        Assert.Equal(1 / Math.Sqrt(1.1 + 1e-5), dx[0, 0], 1e-14);
    }

    [BatchNormProperty]
    public void Cumulative_momentum_is_the_plain_mean_of_the_batch_statistics(BatchSequence sequence)
    {
        BatchCase[] list = sequence.Batches;
        var layer = new BatchNormLayer(list[0].Features, momentum: null);
        foreach (BatchCase c in list)
        {
            layer.Forward(c.Input);
        }

        Assert.Equal(list.Length, layer.BatchesTracked);
        for (int j = 0; j < layer.Features; j++)
        {
            double meanOfMeans = list.Average(c => c.Columns[j].Average());
            double meanOfVariances = list.Average(c => UnbiasedVariance(c.Columns[j]));
            Assert.True(Math.Abs(layer.RunningMean[j] - meanOfMeans) <= 1e-12 * list.Max(c => c.Columns[j].Max(Math.Abs)));
            Assert.True(Math.Abs(layer.RunningVariance[j] - meanOfVariances) <= 1e-12 * meanOfVariances);
        }
    }

    [Fact]
    public void Running_statistics_follow_the_pytorch_update_with_the_unbiased_variance()
    {
        var layer = new BatchNormLayer(1, momentum: 0.25);
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2, 6 }));
        // μ = 3, biased σ² = 14/3, unbiased 7.
        Assert.Equal((0.75 * 0) + (0.25 * 3), layer.RunningMean[0], 15);
        Assert.Equal((0.75 * 1) + (0.25 * 7), layer.RunningVariance[0], 15);
        Assert.Equal(14.0 / 3, layer.Cache!.Variance[0], 14);
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 0.0, 4 }));
        // μ = 2, unbiased variance 8.
        Assert.Equal((0.75 * 0.75) + (0.25 * 2), layer.RunningMean[0], 15);
        Assert.Equal((0.75 * 2.5) + (0.25 * 8), layer.RunningVariance[0], 14);
        Assert.Equal(2, layer.BatchesTracked);
    }

    [Fact]
    public void Momentum_zero_freezes_and_momentum_one_replaces_the_running_statistics()
    {
        var x = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2, 6 });
        var frozen = new BatchNormLayer(1, momentum: 0);
        frozen.Forward(x);
        Assert.Equal(0, frozen.RunningMean[0]);
        Assert.Equal(1, frozen.RunningVariance[0]);
        var replaced = new BatchNormLayer(1, momentum: 1);
        replaced.Forward(x);
        Assert.Equal(3, replaced.RunningMean[0], 15);
        Assert.Equal(7, replaced.RunningVariance[0], 14);
    }

    [Fact]
    public void Resets_restore_the_initial_values_in_place()
    {
        var layer = new BatchNormLayer(2);
        Vector<double> gamma = layer.Gamma, mean = layer.RunningMean;
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 5 }, { 3, 2 } }));
        layer.Gamma[0] = 4;
        layer.Beta[1] = -3;
        layer.ResetParameters();
        layer.ResetRunningStatistics();
        Assert.Same(gamma, layer.Gamma);
        Assert.Same(mean, layer.RunningMean);
        Assert.Equal([1.0, 1.0], layer.Gamma.ToArray());
        Assert.Equal([0.0, 0.0], layer.Beta.ToArray());
        Assert.Equal([0.0, 0.0], layer.RunningMean.ToArray());
        Assert.Equal([1.0, 1.0], layer.RunningVariance.ToArray());
        Assert.Equal(0, layer.BatchesTracked);
    }

    [Fact]
    public void A_new_layer_has_the_documented_initial_state()
    {
        var layer = new BatchNormLayer(3);
        Assert.Equal(3, layer.Features);
        Assert.Equal(1e-5, layer.Epsilon);
        Assert.Equal(0.1, layer.Momentum);
        Assert.True(layer.IsTraining);
        Assert.Same(BackwardStrategy.ClosedForm, layer.BackwardStrategy);
        Assert.Null(layer.Cache);
        Assert.Equal([1.0, 1, 1], layer.Gamma.ToArray());
        Assert.Equal([0.0, 0, 0], layer.Beta.ToArray());
        Assert.Equal([0.0, 0, 0], layer.GammaGradient.ToArray());
        Assert.Equal([0.0, 0, 0], layer.BetaGradient.ToArray());
        Assert.Equal([0.0, 0, 0], layer.RunningMean.ToArray());
        Assert.Equal([1.0, 1, 1], layer.RunningVariance.ToArray());
        Assert.Equal(0, layer.BatchesTracked);
    }

    private static double UnbiasedVariance(double[] values)
    {
        double mean = values.Average();
        return values.Sum(v => (v - mean) * (v - mean)) / (values.Length - 1);
    }
}
