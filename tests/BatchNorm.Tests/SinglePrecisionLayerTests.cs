using System;
using System.Globalization;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Every layer over <c>Matrix&lt;float&gt;</c>. Forward widens each float exactly and computes in double, so its
/// statistics are those of the same layer over the widened batch but for the one pass float may take where double
/// takes two (within <see cref="SinglePrecisionKernelTests.StatisticsBounds"/>'s bound), and its y and x̂ are that
/// layer's rounded once, or a neighbouring float where the two statistics straddle a rounding boundary. Backward reads
/// x̂ as the float it was stored as, so dx and dγ differ from the double layer's by the rounding of x̂, within bounds
/// derived from float's unit roundoff u = 2⁻²⁴.
/// </summary>
public class SinglePrecisionLayerTests
{
    /// <summary>Float's unit roundoff: half the spacing of floats at 1.</summary>
    private const double U = 1.0 / (1 << 24);

    [BatchNormProperty]
    public void Every_layer_kind_over_floats_is_the_double_layer_rounded_once(LayerKind kind, BackwardStrategy strategy, bool training, int seed)
    {
        // A strategy written for batch norm's graph does not say it handles RMS norm's: the staged one stands in.
        strategy = kind.Name == "rms norm" && !strategy.SupportsUncentered ? BackwardStrategy.Staged : strategy;
        INormalizationLayer wide = kind.Create(strategy), single = kind.Create(strategy);
        (Matrix<double> x0, Matrix<double> dy0) = ContractTests.Batch(8, 6, seed);
        Matrix<float> x = Round(x0), dy = Round(dy0), warmUp = Round(x0 * 1.5);
        SetParameters(wide, seed);
        SetParameters(single, seed);
        wide.Forward(Widen(warmUp));
        single.Forward(warmUp);
        (double Mean, double Variance)[] warmUpBounds = ChannelBounds(wide.Cache!);
        wide.IsTraining = single.IsTraining = training;

        Matrix<double> y = wide.Forward(Widen(x));
        Matrix<float> ySingle = single.Forward(x);
        AssertWithinOneUnit(Round(y).ToColumnMajorArray(), ySingle.ToColumnMajorArray());
        NormalizationCache cache = single.Cache!;
        Assert.True(cache.SinglePrecision);
        for (int k = 0; k < cache.Mean.Length; k++)
        {
            SinglePrecisionKernelTests.AssertStatisticsClose(cache.SegmentValues, wide.Cache!.Mean[k], wide.Cache!.Variance[k], cache.Mean[k], cache.Variance[k]);
        }

        AssertWithinOneUnit([.. wide.Cache!.NormalizedInput.ToArray().Select(v => (float)v)], cache.NormalizedInputSingle.ToArray());
        if (wide is RunningStatisticsLayer running && single is RunningStatisticsLayer runningSingle)
        {
            // The running statistics blend the batch statistics of both Forwards in, once per segment of a channel, with
            // weights that add up to at most 1: they differ by at most the most any of those segments' statistics differ
            // (the variance unbiased, by at most twice that), and by the blends' own roundings.
            Assert.Equal(running.BatchesTracked, runningSingle.BatchesTracked);
            const double u = 1.0 / (1L << 53);
            int blocks = cache.RowBlocks;
            (double Mean, double Variance)[] bounds = ChannelBounds(wide.Cache!);
            for (int j = 0; j < running.RunningMean.Count; j++)
            {
                double meanBound = Math.Max(bounds[j].Mean, warmUpBounds[j].Mean) + (8 * blocks * u * Math.Abs(running.RunningMean[j]));
                double varianceBound = (2 * Math.Max(bounds[j].Variance, warmUpBounds[j].Variance)) + (8 * blocks * u * running.RunningVariance[j]);
                Assert.True(Math.Abs(running.RunningMean[j] - runningSingle.RunningMean[j]) <= meanBound, $"running mean {j}");
                Assert.True(Math.Abs(running.RunningVariance[j] - runningSingle.RunningVariance[j]) <= varianceBound, $"running variance {j}");
            }

            // All else the layers save (γ, β, the counter, renorm's settings) is equal: with the running statistics set
            // equal, so are the saved states.
            running.RunningMean.CopyTo(runningSingle.RunningMean);
            running.RunningVariance.CopyTo(runningSingle.RunningVariance);
        }

        Assert.Equal(wide.ExportState(), single.ExportState());

        Matrix<double> dx = wide.Backward(Widen(dy));
        Matrix<float> dxSingle = single.Backward(dy);

        // x̂ is stored to within u·|x̂|. In dx = s·(dy − mean(dy) − x̂·mean(dy·x̂)), with s = γ′·istd, that moves
        // x̂·mean(dy·x̂) by at most 2u·‖x̂‖²·‖dy‖; rounding dx to float adds u·|dx| ≤ u·s·‖dy‖·(2 + ‖x̂‖²). So
        // |Δdx| ≤ s·‖dy‖·u·(2 + 3‖x̂‖²), with the largest s of the layer (γ′ = γ·r ≤ γ·rmax for renorm).
        double xHatMax = cache.NormalizedInputSingle.ToArray().Max(v => Math.Abs((double)v));
        double scale = ScaleBound(single) * cache.InverseStandardDeviation.ToArray().Max();
        double bound = scale * dy.Enumerate().Max(v => Math.Abs((double)v)) * U * (2 + (3 * xHatMax * xHatMax)) * 1.01;
        double worst = dx.Enumerate().Zip(dxSingle.Enumerate(), (a, b) => Math.Abs(a - b)).Max();
        Assert.True(worst <= bound, $"{kind.Name}, {strategy.Name}, training {training}: dx off by {worst:E3}, bound {bound:E3}");

        // dβ = Σdy is the same sum of the same values; dγ = Σdy·x̂ moves by at most u·Σ|dy·x̂| (the spatial kinds add a
        // channel's positions, renorm scales by r).
        foreach ((LayerParameter p, LayerParameter q) in wide.Parameters.Zip(single.Parameters))
        {
            double size = Enumerable.Range(0, p.Gradient.Count).Max(i => Math.Abs(p.Gradient[i]));
            double tolerance = p.Name == "beta" ? 0 : ScaleBound(single) * U * 8 * 6 * xHatMax * dy.Enumerate().Max(v => Math.Abs((double)v));
            for (int i = 0; i < p.Gradient.Count; i++)
            {
                Assert.True(Math.Abs(p.Gradient[i] - q.Gradient[i]) <= tolerance, $"{kind.Name}: {p.Name}[{i}] {q.Gradient[i]:R} against {p.Gradient[i]:R} (size {size:E2})");
            }
        }
    }

