using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Double;

namespace BatchNorm.Tests;

/// <summary>
/// Group and layer norm against the formulas of Wu and He written out here one group at a time: every overload, dense and
/// not, in both modes and with both strategies, group sizes 1, 2 and more; and every constructor and saved-state rule.
/// </summary>
public class GroupNormHandComputedTests
{
    private const double Epsilon = 0.5;

    public static TheoryData<string, int> StrategiesAndGroups => new()
    {
        { "closed", 1 }, { "closed", 2 }, { "closed", 3 }, { "closed", 6 },
        { "staged", 1 }, { "staged", 2 }, { "staged", 3 }, { "staged", 6 },
    };

    private static readonly double[] Gamma = [1.5, -0.5, 2, 0.75, -1.25, 1];
    private static readonly double[] Beta = [0.25, -1, 0.5, 0, 2, -0.75];

    private static Matrix<double> X => Matrix<double>.Build.DenseOfArray(new[,]
    {
        { 1.0, 4, -2, 3, 0.5, 7 },
        { -3, 2, 6, -1, 2.5, 1 },
        { 10, 12, 8, 9, 11, 13 },
    });

    private static Matrix<double> Dy => Matrix<double>.Build.DenseOfArray(new[,]
    {
        { 0.5, -1, 0.25, 2, -0.75, 1 },
        { 1, 0.75, -0.5, -0.25, 0.125, -2 },
        { -1.5, 0.5, 1, 0.125, 0.25, -0.5 },
    });

    [Theory]
    [MemberData(nameof(StrategiesAndGroups))]
    public void Forward_and_backward_match_the_formulas_through_every_overload_in_both_modes(string strategy, int groups)
    {
        Reference expected = Reference.Of(X, Dy, groups);
        foreach (bool training in new[] { true, false })
        {
            foreach (Func<int, Matrix<double>> destination in new Func<int, Matrix<double>>[] { _ => null!, n => Matrix<double>.Build.Dense(n, 6, double.NaN), n => SparseMatrix.Create(n, 6, 0.0) })
            {
                GroupNormLayer layer = Layer(groups, ContractTests.Strategy(strategy));
                layer.IsTraining = training;
                Matrix<double>? y = destination(3), dx = destination(3);
                if (y is null)
                {
                    y = layer.Forward(X);
                    dx = layer.Backward(Dy);
                }
                else
                {
                    layer.Forward(X, y);
                    layer.Backward(Dy, dx!);
                }

                AssertClose(expected.Y, y, 1e-14);
                AssertClose(expected.Dx, dx!, 1e-13);
                AssertClose(expected.GammaGradient.ToColumnMatrix(), layer.GammaGradient.ToColumnMatrix(), 1e-14);
                AssertClose(expected.BetaGradient.ToColumnMatrix(), layer.BetaGradient.ToColumnMatrix(), 1e-15);
                Assert.Equal(3 * groups, layer.Cache!.SegmentCount);
                Assert.Equal(training, layer.Cache.IsTraining);
                Assert.False(layer.Cache.FrozenStatistics);
            }
        }
    }

    [Theory]
    [InlineData("closed")]
    [InlineData("staged")]
    public void Layer_norm_is_one_group_over_every_feature(string strategy)
    {
        Reference expected = Reference.Of(X, Dy, groups: 1);
        foreach (bool destination in new[] { false, true })
        {
            var layer = new LayerNormLayer(6, Epsilon, ContractTests.Strategy(strategy));
            Assert.Same(ContractTests.Strategy(strategy), layer.BackwardStrategy);
            layer.Gamma.SetValues(Gamma);
            layer.Beta.SetValues(Beta);
            Matrix<double> y = SparseMatrix.Create(3, 6, 0.0), dx = SparseMatrix.Create(3, 6, 0.0);
            if (destination)
            {
                layer.Forward(X, y);
                layer.Backward(Dy, dx);
            }
            else
            {
                y = layer.Forward(X);
                dx = layer.Backward(Dy);
            }

            AssertClose(expected.Y, y, 1e-14);
            AssertClose(expected.Dx, dx, 1e-13);
            AssertClose(expected.GammaGradient.ToColumnMatrix(), layer.GammaGradient.ToColumnMatrix(), 1e-14);
            Assert.Equal(3, layer.Cache!.SegmentCount);
            Assert.Equal(1, layer.Cache.ColumnBlocks);
        }
    }

    [Fact]
    public void The_cache_holds_each_group_of_each_row_at_group_times_n_plus_row()
    {
        GroupNormLayer layer = Layer(2, BackwardStrategy.ClosedForm);
        layer.Forward(X);
        NormalizationCache cache = layer.Cache!;
        Assert.Equal(3, cache.RowBlocks);
        Assert.Equal(2, cache.ColumnBlocks);
        Assert.Equal(1, cache.SegmentRows);
        Assert.Equal(3, cache.SegmentColumns);

        // Row 1, group 1 holds −1, 2.5, 1: μ = 5/6, at index 1·3 + 1.
        Assert.Equal(4, cache.SegmentOf(1, 4));
        Assert.Equal(2.5 / 3, cache.Mean[4], 1e-15);
        double mean = 2.5 / 3, variance = (Math.Pow(-1 - mean, 2) + Math.Pow(2.5 - mean, 2) + Math.Pow(1 - mean, 2)) / 3;
        Assert.Equal(variance, cache.Variance[4], 1e-14);
        Assert.Equal(1 / Math.Sqrt(variance + Epsilon), cache.InverseStandardDeviation[4], 1e-15);
    }

