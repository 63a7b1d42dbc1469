using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The accuracy list: huge offsets, tiny spreads, constant columns and two-row batches, each checked
/// against an exact fixed-point computation rounded once to double (<see cref="ExactColumn"/>).
/// </summary>
public class HardCaseTests
{
    public static TheoryData<string> Strategies => new() { "staged", "closed" };

    private static BackwardStrategy Strategy(string name) => name == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Mean_1e8_with_unit_spread(string strategy)
    {
        // x = 1e8 + z with z of spread about 1 on a grid of 2^-20, exactly representable.
        var random = new Random(11);
        double[] column = Enumerable.Range(0, 64).Select(_ => 1e8 + (Math.Round(Normal(random) * (1 << 20)) / (1 << 20))).ToArray();
        CheckAgainstExact(strategy, [column], 1e-5, random);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Mean_1e8_with_unit_spread_in_many_features_and_a_large_batch(string strategy)
    {
        var random = new Random(12);
        double[][] columns = Enumerable.Range(0, 3)
            .Select(j => Enumerable.Range(0, 1000).Select(_ => (1e8 * (j + 1)) + (Math.Round(Normal(random) * (1 << 20)) / (1 << 20))).ToArray())
            .ToArray();
        CheckAgainstExact(strategy, columns, 1e-5, random);
    }

    [Theory]
    [InlineData("staged", 1e-5)]
    [InlineData("closed", 1e-5)]
    [InlineData("staged", 1e-30)]
    [InlineData("closed", 1e-30)]
    public void Tiny_spread(string strategy, double epsilon)
    {
        // x = 1 + k·2^-40: a spread near 1e-11 around 1.
        var random = new Random(13);
        double[] column = Enumerable.Range(0, 32).Select(_ => 1 + (random.Next(-1000, 1000) * Math.Pow(2, -40))).ToArray();
        CheckAgainstExact(strategy, [column], epsilon, random);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Two_rows(string strategy)
    {
        // With two rows dx is proportional to ε/(σ²+ε), here down to 2e-6 of the terms it is made of.
        // The closed form evaluates it without cancellation; the staged strategy follows the graph
        // literally and cancels those digits, so its dx is checked by the gradient properties instead.
        var random = new Random(14);
        CheckAgainstExact(strategy, [[3.25, -1.5], [1e8 + 0.5, 1e8 - 0.25], [1e-3, 2e-3], [5, 5]], 1e-5, random, checkDx: strategy == "closed");
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Constant_column_gives_zero_normalized_input_and_finite_gradients(string strategy)
    {
        var layer = new BatchNormLayer(2, backward: Strategy(strategy));
        layer.Gamma[0] = 1.5;
        layer.Beta[0] = 0.25;
        var x = Matrix<double>.Build.DenseOfColumnArrays(new[] { 7.0, 7, 7, 7 }, new[] { 1.0, 2, 3, 5 });
        Matrix<double> y = layer.Forward(x);
        Assert.All(layer.Cache!.NormalizedColumn(0).ToArray(), v => Assert.Equal(0.0, v));
        Assert.All(y.Column(0), v => Assert.Equal(0.25, v));
        Assert.Equal(7.0, layer.Cache.Mean[0]);
        Assert.Equal(0.0, layer.Cache.Variance[0]);

        var dy = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, -2, 0.5, 4 }, new[] { 1.0, 0, 0, 0 });
        Matrix<double> dx = layer.Backward(dy);
        // x̂ = 0, so dx = γ/√ε·(dy − mean(dy)).
        double scale = 1.5 / Math.Sqrt(1e-5);
        double meanDy = 3.5 / 4;
        for (int i = 0; i < 4; i++)
        {
            Assert.True(double.IsFinite(dx[i, 0]));
            Assert.Equal(scale * (dy[i, 0] - meanDy), dx[i, 0], 1e-12);
        }

        Assert.Equal(0.0, layer.GammaGradient[0]);
        Assert.Equal(3.5, layer.BetaGradient[0]);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Constant_column_at_a_huge_offset(string strategy)
    {
        var random = new Random(15);
        CheckAgainstExact(strategy, [Enumerable.Repeat(123456789.125, 9).ToArray()], 1e-5, random);
    }

    private static void CheckAgainstExact(string strategy, double[][] columns, double epsilon, Random random, bool checkDx = true)
    {
        int n = columns[0].Length, d = columns.Length;
        var layer = new BatchNormLayer(d, epsilon, momentum: 1, backward: Strategy(strategy));
        double[] gamma = Enumerable.Range(0, d).Select(_ => Math.Round(random.NextDouble() * 4096 - 2048) / 1024).ToArray();
        double[] beta = Enumerable.Range(0, d).Select(_ => Math.Round(random.NextDouble() * 4096 - 2048) / 1024).ToArray();
        double[][] dy = Enumerable.Range(0, d).Select(_ => Enumerable.Range(0, n).Select(_ => Math.Round(random.NextDouble() * 2048 - 1024) / 1024).ToArray()).ToArray();
        Vector<double>.Build.DenseOfArray(gamma).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray(beta).CopyTo(layer.Beta);

        Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(columns));
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfColumnArrays(dy));
        NormalizationCache cache = layer.Cache!;
        for (int j = 0; j < d; j++)
        {
            var exact = new ExactColumn(columns[j], gamma[j], beta[j], epsilon, dy[j]);
            Ulps.AssertClose("μ", [exact.Mean], [cache.Mean[j]]);
            Ulps.AssertClose("σ²", [exact.Variance], [cache.Variance[j]]);
            Ulps.AssertClose("running variance (momentum 1)", [n > 1 ? exact.UnbiasedVariance : 0], [layer.RunningVariance[j]]);
            Ulps.AssertClose("1/√(σ²+ε)", [exact.InverseStd], [cache.InverseStandardDeviation[j]]);
            Ulps.AssertClose("x̂", exact.XHat, cache.NormalizedColumn(j).ToArray());
            Ulps.AssertClose("y", exact.Y, y.Column(j).ToArray());
            if (checkDx)
            {
                Ulps.AssertClose("dx", exact.Dx, dx.Column(j).ToArray());
            }

            // dγ = Σ dy·x̂ is a sum whose terms may cancel: its error is measured against Σ|dy·x̂|.
            Ulps.AssertClose("dγ", [exact.GammaGradient], [layer.GammaGradient[j]], unitOf: exact.SumAbsDyXHat);
        }
    }

    private static double Normal(Random random)
        => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
}
