using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Channels × positions, instance norm, RMS norm and PyTorch's flags: each checked against a layout or layer it must
/// equal, or against its formula in exact arithmetic, rather than against its own output.
/// </summary>
public class ChannelTests
{
    public static TheoryData<string> Strategies => ["staged", "closed"];

    private static BackwardStrategy Strategy(string name) => name == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;

    // ---- Channels × positions ----

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Spatial_batch_norm_is_batch_norm_over_every_position_of_each_channel(string strategy)
    {
        // (N, C·S) channel-major against the same values as (N·S) × C rows, PyTorch's BatchNorm2d against BatchNorm1d.
        const int n = 5, c = 3, s = 4;
        BatchNormLayer spatial = BatchNormLayer.Spatial(c, s, momentum: 0.3, backward: Strategy(strategy));
        var rows = new BatchNormLayer(c, momentum: 0.3, backward: Strategy(strategy));
        foreach (BatchNormLayer layer in new[] { spatial, rows })
        {
            layer.Gamma.SetValues([1.5, -0.5, 2]);
            layer.Beta.SetValues([0.25, 1, -3]);
        }

        for (int step = 0; step < 3; step++)
        {
            (Matrix<double> x, Matrix<double> dy) = Batch(n, c, s, seed: step);
            AssertClose("y", FromRows(rows.Forward(AsRows(x, s)), n, s), spatial.Forward(x));
            AssertClose("dx", FromRows(rows.Backward(AsRows(dy, s)), n, s), spatial.Backward(dy));
            AssertClose("dγ", rows.GammaGradient, spatial.GammaGradient);
            AssertClose("dβ", rows.BetaGradient, spatial.BetaGradient);
            AssertClose("running mean", rows.RunningMean, spatial.RunningMean);
            AssertClose("running variance (unbiased over N·S)", rows.RunningVariance, spatial.RunningVariance);
            Assert.Equal(n * s, spatial.Cache!.SegmentRows * spatial.Cache.SegmentColumns);
        }

        rows.IsTraining = spatial.IsTraining = false;
        (Matrix<double> next, Matrix<double> dNext) = Batch(n, c, s, seed: 7);
        AssertClose("inference y", FromRows(rows.Forward(AsRows(next, s)), n, s), spatial.Forward(next));
        AssertClose("inference dx", FromRows(rows.Backward(AsRows(dNext, s)), n, s), spatial.Backward(dNext));
        Assert.Equal(3, spatial.BatchesTracked);
        Assert.Equal(3, spatial.Channels);
        Assert.Equal(12, spatial.Features);
    }

    /// <summary>
    /// Any generated batch of N·S rows × C features is also N samples of C channels × S positions: spatial batch norm on
    /// the second must be batch norm on the first, for every strategy, in training and then in inference.
    /// </summary>
    [BatchNormProperty]
    public void Spatial_batch_norm_equals_batch_norm_on_the_rows_of_every_generated_batch(BatchCase c, BackwardStrategy strategy)
    {
        int s = new[] { 4, 3, 2, 1 }.First(d => c.Rows % d == 0), n = c.Rows / s;
        BatchNormLayer rows = c.Layer(strategy), spatial = BatchNormLayer.Spatial(c.Features, s, c.Epsilon, backward: strategy);
        rows.Gamma.CopyTo(spatial.Gamma);
        rows.Beta.CopyTo(spatial.Beta);
        foreach (bool training in new[] { true, false })
        {
            rows.IsTraining = spatial.IsTraining = training;
            AssertClose("y", FromRows(rows.Forward(c.Input), n, s), spatial.Forward(FromRows(c.Input, n, s)));
            AssertClose("dx", FromRows(rows.Backward(c.Dy), n, s), spatial.Backward(FromRows(c.Dy, n, s)));
            AssertClose("dγ", rows.GammaGradient, spatial.GammaGradient);
            AssertClose("dβ", rows.BetaGradient, spatial.BetaGradient);
            AssertClose("running variance", rows.RunningVariance, spatial.RunningVariance);
        }
    }

