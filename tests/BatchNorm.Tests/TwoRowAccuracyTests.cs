using System;
using System.Linq;
using FsCheck;
using FsCheck.Fluent;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The accuracy the README states for two-row batches, where batch norm is hardest to get right (x̂ = ±√(1 − δ), and
/// dx ∝ δ = ε/(σ² + ε) may be far below the size of its terms), checked on 100,000 generated columns against exact
/// arithmetic: means from 1e-6 to 1e10, spreads from 1e-14 of the mean to 1, ε from 1e-15 to 1e5.
/// </summary>
public class TwoRowAccuracyTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const int Columns = 100_000;

    /// <summary>Worst errors in units in the last place: μ of max |x| (a sum that can cancel); dγ of Σ|dy·x̂| (likewise); the others of their largest value.</summary>
    private static readonly (string Output, double Bound)[] Bounds =
    [
        ("μ", 1), ("σ²", 4), ("1/√(σ²+ε)", 4), ("x̂", 4), ("y", 4), ("dx", 5), ("dγ", 4),
    ];

    [Fact]
    public void The_closed_form_meets_the_stated_bounds_on_100000_generated_two_row_columns()
    {
        Gen<double> unit = Gen.Choose(0, int.MaxValue - 1).Select(k => k / (double)int.MaxValue);
        Gen<double[]> columns =
            from sign in Gen.Elements(-1.0, 1.0)
            from logMean in unit
            from logRelativeSpread in unit
            from logAbsoluteSpread in unit
            from a in unit
            from b in unit
            from epsilonChoice in Gen.Choose(0, 2)
            from logEpsilon in unit
            from gamma in unit
            from dy1 in unit
            from dy2 in unit
            select new[]
            {
                sign * Math.Pow(10, (logMean * 16) - 6),
                Math.Pow(10, -logRelativeSpread * 14),
                Math.Pow(10, (logAbsoluteSpread * 6) - 6),
                a, b,
                epsilonChoice == 0 ? 1e-5 : Math.Pow(10, (logEpsilon * 20) - 15),
                (gamma * 4) - 2, (dy1 * 2) - 1, (dy2 * 2) - 1,
            };
        double[] worst = new double[Bounds.Length];
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(Columns), Prop.ForAll(Arb.From(columns), c =>
        {
            double mean = c[0], spread = (Math.Abs(mean) * c[1]) + c[2];
            double[] x = [mean + (spread * (c[3] - 0.5)), mean + (spread * (c[4] - 0.5))], dy = [c[7], c[8]];
            double epsilon = c[5], gamma = c[6];
            var layer = new BatchNormLayer(1, epsilon, momentum: 1);
            layer.Gamma[0] = gamma;
            Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(x));
            Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfColumnArrays(dy));
            var exact = new ExactColumn(x, gamma, 0, epsilon, dy);
            NormalizationCache cache = layer.Cache!;
            double[] errors =
            [
                Error([exact.Mean], [cache.Mean[0]], x.Max(Math.Abs)),
                Error([exact.Variance], [cache.Variance[0]]),
                Error([exact.InverseStd], [cache.InverseStandardDeviation[0]]),
                Error(exact.XHat, cache.NormalizedColumn(0).ToArray()),
                Error(exact.Y, y.Column(0).ToArray()),
                Error(exact.Dx, dx.Column(0).ToArray()),
                Error([exact.GammaGradient], [layer.GammaGradient[0]], exact.SumAbsDyXHat),
            ];
            for (int k = 0; k < errors.Length; k++)
            {
                worst[k] = Math.Max(worst[k], errors[k]);
                Assert.True(errors[k] <= Bounds[k].Bound, $"{Bounds[k].Output}: {errors[k]:F1} units in the last place (at most {Bounds[k].Bound}) for x = [{x[0]:R}, {x[1]:R}], ε = {epsilon:R}");
            }
        }));

        output.WriteLine("worst errors in units in the last place: " + string.Join(", ", Bounds.Select((b, k) => $"{b.Output} {worst[k]:F2}")));
    }

    private static double Error(double[] expected, double[] actual, double? unitOf = null)
    {
        double unit = Math.Max(Math.BitIncrement(unitOf ?? expected.Max(Math.Abs)) - (unitOf ?? expected.Max(Math.Abs)), double.Epsilon);
        return expected.Zip(actual, (e, a) => Math.Abs(e - a) / unit).Max();
    }
}