    [Theory]
    [InlineData("closed")]
    [InlineData("staged")]
    public void Every_constructor_keeps_the_strategy_it_is_given(string strategy)
    {
        BackwardStrategy s = ContractTests.Strategy(strategy);
        Assert.Same(s, new GroupNormLayer(6, 2, backward: s).BackwardStrategy);
        Assert.Same(s, new LayerNormLayer(6, backward: s).BackwardStrategy);
        Assert.Same(BackwardStrategy.ClosedForm, new GroupNormLayer(6, 2).BackwardStrategy);
        Assert.Same(BackwardStrategy.ClosedForm, new LayerNormLayer(6).BackwardStrategy);
        Assert.Equal(0.25, new GroupNormLayer(6, 2, 0.25).Epsilon);
        Assert.Equal(0.25, new LayerNormLayer(6, 0.25).Epsilon);
        Assert.Equal(1e-5, new GroupNormLayer(6, 2).Epsilon);
    }

    [Fact]
    public void The_group_count_is_taken_from_one_to_the_feature_count_if_it_divides_it()
    {
        Assert.Equal(1, new GroupNormLayer(6, 1).Groups);
        Assert.Equal(6, new GroupNormLayer(6, 6).Groups);
        Assert.Equal(3, new GroupNormLayer(6, 3).Groups);
        foreach (int groups in new[] { 0, -1 })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => new GroupNormLayer(6, groups));
            Assert.Equal("groups", e.ParamName);
            Assert.StartsWith("The number of groups must be at least 1.", e.Message, StringComparison.Ordinal);
        }

        foreach ((int features, int groups) in new[] { (10, 4), (6, 12), (7, 2) })
        {
            var e = Assert.Throws<ArgumentException>(() => new GroupNormLayer(features, groups));
            Assert.Equal("groups", e.ParamName);
            Assert.StartsWith($"{features} features cannot be split into {groups} groups of equal size: the number of groups must divide the number of features.", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal("features", Assert.Throws<ArgumentOutOfRangeException>(() => new GroupNormLayer(0, 1)).ParamName);
        Assert.Equal("epsilon", Assert.Throws<ArgumentOutOfRangeException>(() => new GroupNormLayer(6, 2, 0)).ParamName);
    }

    [Fact]
    public void ToString_and_saved_state_name_the_groups()
    {
        Assert.Equal("GroupNormLayer(features: 6, groups: 3, training, strategy: closed)", new GroupNormLayer(6, 3).ToString());
        Assert.Equal("LayerNormLayer(features: 6, inference, strategy: staged)", new LayerNormLayer(6, backward: BackwardStrategy.Staged) { IsTraining = false }.ToString());
        GroupNormLayer source = Layer(3, BackwardStrategy.ClosedForm);
        string json = source.ExportState();
        Assert.Contains("\"groups\": 3", json, StringComparison.Ordinal);
        Assert.Contains("\"format\": \"BatchNorm.GroupNormLayer\"", json, StringComparison.Ordinal);

        GroupNormLayer target = new(6, 3);
        target.ImportState(json);
        Assert.Equal(Gamma, target.Gamma.ToArray());
        Assert.Equal(Epsilon, target.Epsilon);
        GroupNormLayer created = GroupNormLayer.FromState(json);
        Assert.Equal(3, created.Groups);
        Assert.Equal(Beta, created.Beta.ToArray());

        var e = Assert.Throws<ArgumentException>(() => new GroupNormLayer(6, 2).ImportState(json));
        Assert.Equal("json", e.ParamName);
        Assert.StartsWith("The saved state is for 3 groups, but this layer has 2.", e.Message, StringComparison.Ordinal);
        var features = Assert.Throws<ArgumentException>(() => new GroupNormLayer(9, 3).ImportState(json));
        Assert.StartsWith("The saved state is for 6 features, but this layer has 9.", features.Message, StringComparison.Ordinal);
        Assert.Throws<FormatException>(() => new GroupNormLayer(6, 3).ImportState(json.Replace("\"groups\": 3", "\"groups\": 0", StringComparison.Ordinal)));

        // Where both differ, the feature count is named first.
        Assert.StartsWith("The saved state is for 6 features, but this layer has 4.", Assert.Throws<ArgumentException>(() => new GroupNormLayer(4, 2).ImportState(json)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Two_features_per_group_are_as_exact_as_two_rows_of_batch_norm()
    {
        // With two values x̂ = ±√(1 − δ), δ = ε/(σ² + ε), and the general closed form would cancel 1 − x̂² down to δ. Here
        // δ is about 4e-6, so that costs five digits; the two-value form keeps them, within a few units in the last place
        // of the exact result (γ = 1, so the gradient at x̂ is dy itself).
        var layer = new GroupNormLayer(4, 2, epsilon: 1e-5);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 3.25, -1.5, 1e8 + 0.5, 1e8 - 0.25 }, { 0.1, 0.7, -2, 2 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.75, -0.5, 0.125, 0.375 }, { -1, 0.25, 0.5, -0.875 } });
        layer.Forward(x);
        Matrix<double> dx = layer.Backward(dy);
        for (int i = 0; i < 2; i++)
        {
            for (int g = 0; g < 2; g++)
            {
                var exact = new ExactColumn([x[i, 2 * g], x[i, (2 * g) + 1]], 1, 0, 1e-5, [dy[i, 2 * g], dy[i, (2 * g) + 1]]);
                Ulps.AssertClose($"dx of row {i}, group {g}", exact.Dx, [dx[i, 2 * g], dx[i, (2 * g) + 1]]);
                Ulps.AssertClose($"x̂ of row {i}, group {g}", exact.XHat, [layer.Cache!.NormalizedColumn(2 * g)[i], layer.Cache.NormalizedColumn((2 * g) + 1)[i]]);
            }
        }
    }

    [Fact]
    public void A_row_whose_variance_overflows_is_rejected_naming_its_row_and_group()
    {
        // Row 1, group 1: ±1e200 around a finite mean of 0, so only the variance, 2/3·1e400, is not finite.
        GroupNormLayer layer = Layer(2, BackwardStrategy.ClosedForm);
        Matrix<double> x = X.Clone();
        x[1, 3] = 1e200;
        x[1, 4] = -1e200;
        x[1, 5] = 0;
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith("Row 1 of input cannot be normalized: group 1 holds NaN or infinity", e.Message, StringComparison.Ordinal);
        Assert.Null(layer.Cache);

        // A sum that overflows is named the same way.
        x = X.Clone();
        x[2, 0] = x[2, 2] = double.MaxValue;
        x[2, 1] = -double.MaxValue;
        Assert.StartsWith("Row 2 of input cannot be normalized: group 0", Assert.Throws<ArgumentException>(() => layer.Forward(x)).Message, StringComparison.Ordinal);
    }

    private static GroupNormLayer Layer(int groups, BackwardStrategy strategy)
    {
        var layer = new GroupNormLayer(6, groups, Epsilon, strategy);
        layer.Gamma.SetValues(Gamma);
        layer.Beta.SetValues(Beta);
        return layer;
    }

    private static void AssertClose(Matrix<double> expected, Matrix<double> actual, double tolerance)
    {
        Assert.Equal(expected.RowCount, actual.RowCount);
        Assert.Equal(expected.ColumnCount, actual.ColumnCount);
        for (int i = 0; i < expected.RowCount; i++)
        {
            for (int j = 0; j < expected.ColumnCount; j++)
            {
                Assert.True(Math.Abs(expected[i, j] - actual[i, j]) <= tolerance * (1 + Math.Abs(expected[i, j])), $"[{i}, {j}]: expected {expected[i, j]:R}, got {actual[i, j]:R}");
            }
        }
    }

    /// <summary>The formulas, one group of one row at a time, in plain loops.</summary>
    private sealed record Reference(Matrix<double> Y, Matrix<double> Dx, Vector<double> GammaGradient, Vector<double> BetaGradient)
    {
        public static Reference Of(Matrix<double> x, Matrix<double> dy, int groups)
        {
            int n = x.RowCount, d = x.ColumnCount, size = d / groups;
            Matrix<double> y = Matrix<double>.Build.Dense(n, d), dx = Matrix<double>.Build.Dense(n, d);
            Vector<double> dGamma = Vector<double>.Build.Dense(d), dBeta = Vector<double>.Build.Dense(d);
            for (int i = 0; i < n; i++)
            {
                for (int g = 0; g < groups; g++)
                {
                    int[] js = Enumerable.Range(g * size, size).ToArray();
                    double mean = js.Average(j => x[i, j]);
                    double variance = js.Average(j => (x[i, j] - mean) * (x[i, j] - mean));
                    double inverseStd = 1 / Math.Sqrt(variance + Epsilon);
                    double[] xHat = js.Select(j => (x[i, j] - mean) * inverseStd).ToArray();
                    double[] gradient = js.Select(j => Gamma[j] * dy[i, j]).ToArray();          // dx̂ = γ·dy
                    double meanG = gradient.Average(), meanGXHat = gradient.Zip(xHat, (a, b) => a * b).Average();
                    for (int k = 0; k < size; k++)
                    {
                        int j = js[k];
                        y[i, j] = (Gamma[j] * xHat[k]) + Beta[j];
                        dx[i, j] = inverseStd * (gradient[k] - meanG - (xHat[k] * meanGXHat));
                        dGamma[j] += dy[i, j] * xHat[k];
                        dBeta[j] += dy[i, j];
                    }
                }
            }

            return new Reference(y, dx, dGamma, dBeta);
        }
    }
}