    /// <summary>Spatial group norm is column group norm with γ and β repeated over each channel's positions, bit for bit.</summary>
    [BatchNormProperty]
    public void Spatial_group_norm_equals_column_group_norm_bit_for_bit_on_every_generated_batch(RowCase c, BackwardStrategy strategy)
    {
        // The row case's G groups of features become G groups of one channel each, of (features per group) positions.
        int groups = c.Groups, s = c.X.ColumnCount / groups;
        GroupNormLayer spatial = GroupNormLayer.Spatial(groups, groups, s, backward: strategy);
        var columns = new GroupNormLayer(c.X.ColumnCount, groups, backward: strategy);
        for (int j = 0; j < c.X.ColumnCount; j++)
        {
            columns.Gamma[j] = spatial.Gamma[j / s] = c.Gamma[(j / s) * s];
            columns.Beta[j] = spatial.Beta[j / s] = c.Beta[(j / s) * s];
        }

        Assert.Equal(columns.Forward(c.X), spatial.Forward(c.X));
        Assert.Equal(columns.Backward(c.Dy), spatial.Backward(c.Dy));
        AssertClose("dγ", PerChannel(columns.GammaGradient, s), spatial.GammaGradient);
        AssertClose("dβ", PerChannel(columns.BetaGradient, s), spatial.BetaGradient);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Spatial_batch_norm_with_ghost_batches_normalizes_each_block_of_rows_over_its_positions(string strategy)
    {
        // Segments of 2 rows × 4 positions are not contiguous in column-major storage: the engine gathers them.
        const int n = 6, c = 3, s = 4;
        BatchNormLayer ghost = BatchNormLayer.Spatial(c, s, backward: Strategy(strategy));
        ghost.VirtualBatchSize = 2;
        ghost.Gamma.SetValues([1.5, -0.5, 2]);
        (Matrix<double> x, Matrix<double> dy) = Batch(n, c, s, seed: 3);
        Matrix<double> y = ghost.Forward(x), dx = ghost.Backward(dy);
        Vector<double> dGamma = Vector<double>.Build.Dense(c), dBeta = Vector<double>.Build.Dense(c);
        for (int block = 0; block < 3; block++)
        {
            BatchNormLayer alone = BatchNormLayer.Spatial(c, s, backward: Strategy(strategy));
            ghost.Gamma.CopyTo(alone.Gamma);
            Matrix<double> rows = x.SubMatrix(2 * block, 2, 0, c * s);
            Assert.Equal(alone.Forward(rows), y.SubMatrix(2 * block, 2, 0, c * s));
            Assert.Equal(alone.Backward(dy.SubMatrix(2 * block, 2, 0, c * s)), dx.SubMatrix(2 * block, 2, 0, c * s));
            dGamma += alone.GammaGradient;
            dBeta += alone.BetaGradient;
        }

        AssertClose("dγ", dGamma, ghost.GammaGradient);
        AssertClose("dβ", dBeta, ghost.BetaGradient);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Spatial_group_norm_is_group_norm_with_each_channels_gamma_repeated_over_its_positions(string strategy)
    {
        const int n = 4, c = 4, s = 3;
        GroupNormLayer spatial = GroupNormLayer.Spatial(c, 2, s, backward: Strategy(strategy));
        var columns = new GroupNormLayer(c * s, 2, backward: Strategy(strategy));
        spatial.Gamma.SetValues([1.5, -0.5, 2, 0.75]);
        spatial.Beta.SetValues([0.25, 1, -3, 0]);
        for (int j = 0; j < c * s; j++)
        {
            columns.Gamma[j] = spatial.Gamma[j / s];
            columns.Beta[j] = spatial.Beta[j / s];
        }

        (Matrix<double> x, Matrix<double> dy) = Batch(n, c, s, seed: 4);
        Assert.Equal(columns.Forward(x), spatial.Forward(x));
        Assert.Equal(columns.Backward(dy), spatial.Backward(dy));
        AssertClose("dγ", PerChannel(columns.GammaGradient, s), spatial.GammaGradient);
        AssertClose("dβ", PerChannel(columns.BetaGradient, s), spatial.BetaGradient);
        Assert.Equal(4, spatial.Parameters[0].Value.Count);
        Assert.Contains("4 channels cannot be split into 3 groups", Assert.Throws<ArgumentException>(() => GroupNormLayer.Spatial(4, 3, 5)).Message);
    }

    [Fact]
    public void With_one_position_the_factories_make_the_per_feature_layers()
    {
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(8, 6, seed: 2);
        BatchNormLayer spatial = BatchNormLayer.Spatial(6, 1);
        var plain = new BatchNormLayer(6);
        Assert.Equal(plain.Forward(x), spatial.Forward(x));
        Assert.Equal(plain.Backward(dy), spatial.Backward(dy));
        Assert.Equal(plain.ExportState(), spatial.ExportState());
        Assert.Equal(plain.ToString(), spatial.ToString());
        Assert.Equal(new GroupNormLayer(6, 3).ExportState(), GroupNormLayer.Spatial(6, 3, 1).ExportState());
        Assert.Equal("spatialSize", Assert.Throws<ArgumentOutOfRangeException>(() => BatchNormLayer.Spatial(6, 0)).ParamName);
        Assert.Equal("channels", Assert.Throws<ArgumentOutOfRangeException>(() => GroupNormLayer.Spatial(0, 1, 2)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => BatchNormLayer.Spatial(1 << 16, 1 << 16));
    }

    [Fact]
    public void A_spatial_batch_norm_takes_one_row_of_several_positions_and_refuses_one_value()
    {
        BatchNormLayer layer = BatchNormLayer.Spatial(2, 3);
        Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfArray(new double[,] { { 1, 2, 4, -1, -1, 5 } }));
        Assert.Equal(0, y.Row(0).SubVector(0, 3).Sum(), 14);
        Assert.Equal(1, layer.BatchesTracked);

        BatchNormLayer single = BatchNormLayer.Spatial(2, 1);
        string state = single.ExportState();
        var e = Assert.Throws<ArgumentException>(() => single.Forward(Matrix<double>.Build.Dense(1, 2, 1.0)));
        Assert.Contains("at least 2 rows", e.Message);
        Assert.Equal(state, single.ExportState());
        Assert.Null(single.Cache);
    }

    [Fact]
    public void A_non_finite_value_names_its_column_and_channel_layers_change_nothing()
    {
        foreach (NormalizationLayer layer in new NormalizationLayer[] { BatchNormLayer.Spatial(2, 3), GroupNormLayer.Spatial(2, 1, 3), new InstanceNormLayer(2, 3, trackRunningStatistics: true) })
        {
            (Matrix<double> x, Matrix<double> dy) = Batch(4, 2, 3, seed: 5);
            layer.Forward(x);
            NormalizationCache cache = layer.Cache!;
            string state = layer.ExportState();
            Matrix<double> bad = x.Clone();
            bad[1, 4] = double.NaN;
            var e = Assert.Throws<ArgumentException>(() => layer.Forward(bad));
            Assert.Equal("input", e.ParamName);
            Assert.Contains(layer is BatchNormLayer ? "Channel 1 (columns 3–5) of input" : "Row 1 of input", e.Message);
            Assert.Same(cache, layer.Cache);
            Assert.Equal(state, layer.ExportState());

            Matrix<double> badDy = dy.Clone();
            badDy[2, 5] = double.PositiveInfinity;
            var d = Assert.Throws<ArgumentException>(() => layer.Backward(badDy));
            Assert.Contains("column 5", d.Message, StringComparison.OrdinalIgnoreCase);
        }
    }

    [Fact]
    public void A_bad_gamma_of_a_channel_is_named_by_its_channel_in_row_layouts_too()
    {
        (Matrix<double> x, _) = Batch(4, 2, 3, seed: 13);
        foreach (NormalizationLayer layer in new NormalizationLayer[] { GroupNormLayer.Spatial(2, 1, 3), new InstanceNormLayer(2, 3, affine: true), BatchNormLayer.Spatial(2, 3) })
        {
            layer.Gamma[1] = double.NaN;
            var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(x));
            Assert.StartsWith("Channel 1 cannot be normalized: γ[1] = NaN", e.Message, StringComparison.Ordinal);
            Assert.Null(layer.Cache);
            Assert.Equal(0, (layer as RunningStatisticsLayer)?.BatchesTracked ?? 0);
            Assert.Equal(Enumerable.Repeat(0.0, 2), (layer as RunningStatisticsLayer)?.RunningMean ?? Vector<double>.Build.Dense(2));

            // An output beyond the range of double names a column of the channel, and the channel's γ.
            layer.Gamma[1] = 1e308;
            layer.Beta[1] = 1e308;
            var o = Assert.Throws<ArgumentException>(() => layer.Forward(x));
            Assert.Contains("overflows the range of double (γ[1] = 1E+308, β[1] = 1E+308)", o.Message, StringComparison.Ordinal);
            Assert.Contains(layer is BatchNormLayer ? "Channel 1 (columns 3–5) of input" : "of input", o.Message, StringComparison.Ordinal);
            Assert.Null(layer.Cache);
        }
    }

    [Fact]
    public void A_channels_gradient_sums_that_overflow_together_are_refused_in_row_layouts_too()
    {
        // Each column's Σdy is finite; the channel's two columns together are not.
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new double[,] { { 1, 2 }, { 4, -3 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new double[,] { { 1e308, 0 }, { 0, 1e308 } });
        foreach (NormalizationLayer layer in new NormalizationLayer[] { GroupNormLayer.Spatial(1, 1, 2), BatchNormLayer.Spatial(1, 2) })
        {
            layer.Forward(x);
            var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
            Assert.Equal("outputGradient", e.ParamName);
            Assert.Equal(0, layer.BetaGradient[0]);
        }
    }

    [Fact]
    public void A_state_with_positions_or_without_gamma_for_a_type_without_them_is_a_format_error()
    {
        string layerNorm = new LayerNormLayer(4).ExportState();
        string withPositions = layerNorm.Replace("\"features\": 4", "\"features\": 4, \"spatialSize\": 2", StringComparison.Ordinal);
        Assert.NotEqual(layerNorm, withPositions);
        Assert.Contains("positions per channel", Assert.Throws<FormatException>(() => NormalizationLayer.FromState(withPositions)).Message);
        Assert.Contains("positions per channel", Assert.Throws<ArgumentException>(() => new LayerNormLayer(4).ImportState(withPositions)).Message);
    }

    // ---- Instance norm ----

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Instance_norm_in_training_is_group_norm_with_one_group_per_channel(string strategy)
    {
        const int n = 3, c = 3, s = 4;
        var instance = new InstanceNormLayer(c, s, backward: Strategy(strategy), affine: true, trackRunningStatistics: true);
        GroupNormLayer group = GroupNormLayer.Spatial(c, c, s, backward: Strategy(strategy));
        foreach (NormalizationLayer layer in new NormalizationLayer[] { instance, group })
        {
            layer.Gamma.SetValues([1.5, -0.5, 2]);
            layer.Beta.SetValues([0.25, 1, -3]);
        }

        (Matrix<double> x, Matrix<double> dy) = Batch(n, c, s, seed: 6);
        Assert.Equal(group.Forward(x), instance.Forward(x));
        Assert.Equal(group.Backward(dy), instance.Backward(dy));
        Assert.Equal(group.GammaGradient, instance.GammaGradient);
        Assert.Equal(group.BetaGradient, instance.BetaGradient);
    }

    [Fact]
    public void Instance_norm_averages_its_instance_statistics_into_running_ones_and_infers_with_them_per_channel()
    {
        // PyTorch: running_mean ← (1 − m)·running_mean + m·meanᵢ(μᵢ), running_var likewise with each instance's unbiased variance.
        const int n = 4, c = 2, s = 5;
        const double m = 0.25;
        var instance = new InstanceNormLayer(c, s, momentum: m, affine: true, trackRunningStatistics: true);
        double[] mean = [0, 0], variance = [1, 1];
        for (int step = 0; step < 2; step++)
        {
            (Matrix<double> x, _) = Batch(n, c, s, seed: 10 + step);
            instance.Forward(x);
            for (int ch = 0; ch < c; ch++)
            {
                double[][] instances = [.. Enumerable.Range(0, n).Select(i => Enumerable.Range(0, s).Select(p => x[i, (ch * s) + p]).ToArray())];
                double means = instances.Average(v => v.Average());
                double variances = instances.Average(v => v.Sum(a => (a - v.Average()) * (a - v.Average())) / (s - 1));
                mean[ch] = ((1 - m) * mean[ch]) + (m * means);
                variance[ch] = ((1 - m) * variance[ch]) + (m * variances);
            }
        }

        AssertClose("running mean", Vector<double>.Build.DenseOfArray(mean), instance.RunningMean);
        AssertClose("running variance", Vector<double>.Build.DenseOfArray(variance), instance.RunningVariance);
        Assert.Equal(0, instance.BatchesTracked);

        // Inference is then batch norm's inference with the same statistics: one affine map per channel, for any rows.
        instance.Gamma.SetValues([2, -1]);
        instance.Beta.SetValues([0.5, 3]);
        BatchNormLayer batch = BatchNormLayer.Spatial(c, s);
        instance.RunningMean.CopyTo(batch.RunningMean);
        instance.RunningVariance.CopyTo(batch.RunningVariance);
        instance.Gamma.CopyTo(batch.Gamma);
        instance.Beta.CopyTo(batch.Beta);
        instance.IsTraining = batch.IsTraining = false;
        (Matrix<double> one, Matrix<double> dOne) = Batch(1, c, s, seed: 12);
        Assert.Equal(batch.Forward(one), instance.Forward(one));
        Assert.Equal(batch.Backward(dOne), instance.Backward(dOne));
        Assert.Equal(batch.GammaGradient, instance.GammaGradient);
    }

    [Fact]
    public void Instance_norm_keeps_PyTorchs_defaults_no_parameters_no_running_statistics()
    {
        var layer = new InstanceNormLayer(3, 4);
        Assert.Empty(layer.Parameters);
        Assert.False(layer.IsAffine);
        Assert.False(layer.TracksRunningStatistics);
        Assert.Equal(0.1, layer.Momentum);
        Assert.Equal("InstanceNormLayer(channels: 3, positions: 4, not affine, no running statistics, training, strategy: closed)", layer.ToString());
        (Matrix<double> x, Matrix<double> dy) = Batch(2, 3, 4, seed: 8);
        Matrix<double> training = layer.Forward(x), dxTraining = layer.Backward(dy);
        layer.IsTraining = false;
        Assert.Equal(training, layer.Forward(x));
        Assert.Equal(dxTraining, layer.Backward(dy));
        Assert.Equal(Enumerable.Repeat(0.0, 3), layer.RunningMean);
        Assert.Equal(Enumerable.Repeat(1.0, 3), layer.RunningVariance);
        Assert.Equal(Enumerable.Repeat(0.0, 3), layer.GammaGradient);
        Assert.Contains("keeps no running statistics", Assert.Throws<InvalidOperationException>(() => layer.FoldInto(Matrix<double>.Build.Dense(2, 12), Vector<double>.Build.Dense(12))).Message);

        var one = new InstanceNormLayer(3, 1);
        var e = Assert.Throws<ArgumentException>(() => one.Forward(Matrix<double>.Build.Dense(4, 3, (i, j) => i + j)));
        Assert.Contains("at least 2 positions per channel", e.Message);
        Assert.Null(one.Cache);
        Assert.Equal("momentum", Assert.Throws<ArgumentOutOfRangeException>(() => new InstanceNormLayer(3, 4, momentum: 1.5)).ParamName);
    }

    [Fact]
    public void Instance_statistics_near_the_largest_double_average_into_finite_running_ones()
    {
        var layer = new InstanceNormLayer(1, 2, trackRunningStatistics: true);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new double[,] { { 1e308, 1e308 }, { 1e308, 1e308 } }));
        Assert.Equal(0.1 * 1e308, layer.RunningMean[0], 1e293);
        Assert.True(double.IsFinite(layer.RunningMean[0]));
        layer.Forward(Matrix<double>.Build.DenseOfArray(new double[,] { { 1, 2 } }));
    }