    /// <summary>
    /// Central differences in double of the float layer's own function (<see cref="GradientCheck.Check(INormalizationLayer, Matrix{float}, Matrix{float}, double)"/>):
    /// the outputs carry rounding errors of up to u of their size, which a difference over a relative step h (3e-2)
    /// divides by h, and the check measures errors against at least <see cref="GradientCheck.DefaultRelativeFloor"/> of
    /// the gradient's size; so it must come within u/(h·floor)/2 = 9.9e-3 (measured worst over every kind, 12 seeds and
    /// both modes: 1.85e-3), where a gradient off by 10% shows as 5e-2. Instance norm gets channels of 3 positions here rather than 2: a segment of two
    /// values normalizes to ±1 whatever they are, so its gradient, of order γ·ε·dy/σ³, lies below what differences of
    /// float outputs can resolve (the double check, with rounding errors 2²⁹ times smaller, resolves it).
    /// </summary>
    [BatchNormProperty]
    public void Every_layer_kind_over_floats_passes_GradientCheck_in_single_precision(LayerKind kind, BackwardStrategy strategy, bool training, int seed)
    {
        strategy = kind.Name == "rms norm" && !strategy.SupportsUncentered ? BackwardStrategy.Staged : strategy;
        INormalizationLayer layer = kind.Name == "instance norm"
            ? new InstanceNormLayer(2, 3, backward: strategy, affine: true, trackRunningStatistics: true)
            : kind.Create(strategy);
        (Matrix<double> x0, Matrix<double> dy0) = ContractTests.Batch(8, 6, seed);
        layer.Forward(Round(x0 * 1.5));
        layer.IsTraining = training;
        if (layer is BatchRenormLayer renorm && training)
        {
            // Renorm's Backward holds r and d constant: its true gradient only where they are clipped at their limits.
            renorm.RunningVariance.SetValues([.. Enumerable.Repeat(1e6, 6)]);
            renorm.RunningMean.SetValues([.. Enumerable.Range(0, 6).Select(j => j % 2 == 0 ? 1e5 : -1e5)]);
        }

        string before = layer.ExportState();
        GradientCheckResult errors = GradientCheck.Check(layer, Round(x0), Round(dy0));
        Assert.True(errors.Max < U / (3e-2 * GradientCheck.DefaultRelativeFloor) / 2, $"{kind.Name}, {strategy.Name}, training {training}: {errors}");
        Assert.Equal(before, layer.ExportState());
        Assert.True(layer.Cache!.SinglePrecision);
    }

