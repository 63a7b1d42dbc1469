using System;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Instance norm against numbers worked out by hand: its running statistics after a step (the mean of the instances'
/// means and of their unbiased variances, folded in with the momentum), inference with them per channel, the batch count
/// it leaves alone, the rule of 2 positions on both sides and in both modes, and what it saves.
/// </summary>
public class MutationInstanceNormTests
{
    // 2 rows, 2 channels of 2 positions: row 0 is channel 0 = {1, 3}, channel 1 = {0, 4}; row 1 is {5, 7} and {−1, 1}.
    private static Matrix<double> X => Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 3, 0, 4 }, { 5, 7, -1, 1 } });

    [Theory]
    [InlineData("closed")]
    [InlineData("staged")]
    public void A_training_step_folds_the_mean_instance_statistics_into_the_running_ones(string strategy)
    {
        // Instance μ: channel 0 {2, 6}, channel 1 {2, 0}; biased σ²: {1, 1} and {4, 1}, unbiased (×2/1) {2, 2} and {8, 2}.
        // With m = 0.25: mean 0.75·0 + 0.25·4 = 1 and 0.75·0 + 0.25·1 = 0.25; variance 0.75·1 + 0.25·2 = 1.25 and 0.75 + 0.25·5 = 2.
        var layer = new InstanceNormLayer(2, 2, epsilon: 1, momentum: 0.25, backward: ContractTests.Strategy(strategy), trackRunningStatistics: true);
        Matrix<double> y = layer.Forward(X);
        AssertClose(new[,] { { 1, 0.25 } }, layer.RunningMean.ToRowMatrix());
        AssertClose(new[,] { { 1.25, 2 } }, layer.RunningVariance.ToRowMatrix());
        Assert.Equal(0, layer.BatchesTracked);

        // Training normalizes each instance with its own statistics: x̂ = (x − μ)/√(σ² + 1).
        double r2 = 1 / Math.Sqrt(2), r5 = 1 / Math.Sqrt(5);
        AssertClose(new[,] { { -r2, r2, -2 * r5, 2 * r5 }, { -r2, r2, -r2, r2 } }, y);

        // A second step folds in again: mean 0.75·1 + 0.25·4 = 1.75, variance 0.75·1.25 + 0.25·2 = 1.4375.
        layer.Forward(X);
        // (channel 1: 0.75·0.25 + 0.25 = 0.4375 and 0.75·2 + 0.25·5 = 2.75.)
        AssertClose(new[,] { { 1.75, 0.4375 } }, layer.RunningMean.ToRowMatrix());
        AssertClose(new[,] { { 1.4375, 2.75 } }, layer.RunningVariance.ToRowMatrix());
    }

    [Fact]
    public void Inference_with_running_statistics_normalizes_each_channel_of_the_batch_with_them()
    {
        var layer = new InstanceNormLayer(2, 2, epsilon: 1, affine: true, trackRunningStatistics: true) { IsTraining = false };
        layer.RunningMean.SetValues([1, -1]);
        layer.RunningVariance.SetValues([3, 8]);
        layer.Gamma.SetValues([2, -1]);
        layer.Beta.SetValues([0.5, 0.25]);

        // y = γ·(x − running_mean)/√(running_var + 1) + β: channel 0 divides by 2, channel 1 by 3.
        Matrix<double> y = layer.Forward(X);
        AssertClose(new[,] { { 0.5, 2.5, 0.25 - (1.0 / 3), 0.25 - (5.0 / 3) }, { 4.5, 6.5, 0.25, 0.25 - (2.0 / 3) } }, y);

        Assert.Equal([1, -1], layer.RunningMean.ToArray());
        Assert.Equal([3, 8], layer.RunningVariance.ToArray());

        // Frozen statistics: dx = γ·dy/√(running_var + 1), and one row of one position per channel is enough.
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 1, 3, 3 }, { 2, 0, -3, 6 } }));
        AssertClose(new[,] { { 1.0, 1, -1, -1 }, { 2, 0, 1, -2 } }, dx);
    }

    [Fact]
    public void One_position_per_channel_is_refused_for_instance_statistics_but_not_for_running_ones()
    {
        const string Message = "Instance statistics need at least 2 positions per channel, but this layer has 1.";
        var tracked = new InstanceNormLayer(2, 1, trackRunningStatistics: true);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 4 } });
        var e = Assert.Throws<ArgumentException>(() => tracked.Forward(x));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith(Message, e.Message, StringComparison.Ordinal);
        Assert.Null(tracked.Cache);

        // In inference it normalizes with the running statistics (0 and 1): y = x/√(1 + ε).
        tracked.IsTraining = false;
        Matrix<double> y = tracked.Forward(x);
        AssertClose(new[,] { { 1 / Math.Sqrt(1 + 1e-5), 2 / Math.Sqrt(1 + 1e-5) }, { 3 / Math.Sqrt(1 + 1e-5), 4 / Math.Sqrt(1 + 1e-5) } }, y);

        // Without running statistics inference needs instance statistics too.
        var untracked = new InstanceNormLayer(2, 1) { IsTraining = false };
        Assert.StartsWith(Message, Assert.Throws<ArgumentException>(() => untracked.Forward(x)).Message, StringComparison.Ordinal);

        // Two positions are enough, in both modes.
        // {3, 5}: μ = 4, σ² = 1, x̂ = ±1/√(1 + ε).
        var two = new InstanceNormLayer(1, 2);
        double h = 1 / Math.Sqrt(1 + 1e-5);
        AssertClose(new[,] { { -h, h } }, two.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 3.0, 5 } })));
        two.IsTraining = false;
        AssertClose(new[,] { { -h, h } }, two.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 3.0, 5 } })));
    }

    [Fact]
    public void The_batch_count_stays_at_what_was_loaded()
    {
        var layer = new InstanceNormLayer(2, 2, trackRunningStatistics: true);
        JsonNode state = JsonNode.Parse(layer.ExportState())!;
        state["batchesTracked"] = 7;
        layer.ImportState(state.ToJsonString());
        Assert.Equal(7, layer.BatchesTracked);
        layer.Forward(X);
        Assert.Equal(7, layer.BatchesTracked);
        Assert.NotEqual(0, layer.RunningMean[0]);
    }

    [Fact]
    public void It_saves_tracking_only_when_it_differs_from_PyTorchs_default_and_refuses_a_null_momentum()
    {
        Assert.Equal(
            """{"format":"BatchNorm.InstanceNormLayer","version":1,"features":2,"spatialSize":2,"affine":false,"epsilon":1E-05,"momentum":0.1}""",
            JsonNode.Parse(new InstanceNormLayer(2, 2).ExportState())!.ToJsonString());
        string tracked = new InstanceNormLayer(2, 2, trackRunningStatistics: true).ExportState();
        Assert.Contains("\"trackRunningStatistics\":true", JsonNode.Parse(tracked)!.ToJsonString(), StringComparison.Ordinal);
        Assert.True(InstanceNormLayer.FromState(tracked).TracksRunningStatistics);
        Assert.False(InstanceNormLayer.FromState(new InstanceNormLayer(2, 2).ExportState()).TracksRunningStatistics);

        JsonNode state = JsonNode.Parse(new InstanceNormLayer(2, 2).ExportState())!;
        state["momentum"] = null;
        var e = Assert.Throws<FormatException>(() => new InstanceNormLayer(2, 2).ImportState(state.ToJsonString()));
        Assert.Contains("'momentum' must be a number in [0, 1].", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("or null", e.Message, StringComparison.Ordinal);
    }

    private static void AssertClose(double[,] expected, Matrix<double> actual)
    {
        Assert.Equal(expected.GetLength(0), actual.RowCount);
        Assert.Equal(expected.GetLength(1), actual.ColumnCount);
        for (int i = 0; i < actual.RowCount; i++)
        {
            for (int j = 0; j < actual.ColumnCount; j++)
            {
                Assert.Equal(expected[i, j], actual[i, j], 1e-14);
            }
        }
    }
}