    // ---- RMS norm ----

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Rms_norm_is_its_formula_in_exact_arithmetic_on_hard_rows(string strategy)
    {
        // Rows near 1e8 with spread 1 (no centering, so nothing cancels), constant rows, two values, tiny values.
        var random = new Random(21);
        double[][] rows =
        [
            [.. Enumerable.Range(0, 16).Select(_ => 1e8 + (random.Next(-1000, 1000) / 1024.0))],
            [.. Enumerable.Repeat(-3.5, 16)],
            [.. Enumerable.Range(0, 16).Select(j => j < 8 ? 0.5 : -0.25)],
            [.. Enumerable.Range(0, 16).Select(_ => random.Next(-1000, 1000) * Math.Pow(2, -160))],
        ];
        foreach ((int groups, double epsilon) in new[] { (1, RMSNormLayer.DefaultEpsilon), (4, 1e-300), (8, 1e-5) })
        {
            var layer = new RMSNormLayer(16, epsilon, groups, Strategy(strategy));
            layer.Gamma.SetValues([.. Enumerable.Repeat(1.375, 16)]);
            double[][] dy = [.. rows.Select(_ => Enumerable.Range(0, 16).Select(_ => random.Next(-1024, 1024) / 1024.0).ToArray())];
            Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfRowArrays(rows)), dx = layer.Backward(Matrix<double>.Build.DenseOfRowArrays(dy));
            int width = 16 / groups;
            for (int i = 0; i < rows.Length; i++)
            {
                for (int g = 0; g < groups; g++)
                {
                    var exact = new ExactColumn(rows[i][(g * width)..((g + 1) * width)], 1.375, 0, epsilon, dy[i][(g * width)..((g + 1) * width)], centered: false);
                    string where = $"row {i}, group {g} of {groups}";
                    NormalizationCache cache = layer.Cache!;
                    int k = cache.SegmentOf(i, g * width);
                    double[] actualDx = [.. dx.Row(i).SubVector(g * width, width)];
                    Ulps.AssertClose(where + ": y", exact.Y, [.. y.Row(i).SubVector(g * width, width)]);
                    Ulps.AssertClose(where + ": mean square", [exact.Variance], [cache.Variance[k]]);
                    if (width == 16)
                    {
                        // The whole row, PyTorch's RMSNorm: within the bound of the exact formula on x itself.
                        Ulps.AssertClose(where + ": dx", exact.Dx, actualDx);
                    }
                    else
                    {
                        // Over short groups dx = γ·r·(dy − x̂·mean(dy·x̂)) can be a small difference of its two terms, and
                        // the half-unit roundings of the cached x̂ (and, without FMA, of x̂·mean) reach it at the size of
                        // those terms: so its error is measured in units of the larger term, as dγ's is in units of Σ|dy·x̂|.
                        double meanDyXHat = exact.XHat.Zip(dy[i][(g * width)..((g + 1) * width)], (h, d) => h * d).Average();
                        double terms = 1.375 * exact.InverseStd * Enumerable.Range(0, width).Max(t => Math.Abs(dy[i][(g * width) + t]) + Math.Abs(exact.XHat[t] * meanDyXHat));
                        Ulps.AssertClose(where + ": dx", exact.Dx, actualDx, unitOf: terms);
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void An_uncentered_segment_through_the_public_steps_has_rms_norms_gradient(string strategy)
    {
        // A user's layer can run a strategy on a segment of its own: x̂ = x/√(ms + ε), dx = γ·r·(dy − x̂·mean(dy·x̂)).
        double[] x = [3, -1, 0.5, 2], dy = [0.25, -1, 0.5, 0.125];
        const double gamma = 1.5, epsilon = 1e-5;
        double ms = x.Average(v => v * v), r = 1 / Math.Sqrt(ms + epsilon);
        double[] xHat = [.. x.Select(v => v * r)];
        double meanDyXHat = dy.Zip(xHat, (a, b) => a * b).Average();
        var segment = new BackwardSegment(dy, xHat, gamma, ms, epsilon, centered: false);
        Assert.False(segment.Centered);
        BackwardStrategy chosen = Strategy(strategy);
        double[] sums = new double[chosen.SumCount], dx = new double[4];
        chosen.SegmentSums(segment, sums, dx);
        chosen.SegmentInputGradient(segment, sums, dx);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(gamma * r * (dy[i] - (xHat[i] * meanDyXHat)), dx[i], 14);
        }

        Assert.Equal(dy.Zip(xHat, (a, b) => a * b).Sum(), sums[0], 14);
        Assert.Equal(dy.Sum(), sums[1], 14);
    }

    public static TheoryData<string, int, bool, bool> RmsCheckCases
    {
        get
        {
            var data = new TheoryData<string, int, bool, bool>();
            foreach (string strategy in new[] { "staged", "closed" })
            {
                foreach ((int groups, bool affine) in new[] { (1, true), (3, true), (2, false) })
                {
                    data.Add(strategy, groups, affine, true);
                    data.Add(strategy, groups, affine, false);
                }
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(RmsCheckCases))]
    public void GradientCheck_passes_on_rms_norm_and_on_the_channel_layers(string strategy, int groups, bool affine, bool training)
    {
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(5, 6, seed: groups);
        NormalizationLayer[] layers =
        [
            new RMSNormLayer(6, 1e-5, groups, Strategy(strategy), affine),
            GroupNormLayer.Spatial(6 / groups, 1, groups, backward: Strategy(strategy), affine: affine),
            BatchNormLayer.Spatial(6 / groups, groups, backward: Strategy(strategy), affine: affine, trackRunningStatistics: !training),
            new InstanceNormLayer(3, 2, backward: Strategy(strategy), affine: affine, trackRunningStatistics: !training),
        ];
        foreach (NormalizationLayer layer in layers)
        {
            layer.Forward(x * 1.5);
            layer.IsTraining = training;
            if (affine)
            {
                layer.Gamma.SetValues([.. Enumerable.Range(0, layer.Channels).Select(c => 1.5 - (0.75 * c))]);
            }

            GradientCheckResult errors = GradientCheck.Check(layer, x, dy);
            Assert.True(errors.Max < 1e-6, $"{layer}: {errors}");
            Assert.Equal(affine ? layer is RMSNormLayer ? 1 : 2 : 0, errors.Parameters.Count);
        }
    }

    [Fact]
    public void Rms_norm_has_gamma_only_and_is_the_same_in_training_and_inference()
    {
        var layer = new RMSNormLayer(4, groups: 2);
        Assert.Equal(["gamma"], layer.Parameters.Select(p => p.Name));
        Assert.Equal(RMSNormLayer.DefaultEpsilon, layer.Epsilon);
        Assert.Equal("RMSNormLayer(features: 4, groups: 2, training, strategy: closed)", layer.ToString());
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new double[,] { { 3, 4, 0, 0.5 } });
        Matrix<double> y = layer.Forward(x);
        Assert.Equal(3 / Math.Sqrt(12.5 + layer.Epsilon), y[0, 0], 15);
        Assert.Equal(0, y[0, 2]);
        layer.IsTraining = false;
        Assert.Equal(y, layer.Forward(x));
        Assert.Equal(0, layer.Cache!.Mean[0]);

        // β is not a parameter: it stays 0, and a Forward refuses it changed.
        layer.Beta[1] = 0.5;
        string state = layer.ExportState();
        Assert.Contains("beta[1]", Assert.Throws<ArgumentException>(() => layer.Forward(x)).Message);
        Assert.Equal(state, layer.ExportState());
        Assert.DoesNotContain("beta", state);
        Assert.Contains("3 groups", Assert.Throws<ArgumentException>(() => new RMSNormLayer(4, groups: 3)).Message);
        Assert.Equal("groups", Assert.Throws<ArgumentOutOfRangeException>(() => new RMSNormLayer(4, groups: 0)).ParamName);
    }

    // ---- PyTorch's flags ----

    [Fact]
    public void Without_affine_gamma_and_beta_are_fixed_and_neither_saved_nor_learned()
    {
        var layer = new BatchNormLayer(3, affine: false);
        Assert.Empty(layer.Parameters);
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(6, 3, seed: 9);
        var reference = new BatchNormLayer(3);
        Assert.Equal(reference.Forward(x), layer.Forward(x));
        Assert.Equal(reference.Backward(dy), layer.Backward(dy));
        Assert.Equal(Enumerable.Repeat(0.0, 3), layer.GammaGradient);
        Assert.Equal(Enumerable.Repeat(0.0, 3), layer.BetaGradient);

        string state = layer.ExportState();
        Assert.DoesNotContain("gamma", state);
        Assert.Contains("\"affine\": false", state);
        BatchNormLayer restored = BatchNormLayer.FromState(state);
        Assert.False(restored.IsAffine);
        Assert.Equal(state, restored.ExportState());
        Assert.Contains("affine", Assert.Throws<ArgumentException>(() => reference.ImportState(state)).Message);

        // An optimizer that writes γ anyway is told, and nothing changes.
        layer.Gamma[2] = 2;
        NormalizationCache cache = layer.Cache!;
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Contains("gamma[2]", e.Message);
        Assert.Same(cache, layer.Cache);
        Assert.Equal(1, layer.BatchesTracked);
        layer.Gamma[2] = 1;

        // Folding still works: γ = 1 and β = 0.
        layer.IsTraining = false;
        Matrix<double> w = Matrix<double>.Build.Dense(2, 3, (i, j) => i + j + 1);
        Vector<double> b = Vector<double>.Build.Dense(3, 0.5);
        (Matrix<double> w2, Vector<double> b2) = layer.FoldInto(w, b);
        Matrix<double> input = Matrix<double>.Build.Dense(4, 2, (i, j) => i - j);
        AssertClose("folded", layer.Forward((input * w) + Matrix<double>.Build.Dense(4, 3, (_, j) => b[j])), (input * w2) + Matrix<double>.Build.Dense(4, 3, (_, j) => b2[j]));
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Without_running_statistics_inference_uses_the_batch_and_nothing_is_tracked(string strategy)
    {
        var layer = new BatchNormLayer(3, backward: Strategy(strategy), trackRunningStatistics: false);
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(6, 3, seed: 10);
        Matrix<double> training = layer.Forward(x), dxTraining = layer.Backward(dy);
        Assert.Equal(Enumerable.Repeat(0.0, 3), layer.RunningMean);
        Assert.Equal(Enumerable.Repeat(1.0, 3), layer.RunningVariance);
        Assert.Equal(0, layer.BatchesTracked);

        layer.IsTraining = false;
        Assert.Equal(training, layer.Forward(x));
        Assert.Equal(dxTraining, layer.Backward(dy));
        Assert.True(layer.Cache!.SegmentRows == 6);

        string state = layer.ExportState();
        Assert.DoesNotContain("runningMean", state);
        Assert.Contains("\"trackRunningStatistics\": false", state);
        Assert.Equal(state, BatchNormLayer.FromState(state).ExportState());
        Assert.Contains("keeps no running statistics", Assert.Throws<InvalidOperationException>(() => layer.FoldInto(Matrix<double>.Build.Dense(2, 3), Vector<double>.Build.Dense(3))).Message);
        Assert.Contains("keeps no running statistics", Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(1, 3))).Message);
        Assert.Equal("BatchNormLayer(features: 3, no running statistics, inference, strategy: " + layer.BackwardStrategy.Name + ")", layer.ToString());
    }

    // ---- Exact hard cases over channels ----

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Channels_of_positions_are_exact_on_the_hard_cases(string strategy)
    {
        // Channel 0 near 1e8 with spread 1, channel 1 constant, channel 2 tiny: 3 rows × 4 positions each, one segment.
        const int n = 3, c = 3, s = 4;
        var random = new Random(31);
        Matrix<double> x = Matrix<double>.Build.Dense(n, c * s, (_, j) => (j / s) switch
        {
            0 => 1e8 + (random.Next(-1 << 20, 1 << 20) / (double)(1 << 20)),
            1 => 7.25,
            _ => 1 + (random.Next(-1000, 1000) * Math.Pow(2, -40)),
        });
        Matrix<double> dy = Matrix<double>.Build.Dense(n, c * s, (_, _) => random.Next(-1024, 1024) / 1024.0);
        BatchNormLayer layer = BatchNormLayer.Spatial(c, s, backward: Strategy(strategy));
        layer.Gamma.SetValues([1.5, -0.75, 2]);
        Matrix<double> y = layer.Forward(x), dx = layer.Backward(dy);
        for (int ch = 0; ch < c; ch++)
        {
            double[] values = ChannelValues(x, ch, s), gradient = ChannelValues(dy, ch, s);
            var exact = new ExactColumn(values, layer.Gamma[ch], 0, layer.Epsilon, gradient);
            Ulps.AssertClose($"channel {ch}: μ", [exact.Mean], [layer.Cache!.Mean[ch]]);
            Ulps.AssertClose($"channel {ch}: y", exact.Y, ChannelValues(y, ch, s));
            Ulps.AssertClose($"channel {ch}: dx", exact.Dx, ChannelValues(dx, ch, s));
            Ulps.AssertClose($"channel {ch}: running variance", [(0.9 * 1) + (0.1 * exact.UnbiasedVariance)], [layer.RunningVariance[ch]]);
        }

        // Two values per segment: instance norm of 2 positions.
        var instance = new InstanceNormLayer(1, 2, backward: Strategy(strategy));
        Matrix<double> pairs = Matrix<double>.Build.DenseOfArray(new double[,] { { 1e8 + 0.5, 1e8 - 0.25 }, { 3.25, -1.5 } });
        Matrix<double> pairGradient = Matrix<double>.Build.DenseOfArray(new double[,] { { 0.5, -0.125 }, { 1, 0.25 } });
        Matrix<double> py = instance.Forward(pairs), pdx = instance.Backward(pairGradient);
        for (int i = 0; i < 2; i++)
        {
            var exact = new ExactColumn([pairs[i, 0], pairs[i, 1]], 1, 0, instance.Epsilon, [pairGradient[i, 0], pairGradient[i, 1]]);
            Ulps.AssertClose($"pair {i}: y", exact.Y, [py[i, 0], py[i, 1]]);
            if (strategy == "closed")
            {
                Ulps.AssertClose($"pair {i}: dx", exact.Dx, [pdx[i, 0], pdx[i, 1]]);
            }
        }
    }

    // ---- Helpers ----

    /// <summary>N samples of C channels × S positions, channel c centred at 2c − 3 with its own spread; dy uniform.</summary>
    private static (Matrix<double> X, Matrix<double> Dy) Batch(int n, int c, int s, int seed)
    {
        var random = new Random(seed);
        Matrix<double> x = Matrix<double>.Build.Dense(n, c * s, (_, j) => ((j / s) * 2.0) - 3 + ((1 + ((j / s) % 3)) * (random.NextDouble() - 0.5)));
        Matrix<double> dy = Matrix<double>.Build.Dense(n, c * s, (_, _) => random.NextDouble() - 0.5);
        return (x, dy);
    }

    /// <summary>(N, C·S) channel-major as (N·S) rows of C features: row i·S + p holds position p of sample i.</summary>
    private static Matrix<double> AsRows(Matrix<double> x, int s)
        => Matrix<double>.Build.Dense(x.RowCount * s, x.ColumnCount / s, (r, c) => x[r / s, (c * s) + (r % s)]);

    /// <summary>The inverse of <see cref="AsRows"/>.</summary>
    private static Matrix<double> FromRows(Matrix<double> rows, int n, int s)
        => Matrix<double>.Build.Dense(n, rows.ColumnCount * s, (i, j) => rows[(i * s) + (j % s), j / s]);

    /// <summary>A channel's values in the order the engine stores them: its columns one after another.</summary>
    private static double[] ChannelValues(Matrix<double> m, int channel, int s)
        => [.. Enumerable.Range(channel * s, s).SelectMany(j => m.Column(j))];

    private static Vector<double> PerChannel(Vector<double> perColumn, int s)
        => Vector<double>.Build.Dense(perColumn.Count / s, c => perColumn.SubVector(c * s, s).Sum());

    private static void AssertClose(string what, Matrix<double> expected, Matrix<double> actual)
    {
        Assert.Equal((expected.RowCount, expected.ColumnCount), (actual.RowCount, actual.ColumnCount));
        double difference = (expected - actual).InfinityNorm();
        Assert.True(difference <= 1e-13 * (1 + expected.InfinityNorm()), $"{what}: differ by {difference:E2}");
    }

    private static void AssertClose(string what, Vector<double> expected, Vector<double> actual)
    {
        double difference = (expected - actual).InfinityNorm();
        Assert.True(difference <= 1e-13 * (1 + expected.InfinityNorm()), $"{what}: differ by {difference:E2}");
    }
}