    [Fact]
    public void The_float_gradient_check_fails_a_wrong_float_backward()
    {
        var layer = new WrongSingleBackward();
        (Matrix<double> x0, Matrix<double> dy0) = ContractTests.Batch(8, 6, 3);
        GradientCheckResult errors = GradientCheck.Check(layer, Round(x0), Round(dy0));
        Assert.True(errors.Input > 1e-2, errors.ToString());
        Assert.True(GradientCheck.Check(layer, x0, dy0).Max < 1e-6);
    }

    public static TheoryData<string, double, double> HardCases => new()
    {
        { "mean 1e4, spread 1e-2, 64 rows", 1e4, 1e-2 },
        { "mean 100, spread 1, 64 rows", 100, 1 },
        { "mean 1e4, spread 1e-2, 2 rows", 1e4, 1e-2 },
        { "constant, 64 rows", 3.5, 0 },
    };

    [Theory]
    [MemberData(nameof(HardCases))]
    public void Float_outputs_on_the_hard_cases_are_the_exact_ones_rounded_to_float_within_one_unit(string name, double mean, double spread)
    {
        int rows = name.Contains("2 rows", StringComparison.Ordinal) ? 2 : 64;
        var random = new Random(rows);
        Matrix<float> x = Matrix<float>.Build.Dense(rows, 3, (_, _) => (float)(mean + (spread * ((2 * random.NextDouble()) - 1))));
        var layer = new BatchNormLayer(3);
        layer.Gamma.SetValues([1.5, -0.75, 2]);
        layer.Beta.SetValues([0.25, 1, -3]);
        Matrix<float> y = layer.Forward(x);
        for (int j = 0; j < 3; j++)
        {
            var exact = new ExactColumn(x.Column(j).Select(v => (double)v).ToArray(), layer.Gamma[j], layer.Beta[j], layer.Epsilon, new double[rows]);
            Assert.Equal(exact.Mean, layer.Cache!.Mean[j], Math.Abs(exact.Mean) * 4e-16);
            for (int i = 0; i < rows; i++)
            {
                float rounded = (float)exact.Y[i];
                Assert.True(
                    y[i, j] == rounded || y[i, j] == MathF.BitIncrement(rounded) || y[i, j] == MathF.BitDecrement(rounded),
                    $"{name}: y[{i}, {j}] = {y[i, j]:R}, the exact value rounded to float is {rounded:R}");
            }
        }
    }

    /// <summary>
    /// The batches of tools/float32_accuracy.py (256 rows of 4 features, normal around the mean), with their outputs
    /// computed exactly and by PyTorch 1.13's float32 BatchNorm1d: every float y of the layer is the exact value rounded
    /// to float or a neighbour of it, and its normwise error max|y − y_exact|/max|y_exact| is far below PyTorch's
    /// (measured: 1.9e-2 at mean 1e4 with spread 1e-2, 7.3e-6 at mean 100 with spread 1).
    /// </summary>
    [Theory]
    [InlineData("mean 1e4 spread 1e-2")]
    [InlineData("mean 100 spread 1")]
    public void Float_outputs_on_PyTorch_s_float32_cases_are_within_one_unit_of_exact(string name)
    {
        var rows = System.IO.File.ReadAllLines(System.IO.Path.Combine(AppContext.BaseDirectory, "Fixtures", "float32_hard_cases.csv"))
            .Skip(1)
            .Select(line => line.Split(','))
            .Where(f => f[0] == name)
            .Select(f => (Row: int.Parse(f[1], CultureInfo.InvariantCulture), Feature: int.Parse(f[2], CultureInfo.InvariantCulture), X: float.Parse(f[3], CultureInfo.InvariantCulture), Exact: double.Parse(f[4], CultureInfo.InvariantCulture), Torch: double.Parse(f[5], CultureInfo.InvariantCulture)))
            .ToArray();
        Assert.Equal(256 * 4, rows.Length);
        var x = Matrix<float>.Build.Dense(256, 4);
        foreach (var r in rows)
        {
            x[r.Row, r.Feature] = r.X;
        }

        Matrix<float> y = new BatchNormLayer(4).Forward(x);
        double size = rows.Max(r => Math.Abs(r.Exact)), ours = 0, torch = 0;
        foreach (var r in rows)
        {
            float rounded = (float)r.Exact, actual = y[r.Row, r.Feature];
            Assert.True(actual == rounded || actual == MathF.BitIncrement(rounded) || actual == MathF.BitDecrement(rounded), $"{name}: y[{r.Row}, {r.Feature}] = {actual:R}, exact {r.Exact:R}");
            ours = Math.Max(ours, Math.Abs(actual - r.Exact) / size);
            torch = Math.Max(torch, Math.Abs(r.Torch - r.Exact) / size);
        }

        Assert.True(ours <= U, $"{name}: normwise error {ours:E1}");
        Assert.True(torch > 100 * ours, $"{name}: PyTorch's normwise error {torch:E1} against ours {ours:E1}");
    }

