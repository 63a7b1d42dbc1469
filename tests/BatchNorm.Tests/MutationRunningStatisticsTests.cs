using System;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The running-statistics base without running statistics and at its row rule: the exact messages for a single row in
/// each mode, running vectors a layer that keeps none never reads, the batch count saturating at long.MaxValue, what a
/// state of the other kind says, and how the layer describes itself.
/// </summary>
public class MutationRunningStatisticsTests
{
    private static Matrix<double> OneRow => Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 } });

    private static Matrix<double> TwoRows => Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 6 } });

    [Fact]
    public void A_single_row_is_refused_for_batch_statistics_with_the_remedy_that_fits_the_layer()
    {
        var tracked = new BatchNormLayer(2);
        var e = Assert.Throws<ArgumentException>(() => tracked.Forward(OneRow));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith(
            "Batch statistics need at least 2 rows to estimate a variance, but input is 1x2. Set IsTraining = false to normalize single rows with the running statistics.",
            e.Message,
            StringComparison.Ordinal);
        tracked.IsTraining = false;
        Assert.Equal(OneRow / Math.Sqrt(1 + 1e-5), tracked.Forward(OneRow));

        var untracked = new BatchNormLayer(2, trackRunningStatistics: false);
        foreach (bool training in new[] { true, false })
        {
            untracked.IsTraining = training;
            var refused = Assert.Throws<ArgumentException>(() => untracked.Forward(OneRow));
            Assert.StartsWith(
                "Batch statistics need at least 2 rows to estimate a variance, but input is 1x2. This layer keeps no running statistics, so inference needs them too.",
                refused.Message,
                StringComparison.Ordinal);
        }

        // Two rows are enough in either mode: {1, 3} and {2, 6} are normalized to ∓1/√(1 + ε) with their own statistics.
        double h = 1 / Math.Sqrt(1 + 1e-5), h4 = 2 / Math.Sqrt(4 + 1e-5);
        Matrix<double> y = untracked.Forward(TwoRows);
        Assert.Equal(-h, y[0, 0], 1e-15);
        Assert.Equal(h, y[1, 0], 1e-15);
        Assert.Equal(-h4, y[0, 1], 1e-15);
        Assert.Equal(h4, y[1, 1], 1e-15);
    }

    [Fact]
    public void A_layer_without_running_statistics_never_reads_its_running_vectors()
    {
        var layer = new BatchNormLayer(2, trackRunningStatistics: false);
        layer.RunningMean[1] = double.NaN;
        layer.RunningVariance[0] = -1;
        foreach (bool training in new[] { true, false })
        {
            layer.IsTraining = training;
            Matrix<double> y = layer.Forward(TwoRows);
            Assert.True(y.ForAll(double.IsFinite));
        }

        Assert.True(double.IsNaN(layer.RunningMean[1]));
        Assert.Equal(-1, layer.RunningVariance[0]);
        Assert.Equal(0, layer.BatchesTracked);
    }

    [Fact]
    public void The_batch_count_saturates_at_long_MaxValue_and_the_cumulative_average_then_hardly_moves()
    {
        var layer = new BatchNormLayer(2, momentum: null);
        JsonNode state = JsonNode.Parse(layer.ExportState())!;
        state["batchesTracked"] = long.MaxValue - 1;
        layer.ImportState(state.ToJsonString());

        // One step: count long.MaxValue, m = 1/long.MaxValue ≈ 1.08e-19, so the mean moves from 0 to about 2·1.08e-19.
        layer.Forward(TwoRows);
        Assert.Equal(long.MaxValue, layer.BatchesTracked);
        Assert.Equal(2.0 / long.MaxValue, layer.RunningMean[0], 1e-30);
        Assert.Equal(4.0 / long.MaxValue, layer.RunningMean[1], 1e-30);

        // Another: the count stays, it does not wrap to long.MinValue (which would make m negative).
        layer.Forward(TwoRows);
        Assert.Equal(long.MaxValue, layer.BatchesTracked);
        Assert.Equal(4.0 / long.MaxValue, layer.RunningMean[0], 1e-30);
        Assert.Equal(1.0, layer.RunningVariance[0]);
    }

    [Fact]
    public void A_state_of_the_other_kind_is_refused_and_says_which_kind_each_is()
    {
        string keeps = new BatchNormLayer(2).ExportState(), keepsNone = new BatchNormLayer(2, trackRunningStatistics: false).ExportState();
        var e = Assert.Throws<ArgumentException>(() => new BatchNormLayer(2, trackRunningStatistics: false).ImportState(keeps));
        Assert.Equal("json", e.ParamName);
        Assert.StartsWith("The saved state is of a layer that keeps running statistics, but this layer keeps none.", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => new BatchNormLayer(2).ImportState(keepsNone));
        Assert.StartsWith("The saved state is of a layer that keeps no running statistics, but this layer keeps them.", e.Message, StringComparison.Ordinal);

        Assert.Equal(
            """{"format":"BatchNorm.BatchNormLayer","version":1,"features":2,"epsilon":1E-05,"gamma":[1,1],"beta":[0,0],"momentum":0.1,"trackRunningStatistics":false,"virtualBatchSize":null}""",
            JsonNode.Parse(keepsNone)!.ToJsonString());
        Assert.DoesNotContain("trackRunningStatistics", keeps, StringComparison.Ordinal);
        new BatchNormLayer(2, trackRunningStatistics: false).ImportState(keepsNone);
    }

    [Fact]
    public void It_says_when_it_keeps_no_running_statistics()
    {
        Assert.Equal("BatchNormLayer(features: 2, no running statistics, training, strategy: closed)", new BatchNormLayer(2, trackRunningStatistics: false).ToString());
        Assert.Equal("BatchNormLayer(features: 2, training, strategy: closed)", new BatchNormLayer(2).ToString());
    }
}
