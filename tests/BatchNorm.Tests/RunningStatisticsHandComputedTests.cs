using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The running statistics of batch norm worked out by hand: momentum, the cumulative average, ghost batches block by
/// block, Bessel's correction, the inference pass over them, the checks on statistics edited by hand, and folding;
/// then the settings of the layer with their boundaries and messages.
/// </summary>
public class RunningStatisticsHandComputedTests
{
    // {1, 3, 5, 7}: μ = 4, σ² = 5, unbiased 20/3. Blocks of two: {1, 3} and {5, 7}, μ = 2 and 6, σ² = 1, unbiased 2.
    private static Matrix<double> Batch => Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 3, 5, 7 });

    [Fact]
    public void Momentum_weighs_the_new_batch_and_the_variance_is_unbiased()
    {
        var layer = new BatchNormLayer(1, momentum: 0.25);
        layer.Forward(Batch);
        Assert.Equal(0.25 * 4, layer.RunningMean[0]);
        Assert.Equal((0.75 * 1) + (0.25 * 20.0 / 3), layer.RunningVariance[0], 1e-15);
        layer.Forward(Batch * 2);
        Assert.Equal((0.75 * 1) + (0.25 * 8), layer.RunningMean[0]);
        Assert.Equal((0.75 * ((0.75 * 1) + (0.25 * 20.0 / 3))) + (0.25 * 80.0 / 3), layer.RunningVariance[0], 1e-14);
        Assert.Equal(2, layer.BatchesTracked);
    }

    [Fact]
    public void Momentum_zero_keeps_the_statistics_and_momentum_one_replaces_them()
    {
        var frozen = new BatchNormLayer(1, momentum: 0);
        frozen.Forward(Batch);
        Assert.Equal([0.0], frozen.RunningMean.ToArray());
        Assert.Equal([1.0], frozen.RunningVariance.ToArray());
        Assert.Equal(1, frozen.BatchesTracked);

        var replaced = new BatchNormLayer(1, momentum: 1);
        replaced.Forward(Batch);
        Assert.Equal([4.0], replaced.RunningMean.ToArray());
        Assert.Equal(20.0 / 3, replaced.RunningVariance[0], 1e-15);
    }

    [Fact]
    public void Without_momentum_the_running_statistics_are_the_average_of_every_batch_so_far()
    {
        var layer = new BatchNormLayer(1, momentum: null);
        Assert.Null(layer.Momentum);
        layer.Forward(Batch);
        Assert.Equal(4, layer.RunningMean[0]);
        Assert.Equal(20.0 / 3, layer.RunningVariance[0], 1e-15);
        layer.Forward(Batch * 2);
        Assert.Equal((4 + 8) / 2.0, layer.RunningMean[0]);
        layer.Forward(Batch * 3);
        Assert.Equal((4 + 8 + 12) / 3.0, layer.RunningMean[0], 1e-14);
        Assert.Equal(((20.0 / 3) + (80.0 / 3) + (180.0 / 3)) / 3, layer.RunningVariance[0], 1e-13);
        Assert.Equal(3, layer.BatchesTracked);
    }

    [Fact]
    public void Ghost_batches_fold_in_block_by_block_each_with_its_own_unbiased_variance()
    {
        // Momentum ½ and blocks {1, 3} then {5, 7}: mean ½·(½·0 + ½·2) + ½·6, variance ½·(½·1 + ½·2) + ½·2.
        var layer = new BatchNormLayer(1, momentum: 0.5) { VirtualBatchSize = 2 };
        Matrix<double> y = layer.Forward(Batch);
        Assert.Equal((0.5 * ((0.5 * 0) + (0.5 * 2))) + (0.5 * 6), layer.RunningMean[0]);
        Assert.Equal((0.5 * ((0.5 * 1) + (0.5 * 2))) + (0.5 * 2), layer.RunningVariance[0]);
        Assert.Equal(2, layer.BatchesTracked);

        // Each block is normalized with its own statistics: ±1/√(1 + ε).
        double a = 1 / Math.Sqrt(1 + 1e-5);
        Assert.Equal([-a, a, -a, a], y.Column(0).ToArray());

        // The cumulative average counts blocks as batches.
        var cumulative = new BatchNormLayer(1, momentum: null) { VirtualBatchSize = 2 };
        cumulative.Forward(Batch);
        Assert.Equal(4, cumulative.RunningMean[0]);
        Assert.Equal(2, cumulative.RunningVariance[0]);

        // Inference ignores the ghost batch size: one row is fine, and the running statistics are used.
        layer.IsTraining = false;
        Matrix<double> one = layer.Forward(Matrix<double>.Build.Dense(1, 1, 4.0));
        Assert.Equal((4 - layer.RunningMean[0]) / Math.Sqrt(layer.RunningVariance[0] + 1e-5), one[0, 0], 1e-15);
        Assert.Equal(1, layer.Cache!.RowBlocks);
    }

    [Fact]
    public void A_ghost_batch_size_that_does_not_divide_the_batch_is_refused_in_training_only()
    {
        var layer = new BatchNormLayer(1) { VirtualBatchSize = 3 };
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(Batch));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith("input is 4x1, but with VirtualBatchSize = 3 the number of rows must be a multiple of 3.", e.Message, StringComparison.Ordinal);
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2, 4, 8, 16, 32 }));
        Assert.Equal(2, layer.BatchesTracked);
        layer.IsTraining = false;
        layer.Forward(Batch);
    }

    [Fact]
    public void Inference_normalizes_with_the_running_statistics_even_a_zero_variance()
    {
        var layer = new BatchNormLayer(2, epsilon: 0.25) { IsTraining = false };
        layer.RunningMean.SetValues([2, -1]);
        layer.RunningVariance.SetValues([0, 3.75]);
        layer.Gamma.SetValues([3, 0.5]);
        layer.Beta.SetValues([1, -2]);
        Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 1 }, { 4, -5 } }));
        Assert.Equal((3 * (1 - 2) / 0.5) + 1, y[0, 0]);
        Assert.Equal((3 * (4 - 2) / 0.5) + 1, y[1, 0]);
        Assert.Equal((0.5 * (1 + 1) / 2) - 2, y[0, 1]);
        Assert.Equal((0.5 * (-5 + 1) / 2) - 2, y[1, 1]);
        Assert.True(layer.Cache!.FrozenStatistics);
        Assert.Equal([2.0, -1], layer.Cache.Mean.ToArray());
        Assert.Equal([0.0, 3.75], layer.Cache.Variance.ToArray());
        Assert.Equal(0, layer.BatchesTracked);
    }

    [Theory]
    [InlineData(0, double.NaN, 1.0)]
    [InlineData(1, double.PositiveInfinity, 1.0)]
    [InlineData(0, 0.0, -5E-324)]
    [InlineData(1, 0.0, double.PositiveInfinity)]
    [InlineData(0, 0.0, double.NaN)]
    public void Running_statistics_edited_into_nonsense_name_the_feature_in_both_modes(int feature, double mean, double variance)
    {
        foreach (bool training in new[] { true, false })
        {
            var layer = new BatchNormLayer(2) { IsTraining = training };
            layer.RunningMean[feature] = mean;
            layer.RunningVariance[feature] = variance;
            var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Batch.Append(Batch)));
            Assert.StartsWith($"Feature {feature} cannot be normalized: RunningMean[{feature}] = {mean:R} and RunningVariance[{feature}] = {variance:R}", e.Message, StringComparison.Ordinal);
            Assert.Null(layer.Cache);
        }
    }

    [Fact]
    public void Folding_scales_each_column_of_the_weights_and_shifts_the_bias()
    {
        // s = γ/√(running_var + ε) = (2/2, −1/4) with ε = 1/4; W′ = W·diag(s); b′ = (b − running_mean)·s + β.
        var layer = new BatchNormLayer(2, epsilon: 0.25);
        layer.RunningMean.SetValues([1, -2]);
        layer.RunningVariance.SetValues([3.75, 15.75]);
        layer.Gamma.SetValues([2, -1]);
        layer.Beta.SetValues([0.5, 3]);
        Matrix<double> w = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { -3, 4 }, { 0.5, 8 } });
        (Matrix<double> folded, Vector<double> bias) = layer.FoldInto(w, Vector<double>.Build.DenseOfArray([5, 6]));
        Assert.Equal(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -0.5 }, { -3, -1 }, { 0.5, -2 } }), folded);
        Assert.Equal([((5 - 1) * 1.0) + 0.5, ((6 + 2) * -0.25) + 3], bias.ToArray());

        Assert.Equal("weights", Assert.Throws<ArgumentNullException>(() => layer.FoldInto(null!, Vector<double>.Build.Dense(2))).ParamName);
        Assert.Equal("bias", Assert.Throws<ArgumentNullException>(() => layer.FoldInto(w, null!)).ParamName);
        var columns = Assert.Throws<ArgumentException>(() => layer.FoldInto(Matrix<double>.Build.Dense(3, 3), Vector<double>.Build.Dense(2)));
        Assert.Equal("weights", columns.ParamName);
        Assert.StartsWith("Matrix dimensions must agree: weights is 3x3, but the layer has 2 features, so it must be Nx2.", columns.Message, StringComparison.Ordinal);
        var length = Assert.Throws<ArgumentException>(() => layer.FoldInto(w, Vector<double>.Build.Dense(3)));
        Assert.Equal("bias", length.ParamName);
        Assert.StartsWith("Vector dimensions must agree: bias has 3 elements, the layer has 2 features.", length.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Reset_puts_back_the_initial_values_in_place()
    {
        var layer = new BatchNormLayer(2, momentum: null);
        Vector<double> mean = layer.RunningMean, variance = layer.RunningVariance, gamma = layer.Gamma, beta = layer.Beta;
        layer.Forward(Batch.Append(Batch * 3));
        layer.Gamma.SetValues([2, 3]);
        layer.Beta.SetValues([-1, 4]);
        layer.ResetRunningStatistics();
        layer.ResetParameters();
        Assert.Same(mean, layer.RunningMean);
        Assert.Same(variance, layer.RunningVariance);
        Assert.Same(gamma, layer.Gamma);
        Assert.Same(beta, layer.Beta);
        Assert.Equal([0.0, 0], mean.ToArray());
        Assert.Equal([1.0, 1], variance.ToArray());
        Assert.Equal([1.0, 1], gamma.ToArray());
        Assert.Equal([0.0, 0], beta.ToArray());
        Assert.Equal(0, layer.BatchesTracked);
    }

    [Fact]
    public void The_settings_are_taken_at_their_boundaries_and_refused_beyond_with_a_message()
    {
        Assert.Equal(1, new BatchNormLayer(1).Features);
        Assert.Equal(0, new BatchNormLayer(1, momentum: 0).Momentum);
        Assert.Equal(1, new BatchNormLayer(1, momentum: 1).Momentum);
        Assert.Equal(double.Epsilon, new BatchNormLayer(1, double.Epsilon).Epsilon);
        Assert.Equal(double.MaxValue, new BatchNormLayer(1, double.MaxValue).Epsilon);
        Assert.StartsWith("The number of features must be at least 1.", Assert.Throws<ArgumentOutOfRangeException>(() => new BatchNormLayer(0)).Message, StringComparison.Ordinal);
        Assert.StartsWith("Epsilon must be positive and finite.", Assert.Throws<ArgumentOutOfRangeException>(() => new BatchNormLayer(1, 0)).Message, StringComparison.Ordinal);
        Assert.StartsWith("Epsilon must be positive and finite.", Assert.Throws<ArgumentOutOfRangeException>(() => new LayerNormLayer(1, double.PositiveInfinity)).Message, StringComparison.Ordinal);
        foreach (double momentum in new[] { -double.Epsilon, Math.BitIncrement(1.0) })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BatchRenormLayer(1, momentum: momentum));
            Assert.Equal("momentum", e.ParamName);
            Assert.StartsWith("Momentum must lie in [0, 1], or be null for a cumulative moving average.", e.Message, StringComparison.Ordinal);
        }

        var layer = new BatchNormLayer(2);
        Assert.Equal(Environment.ProcessorCount, layer.MaxDegreeOfParallelism);
        layer.MaxDegreeOfParallelism = 1;
        Assert.Equal(1, layer.MaxDegreeOfParallelism);
        var threads = Assert.Throws<ArgumentOutOfRangeException>(() => layer.MaxDegreeOfParallelism = 0);
        Assert.Equal("value", threads.ParamName);
        Assert.StartsWith("At least one thread is needed.", threads.Message, StringComparison.Ordinal);
        Assert.Equal(1, layer.MaxDegreeOfParallelism);

        layer.VirtualBatchSize = 2;
        Assert.Equal(2, layer.VirtualBatchSize);
        var ghost = Assert.Throws<ArgumentOutOfRangeException>(() => layer.VirtualBatchSize = 1);
        Assert.Equal("value", ghost.ParamName);
        Assert.StartsWith("A virtual batch needs at least 2 rows.", ghost.Message, StringComparison.Ordinal);
        Assert.Equal(2, layer.VirtualBatchSize);
        Assert.Equal("Ghost batches and synchronized statistics do not combine; clear VirtualBatchSize first.", Assert.Throws<InvalidOperationException>(() => layer.StatisticsExchange = new Alone()).Message);
        layer.VirtualBatchSize = null;
        layer.StatisticsExchange = new Alone();
        Assert.IsType<Alone>(layer.StatisticsExchange);
        Assert.Equal("Ghost batches and synchronized statistics do not combine; clear StatisticsExchange first.", Assert.Throws<InvalidOperationException>(() => layer.VirtualBatchSize = 4).Message);
        layer.VirtualBatchSize = null;
        Assert.Null(layer.VirtualBatchSize);
    }

    [Fact]
    public void ToString_describes_ghost_batches_and_the_mode()
    {
        var layer = new BatchNormLayer(3);
        Assert.Equal("BatchNormLayer(features: 3, training, strategy: closed)", layer.ToString());
        layer.VirtualBatchSize = 16;
        layer.IsTraining = false;
        layer.BackwardStrategy = BackwardStrategy.Staged;
        Assert.Equal("BatchNormLayer(features: 3, virtual batch size: 16, inference, strategy: staged)", layer.ToString());
    }

    private sealed class Alone : IStatisticsExchange
    {
        public int WorkerCount => 1;

        public int Rank => 0;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered) => local.CopyTo(gathered);
    }
}