    [Fact]
    public void Bad_float_input_is_refused_by_name_and_leaves_the_layer_untouched()
    {
        var layer = new BatchNormLayer(3);
        layer.Forward(Matrix<float>.Build.Dense(4, 3, (i, j) => i + j));
        string state = layer.ExportState();
        NormalizationCache? cache = layer.Cache;

        Matrix<float> bad = Matrix<float>.Build.Dense(4, 3, (i, j) => i * j);
        bad[2, 1] = float.NaN;
        var error = Assert.Throws<ArgumentException>(() => layer.Forward(bad));
        Assert.Contains("column 1", error.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Same(cache, layer.Cache);
        Assert.Equal(state, layer.ExportState());

        // y finite in double but beyond float: γ·x̂ = 3e38·1.34.
        layer.Gamma[2] = 3e38;
        var overflow = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<float>.Build.Dense(4, 3, (i, j) => i)));
        Assert.StartsWith("Column 2 of input cannot be normalized: y = γ·x̂ + β, or x̂ itself, overflows the range of float", overflow.Message, StringComparison.Ordinal);
        Assert.Same(cache, layer.Cache);
        layer.Gamma[2] = 1;

        Assert.Equal("input", Assert.Throws<ArgumentNullException>(() => layer.Forward((Matrix<float>)null!)).ParamName);
        Assert.Equal("output", Assert.Throws<ArgumentNullException>(() => layer.Forward(bad, null!)).ParamName);
        Assert.Equal("input", Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<float>.Build.Dense(4, 2))).ParamName);
        Assert.Equal(state, layer.ExportState());
    }

    [Fact]
    public void Backward_takes_the_precision_of_its_Forward_and_a_mismatch_changes_nothing()
    {
        var layer = new LayerNormLayer(3);
        layer.Forward(Matrix<float>.Build.Dense(4, 3, (i, j) => (i * j) + j));
        Matrix<float> dy = Matrix<float>.Build.Dense(4, 3, (i, j) => i - j);
        layer.Backward(dy);
        double[] gammaGradient = layer.GammaGradient.ToArray();
        var error = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(4, 3, 1.0)));
        Assert.Equal("outputGradient", error.ParamName);
        Assert.Contains("Matrix<float>", error.Message, StringComparison.Ordinal);
        Assert.Equal(gammaGradient, layer.GammaGradient.ToArray());

        layer.Forward(Matrix<double>.Build.Dense(4, 3, (i, j) => (i * j) + j));
        Assert.Throws<ArgumentException>(() => layer.Backward(dy));
        Assert.False(layer.Cache!.SinglePrecision);
        Assert.Throws<InvalidOperationException>(() => layer.Cache!.NormalizedInputSingle.ToArray());
    }

    [Theory]
    [InlineData(1.0, 2, 3)]
    [InlineData(1e-30, 2, 3)]
    [InlineData(1e-30, 2, 136)]
    [InlineData(1e-30, 4, 8)]
    public void An_inference_x_hat_beyond_float_is_refused_and_changes_nothing(double gamma, int features, int rows)
    {
        // Running variance 0 and ε = 1e-5: x̂ = x/√ε is 3e38·316 = 9.5e40 in column 1, finite in double, beyond float.
        // With γ = 1, y overflows too; with γ = 1e-30, y = 9.5e10 is finite but x̂ would be cached as ∞. Columns of three
        // rows go through the short-segment kernels one at a time (the value in their scalar tail), four columns of eight
        // rows four at a time (in the vector body), and columns of 136 rows through the general column kernels.
        var layer = new BatchNormLayer(features) { IsTraining = false };
        layer.RunningVariance[1] = 0;
        layer.Gamma[1] = gamma;
        layer.Forward(Matrix<float>.Build.Dense(rows, features, (i, j) => i));
        string state = layer.ExportState();
        NormalizationCache? cache = layer.Cache;
        Matrix<float> x = Matrix<float>.Build.Dense(rows, features, (i, j) => j == 1 && i == rows - 1 ? 3e38f : i);
        var error = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.StartsWith("Column 1 of input cannot be normalized: y = γ·x̂ + β, or x̂ itself, overflows the range of float", error.Message, StringComparison.Ordinal);
        Assert.Same(cache, layer.Cache);
        Assert.Equal(state, layer.ExportState());

        // The double layer holds both.
        var wide = new BatchNormLayer(features) { IsTraining = false };
        wide.RunningVariance[1] = 0;
        wide.Gamma[1] = gamma;
        Assert.True(double.IsFinite(wide.Forward(Widen(x))[rows - 1, 1]));
    }

    [Theory]
    [InlineData("staged")]
    [InlineData("textbook")]
    public void A_float_dx_beyond_float_is_refused_by_column_for_strategies_that_see_doubles(string strategy)
    {
        // Frozen statistics: dx = γ·dy/√(1 + ε) = 4e38 in column 1 only, finite in the strategy's doubles.
        var layer = new BatchNormLayer(2, backward: ContractTests.Strategy(strategy)) { IsTraining = false };
        layer.Gamma.SetValues([1, 4]);
        layer.Forward(Matrix<float>.Build.Dense(3, 2, (i, j) => i));
        double[] gradient = layer.GammaGradient.ToArray();
        var error = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<float>.Build.Dense(3, 2, 1e38f)));
        Assert.StartsWith($"Column 1 of outputGradient cannot be back-propagated: dx, or an intermediate of the {strategy} strategy, overflows the range of float", error.Message, StringComparison.Ordinal);
        Assert.Equal(gradient, layer.GammaGradient.ToArray());
    }

    [Fact]
    public void Folding_into_float_weights_refuses_a_value_beyond_float_by_name()
    {
        // Running variance 0: the scale is 1/√ε = 316.2, so 1e36 folds to 3.16e38, a float, and 2e36 to 6.3e38, not one.
        var layer = new BatchNormLayer(2) { IsTraining = false };
        layer.RunningVariance.SetValues([1, 0]);
        (Matrix<float> w, _) = layer.FoldInto(Matrix<float>.Build.Dense(1, 2, (i, j) => j == 1 ? 1e36f : 1), Vector<float>.Build.Dense(2));
        Assert.Equal((float)((double)1e36f * (1 / Math.Sqrt(1e-5))), w[0, 1]);
        var weights = Assert.Throws<InvalidOperationException>(() => layer.FoldInto(Matrix<float>.Build.Dense(1, 2, (i, j) => j == 1 ? 2e36f : 1), Vector<float>.Build.Dense(2)));
        Assert.Equal("Folding into float weights: a folded weight of column 1 lies beyond the range of float. Fold into double weights instead.", weights.Message);
        var bias = Assert.Throws<InvalidOperationException>(() => layer.FoldInto(Matrix<float>.Build.Dense(1, 2, 1), Vector<float>.Build.Dense([0, 2e36f])));
        Assert.StartsWith("Folding into float weights: the folded bias[1] = 6.3", bias.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_float_dx_that_overflows_float_is_refused_by_column()
    {
        // Frozen statistics: dx = γ·dy/√(σ² + ε) = 4·1e38 in column 1 only.
        var layer = new BatchNormLayer(2) { IsTraining = false };
        layer.Gamma.SetValues([1, 4]);
        layer.Forward(Matrix<float>.Build.Dense(3, 2, (i, j) => i));
        var error = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<float>.Build.Dense(3, 2, 1e38f)));
        Assert.StartsWith("Column 1 of outputGradient cannot be back-propagated: dx, or an intermediate of the closed strategy, overflows the range of float", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_float_cache_gives_x_hat_widened_to_the_trace_and_to_a_strategy_of_doubles()
    {
        var single = new BatchNormLayer(3);
        var wide = new BatchNormLayer(3);
        (Matrix<double> x0, Matrix<double> dy0) = ContractTests.Batch(8, 3, seed: 9);
        Matrix<float> x = Round(x0);
        single.Forward(x);
        Matrix<double> xHat = single.Cache!.NormalizedInputToMatrix();
        Assert.Equal(single.Cache.NormalizedInputSingle.ToArray().Select(v => (double)v), xHat.ToColumnMajorArray());

        // The staged graph and the closed form are equal for an x̂ of mean 0 and mean square 1; rounded to float, x̂ is
        // that to within u, so they agree to within a few u·‖dy‖ (here 1.4e-9), not to double's last digits.
        var trace = StagedBackwardTrace.Of(single.Cache, single.Gamma, dy0);
        var dx = Matrix<double>.Build.Dense(8, 3);
        BackwardStrategy.ClosedForm.Backward(single.Cache, single.Gamma, dy0, dx, Vector<double>.Build.Dense(3), Vector<double>.Build.Dense(3));
        double dyMax = dy0.Enumerate().Max(Math.Abs), istd = single.Cache.InverseStandardDeviation.ToArray().Max();
        Assert.True((trace.InputGradient - dx).Enumerate().Max(Math.Abs) < 8 * U * dyMax * istd);
        wide.Forward(Widen(x));
        Assert.True((wide.Backward(dy0) - dx).Enumerate().Max(Math.Abs) < 8 * U * dyMax * istd);
    }

    [Theory]
    [InlineData("batch norm")]
    [InlineData("layer norm")]
    [InlineData("ghost batches")]
    public void A_float_Backward_runs_the_layer_s_own_strategy_on_x_hat_widened(string kind)
    {
        var counting = new CountingStrategy();
        INormalizationLayer layer = ContractTests.Create(kind, counting), staged = ContractTests.Create(kind, BackwardStrategy.Staged);
        (Matrix<double> x0, Matrix<double> dy0) = ContractTests.Batch(8, 6, seed: 2);
        layer.Forward(Round(x0));
        staged.Forward(Round(x0));
        Matrix<float> dx = layer.Backward(Round(dy0));
        Assert.True(counting.Segments > 0);
        Assert.Equal(staged.Backward(Round(dy0)).ToColumnMajorArray(), dx.ToColumnMajorArray());
    }

    [Fact]
    public void A_strategy_of_doubles_gets_the_float_cache_s_statistics_and_x_hat_at_every_batch_size()
    {
        // The widened copy of the cache is kept from step to step; a new batch size must not reuse its old shape.
        var counting = new CountingStrategy();
        var single = new BatchNormLayer(3, backward: counting);
        var wide = new BatchNormLayer(3, backward: BackwardStrategy.Staged);
        foreach (int rows in new[] { 8, 6, 8 })
        {
            counting.Variances.Clear();
            counting.InverseStandardDeviations.Clear();
            (Matrix<double> x0, Matrix<double> dy0) = ContractTests.Batch(rows, 3, seed: rows);
            single.Forward(Round(x0));
            Matrix<float> dx = single.Backward(Round(dy0));
            Assert.Equal(single.Cache!.Variance.ToArray(), counting.Variances);
            Assert.Equal(single.Cache.InverseStandardDeviation.ToArray(), counting.InverseStandardDeviations);
            wide.Forward(Widen(Round(x0)));
            Matrix<double> expected = wide.Backward(Widen(Round(dy0)));
            double istd = single.Cache.InverseStandardDeviation.ToArray().Max(), dyMax = dy0.Enumerate().Max(Math.Abs);
            Assert.True((expected - Widen(dx)).Enumerate().Max(Math.Abs) < 8 * U * dyMax * istd, $"{rows} rows");
        }
    }

    /// <summary>Per channel, the largest of its segments' <see cref="SinglePrecisionKernelTests.StatisticsBounds"/> (segment k is block k mod blocks of channel k / blocks).</summary>
    private static (double Mean, double Variance)[] ChannelBounds(NormalizationCache cache)
        => [.. Enumerable.Range(0, cache.SegmentCount / cache.RowBlocks).Select(j => Enumerable.Range(j * cache.RowBlocks, cache.RowBlocks)
            .Select(k => SinglePrecisionKernelTests.StatisticsBounds(cache.SegmentValues, cache.Mean[k], cache.Variance[k]))
            .Aggregate((a, b) => (Math.Max(a.Mean, b.Mean), Math.Max(a.Variance, b.Variance))))];

    [Fact]
    public void Segments_gathered_from_channels_of_several_positions_keep_float_statistics_one_pass()
    {
        // Ghost batches of 16 rows over channels of 3 positions: each segment is gathered from three columns, widened to
        // double. Each segment's first value lies some 3σ to 4σ from its mean: double's rule (σ/4) passes twice, float's
        // (16σ) once, and the layer must judge by float's rule, as it does for a contiguous segment.
        var layer = BatchNormLayer.Spatial(channels: 2, spatialSize: 3);
        layer.VirtualBatchSize = 16;
        var random = new Random(5);
        Matrix<float> x = Matrix<float>.Build.Dense(32, 6, (i, j) => (float)((i % 16 == 0 ? 2.5 : 0) + random.NextDouble()));
        layer.Forward(x);
        NormalizationCache cache = layer.Cache!;
        Assert.False(cache.Layout.Contiguous);
        double[] values = new double[cache.SegmentValues];
        for (int k = 0; k < cache.SegmentCount; k++)
        {
            cache.Layout.Gather<float>(x.AsColumnMajorArray(), k, values);
            ColumnKernels.Moments<double, float>(values, out double center, out double correction, out double variance);
            ColumnKernels.Moments<double>(values, out double centerD, out double correctionD, out double varianceD);
            Assert.Equal(values[0], center);
            Assert.NotEqual(values[0], centerD);
            Assert.Equal((center + correction, variance), (cache.Mean[k], cache.Variance[k]));
        }
    }

    [Fact]
    public void Segments_gathered_from_channels_of_several_positions_catch_float_overflow_too()
    {
        // Ghost batches of 2 rows over channels of 2 positions: each segment is gathered from two columns. γ = 3e38 makes
        // y = γ·x̂ overflow float (x̂ = ±1.7) in channel 1 only; then a γ scaled to the largest dx overflows channel 1's dx.
        var layer = BatchNormLayer.Spatial(channels: 2, spatialSize: 2);
        layer.VirtualBatchSize = 2;
        Matrix<float> x = Matrix<float>.Build.Dense(4, 4, (i, j) => (i * (j + 1)) + (0.5f * j));
        layer.Forward(x);
        string state = layer.ExportState();
        NormalizationCache? cache = layer.Cache;
        layer.Gamma[1] = 3e38;
        var forward = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.StartsWith("Channel 1 (columns 2–3) of input cannot be normalized", forward.Message, StringComparison.Ordinal);
        Assert.Same(cache, layer.Cache);
        layer.Gamma[1] = 1;
        Assert.Equal(state, layer.ExportState());

        // dx is proportional to γ: from a double twin at γ = 1, the γ that takes channel 1's largest dx to 1.5 times the
        // largest float, which a double holds.
        Matrix<float> dy = Matrix<float>.Build.Dense(4, 4, (i, j) => (float)Math.Sin((3 * i) + j));
        var twin = BatchNormLayer.Spatial(channels: 2, spatialSize: 2);
        twin.VirtualBatchSize = 2;
        twin.Forward(Widen(x));
        double largest = twin.Backward(Widen(dy)).SubMatrix(0, 4, 2, 2).Enumerate().Max(Math.Abs);
        layer.Forward(x);
        layer.Gamma[1] = 1.5 * float.MaxValue / largest;
        var backward = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
        Assert.Contains("column 2", backward.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void Reading_x_hat_in_the_other_precision_is_refused_by_name()
    {
        var layer = new BatchNormLayer(2);
        layer.Forward(Matrix<float>.Build.Dense(3, 2, (i, j) => i + j));
        var single = Assert.Throws<InvalidOperationException>(() => layer.Cache!.NormalizedInput.ToArray());
        Assert.Equal("This cache is of a single-precision Forward, so x̂ is not held in double: read NormalizedInputSingle, or NormalizedInputToMatrix().", single.Message);
        Assert.Throws<InvalidOperationException>(() => layer.Cache!.NormalizedColumn(0).ToArray());
        layer.Forward(Matrix<double>.Build.Dense(3, 2, (i, j) => i + j));
        var wide = Assert.Throws<InvalidOperationException>(() => layer.Cache!.NormalizedInputSingle.ToArray());
        Assert.Equal("This cache is of a double-precision Forward, so x̂ is not held in float: read NormalizedInput, or NormalizedInputToMatrix().", wide.Message);
    }

    [Fact]
    public void Folding_into_float_weights_is_the_double_fold_rounded_once()
    {
        var layer = new BatchNormLayer(3) { IsTraining = false };
        layer.RunningMean.SetValues([1, -2, 0.5]);
        layer.RunningVariance.SetValues([4, 0.25, 9]);
        layer.Gamma.SetValues([1.5, 2, -1]);
        Matrix<float> weights = Matrix<float>.Build.Dense(2, 3, (i, j) => (i + 1) * (j - 0.3f));
        Vector<float> bias = Vector<float>.Build.Dense([0.1f, -0.2f, 0.3f]);
        (Matrix<float> w, Vector<float> b) = layer.FoldInto(weights, bias);
        (Matrix<double> wd, Vector<double> bd) = layer.FoldInto(weights.Map(v => (double)v), bias.Map(v => (double)v));
        Assert.Equal(wd.Map(v => (float)v).ToColumnMajorArray(), w.ToColumnMajorArray());
        Assert.Equal(bd.Map(v => (float)v).ToArray(), b.ToArray());
    }

    [Fact]
    public void Safetensors_in_single_precision_are_F32_tensors_of_the_values_rounded_once()
    {
        var layer = new BatchNormLayer(2);
        layer.Gamma.SetValues([0.1, 3]);
        layer.RunningVariance.SetValues([1.0 / 3, 2]);
        byte[] single = PyTorchState.ExportSafetensors(layer, singlePrecision: true);
        byte[] wide = PyTorchState.ExportSafetensors(layer);
        Assert.True(single.Length < wide.Length);
        Assert.Contains("\"F32\"", System.Text.Encoding.UTF8.GetString(single), StringComparison.Ordinal);

        var back = new BatchNormLayer(2);
        PyTorchState.ImportSafetensors(single, back);
        Assert.Equal(new[] { (double)0.1f, 3 }, back.Gamma.ToArray());
        Assert.Equal(new[] { (double)(float)(1.0 / 3), 2 }, back.RunningVariance.ToArray());

        layer.RunningVariance[1] = 1e39;
        var error = Assert.Throws<InvalidOperationException>(() => PyTorchState.ExportSafetensors(layer, singlePrecision: true));
        Assert.Contains("running_var", error.Message, StringComparison.Ordinal);
        Assert.Contains("index 1", error.Message, StringComparison.Ordinal);
    }

    private static double ScaleBound(INormalizationLayer layer)
    {
        double gamma = layer.Parameters.FirstOrDefault(p => p.Name == "gamma")?.Value.Enumerate().Max(Math.Abs) ?? 1;
        return layer is BatchRenormLayer renorm ? gamma * renorm.RMax : gamma;
    }

    /// <summary>Each float equals the expected one or a neighbour of it.</summary>
    private static void AssertWithinOneUnit(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(
                actual[i] == expected[i] || actual[i] == MathF.BitIncrement(expected[i]) || actual[i] == MathF.BitDecrement(expected[i]),
                $"[{i}] = {actual[i]:R}, expected {expected[i]:R} or a neighbour");
        }
    }

    private static void SetParameters(INormalizationLayer layer, int seed)
    {
        var random = new Random(seed);
        foreach (LayerParameter p in layer.Parameters)
        {
            for (int i = 0; i < p.Value.Count; i++)
            {
                p.Value[i] = p.Name == "gamma" ? 0.5 + random.NextDouble() : random.NextDouble() - 0.5;
            }
        }
    }

    private static Matrix<float> Round(Matrix<double> m) => m.Map(v => (float)v);

    private static Matrix<double> Widen(Matrix<float> m) => m.Map(v => (double)v);

    /// <summary>The staged strategy through its public steps, counting the segments it is given.</summary>
    private sealed class CountingStrategy : BackwardStrategy
    {
        public int Segments { get; private set; }

        public System.Collections.Generic.List<double> Variances { get; } = [];

        public System.Collections.Generic.List<double> InverseStandardDeviations { get; } = [];

        public override string Name => "counting";

        public override int SumCount => BackwardStrategy.Staged.SumCount;

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
        {
            Segments++;
            Variances.Add(segment.Variance);
            InverseStandardDeviations.Add(segment.InverseStandardDeviation);
            BackwardStrategy.Staged.SegmentSums(segment, sums, inputGradient);
        }

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
            => BackwardStrategy.Staged.SegmentInputGradient(segment, sums, inputGradient);
    }

    /// <summary>A layer whose float Backward is off by 10%: the float check must see it, the double check not.</summary>
    private sealed class WrongSingleBackward() : INormalizationLayer
    {
        private readonly BatchNormLayer _inner = new(6);

        public int Features => 6;

        public double Epsilon => _inner.Epsilon;

        public bool IsTraining { get => _inner.IsTraining; set => _inner.IsTraining = value; }

        public BackwardStrategy BackwardStrategy { get => _inner.BackwardStrategy; set => _inner.BackwardStrategy = value; }

        public System.Collections.Generic.IReadOnlyList<LayerParameter> Parameters => [];

        public NormalizationCache? Cache => _inner.Cache;

        public Matrix<double> Forward(Matrix<double> input) => _inner.Forward(input);

        public void Forward(Matrix<double> input, Matrix<double> output) => _inner.Forward(input, output);

        public Matrix<double> Backward(Matrix<double> outputGradient) => _inner.Backward(outputGradient);

        public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient) => _inner.Backward(outputGradient, inputGradient);

        public Matrix<float> Forward(Matrix<float> input) => _inner.Forward(input);

        public Matrix<float> Backward(Matrix<float> outputGradient) => _inner.Backward(outputGradient) * 1.1f;

        public void ResetParameters() => _inner.ResetParameters();

        public string ExportState() => _inner.ExportState();

        public void ImportState(string json) => _inner.ImportState(json);
    }
}
