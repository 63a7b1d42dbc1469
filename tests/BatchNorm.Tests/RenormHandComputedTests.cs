using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Batch renormalization against Ioffe's formulas worked out here, one feature clipped at the upper limits, one at the
/// lower and one free: r, d, y, the running statistics, dx, dγ and dβ in both modes and through both overloads, and
/// every setting's boundary.
/// </summary>
public class RenormHandComputedTests
{
    private const double Epsilon = 1e-3;
    private const double RMax = 1.5, DMax = 0.75;

    // Column 0: μ = 4, σ² = 5; column 1: μ = 1, σ² = 5; column 2: μ = 10, σ² = 1/8.
    private static readonly double[][] Columns = [[1, 3, 5, 7], [-2, 0, 2, 4], [10, 10.5, 9.5, 10]];
    private static readonly double[] BatchMean = [4, 1, 10], BatchVariance = [5, 5, 0.125];

    // Running statistics before the batch: r and d clip at +rmax, +dmax for feature 0, at 1/rmax, −dmax for feature 1,
    // and are free for feature 2 (r = √(0.126/0.201) ≈ 0.79, d = 0.2/√0.201 ≈ 0.45).
    private static readonly double[] RunningMean = [3, 6, 9.8], RunningVariance = [1, 20, 0.2];
    private static readonly double[] Gamma = [2, -0.5, 1.25], Beta = [0.5, 1, -2];
    private static readonly double[][] Dy = [[0.5, -1, 0.25, 2], [1, 0.75, -0.5, -0.25], [-1.5, 0.5, 1, 0.125]];

    private static Matrix<double> X => Matrix<double>.Build.DenseOfColumnArrays(Columns);

    private static Matrix<double> OutputGradient => Matrix<double>.Build.DenseOfColumnArrays(Dy);

    private static double ExpectedR(int j) => Math.Clamp(Math.Sqrt(BatchVariance[j] + Epsilon) / Math.Sqrt(RunningVariance[j] + Epsilon), 1 / RMax, RMax);

    private static double ExpectedD(int j) => Math.Clamp((BatchMean[j] - RunningMean[j]) / Math.Sqrt(RunningVariance[j] + Epsilon), -DMax, DMax);

    private static double XHat(int i, int j) => (Columns[j][i] - BatchMean[j]) / Math.Sqrt(BatchVariance[j] + Epsilon);

    private static BatchRenormLayer Layer(BackwardStrategy strategy)
    {
        var layer = new BatchRenormLayer(3, Epsilon, momentum: 0.25, backward: strategy) { RMax = RMax, DMax = DMax };
        layer.Gamma.SetValues(Gamma);
        layer.Beta.SetValues(Beta);
        layer.RunningMean.SetValues(RunningMean);
        layer.RunningVariance.SetValues(RunningVariance);
        return layer;
    }

    public static TheoryData<string> Strategies => ["closed", "staged"];

    [Fact]
    public void The_cases_clip_where_they_are_meant_to()
    {
        Assert.Equal([RMax, 1 / RMax], new[] { ExpectedR(0), ExpectedR(1) });
        Assert.Equal([DMax, -DMax], new[] { ExpectedD(0), ExpectedD(1) });
        Assert.InRange(ExpectedR(2), 0.75, 0.8);
        Assert.InRange(ExpectedD(2), 0.4, 0.5);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Training_forward_is_gamma_times_x_hat_r_plus_d_plus_beta_with_r_and_d_from_the_old_running_statistics(string strategy)
    {
        foreach (bool destination in new[] { false, true })
        {
            BatchRenormLayer layer = Layer(ContractTests.Strategy(strategy));
            Matrix<double> y = Forward(layer, X, destination);
            for (int j = 0; j < 3; j++)
            {
                Assert.Equal(ExpectedR(j), layer.R[j], 1e-15);
                Assert.Equal(ExpectedD(j), layer.D[j], 1e-15);
                for (int i = 0; i < 4; i++)
                {
                    double expected = (Gamma[j] * ((XHat(i, j) * ExpectedR(j)) + ExpectedD(j))) + Beta[j];
                    Assert.Equal(expected, y[i, j], 1e-14);
                }
            }
        }
    }

    [Fact]
    public void The_running_statistics_move_as_batch_norm_moves_them_after_r_and_d_are_taken()
    {
        // Momentum 1/4, unbiased variance σ²·N/(N − 1) with N = 4.
        BatchRenormLayer layer = Layer(BackwardStrategy.ClosedForm);
        layer.Forward(X);
        for (int j = 0; j < 3; j++)
        {
            Assert.Equal((0.75 * RunningMean[j]) + (0.25 * BatchMean[j]), layer.RunningMean[j], 1e-14);
            Assert.Equal((0.75 * RunningVariance[j]) + (0.25 * BatchVariance[j] * 4 / 3), layer.RunningVariance[j], 1e-14);
        }

        Assert.Equal(1, layer.BatchesTracked);

        // The next batch's r and d come from the moved statistics.
        double runningStd = Math.Sqrt(layer.RunningVariance[2] + Epsilon);
        double expectedR = Math.Clamp(Math.Sqrt(BatchVariance[2] + Epsilon) / runningStd, 1 / RMax, RMax);
        double expectedD = Math.Clamp((BatchMean[2] - layer.RunningMean[2]) / runningStd, -DMax, DMax);
        layer.Forward(X);
        Assert.Equal(expectedR, layer.R[2], 1e-15);
        Assert.Equal(expectedD, layer.D[2], 1e-15);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Training_backward_is_the_batch_norm_gradient_with_gamma_r_and_the_chain_rule_for_gamma(string strategy)
    {
        foreach (bool destination in new[] { false, true })
        {
            BatchRenormLayer layer = Layer(ContractTests.Strategy(strategy));
            layer.Forward(X);
            Matrix<double> dx = Backward(layer, OutputGradient, destination);
            for (int j = 0; j < 3; j++)
            {
                // dx = γ·r/√(σ² + ε)·(dy − mean(dy) − x̂·mean(dy·x̂)); dγ = r·Σdy·x̂ + d·Σdy; dβ = Σdy.
                double[] dy = Dy[j], xHat = Enumerable.Range(0, 4).Select(i => XHat(i, j)).ToArray();
                double meanDy = dy.Average(), meanDyXHat = dy.Zip(xHat, (a, b) => a * b).Average();
                double scale = Gamma[j] * ExpectedR(j) / Math.Sqrt(BatchVariance[j] + Epsilon);
                for (int i = 0; i < 4; i++)
                {
                    Assert.Equal(scale * (dy[i] - meanDy - (xHat[i] * meanDyXHat)), dx[i, j], 1e-13);
                }

                Assert.Equal((ExpectedR(j) * meanDyXHat * 4) + (ExpectedD(j) * meanDy * 4), layer.GammaGradient[j], 1e-13);
                Assert.Equal(dy.Sum(), layer.BetaGradient[j], 1e-15);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Inference_resets_r_to_one_and_d_to_zero_and_uses_the_running_statistics_in_both_passes(string strategy)
    {
        foreach (bool destination in new[] { false, true })
        {
            BatchRenormLayer layer = Layer(ContractTests.Strategy(strategy));
            layer.Forward(X);
            Assert.NotEqual(1, layer.R[0]);
            double[] mean = layer.RunningMean.ToArray(), variance = layer.RunningVariance.ToArray();
            layer.IsTraining = false;
            Matrix<double> y = Forward(layer, X, destination);
            Assert.Equal([1.0, 1, 1], layer.R.ToArray());
            Assert.Equal([0.0, 0, 0], layer.D.ToArray());
            Matrix<double> dx = Backward(layer, OutputGradient, destination);
            for (int j = 0; j < 3; j++)
            {
                double inverseStd = 1 / Math.Sqrt(variance[j] + Epsilon);
                for (int i = 0; i < 4; i++)
                {
                    Assert.Equal((Gamma[j] * (Columns[j][i] - mean[j]) * inverseStd) + Beta[j], y[i, j], 1e-14);
                    Assert.Equal(Gamma[j] * Dy[j][i] * inverseStd, dx[i, j], 1e-14);
                }

                Assert.Equal(Enumerable.Range(0, 4).Sum(i => Dy[j][i] * (Columns[j][i] - mean[j]) * inverseStd), layer.GammaGradient[j], 1e-14);
                Assert.Equal(Dy[j].Sum(), layer.BetaGradient[j], 1e-15);
            }

            // Inference changes neither the running statistics nor the count.
            Assert.Equal(mean, layer.RunningMean.ToArray());
            Assert.Equal(1, layer.BatchesTracked);
        }
    }

    [Fact]
    public void A_new_layer_has_r_one_d_zero_rmax_one_and_dmax_zero_and_describes_its_limits()
    {
        var layer = new BatchRenormLayer(2);
        Assert.Equal([1.0, 1], layer.R.ToArray());
        Assert.Equal([0.0, 0], layer.D.ToArray());
        Assert.Equal(1, layer.RMax);
        Assert.Equal(0, layer.DMax);
        Assert.Equal("BatchRenormLayer(features: 2, rmax: 1, dmax: 0, training, strategy: closed)", layer.ToString());
        layer.RMax = 2.5;
        layer.DMax = 0.125;
        Assert.Equal("BatchRenormLayer(features: 2, rmax: 2.5, dmax: 0.125, training, strategy: closed)", layer.ToString());
    }

    [Fact]
    public void The_limits_are_taken_at_their_boundaries_and_refused_just_beyond()
    {
        var layer = new BatchRenormLayer(2) { RMax = 4, DMax = 2 };
        layer.RMax = 1;
        layer.DMax = 0;
        Assert.Equal(1, layer.RMax);
        Assert.Equal(0, layer.DMax);
        foreach (double bad in new[] { Math.BitDecrement(1.0), 0, -2, double.PositiveInfinity, double.NaN })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => layer.RMax = bad);
            Assert.Equal("value", e.ParamName);
            Assert.StartsWith("rmax must be at least 1 and finite.", e.Message, StringComparison.Ordinal);
        }

        foreach (double bad in new[] { -double.Epsilon, -1, double.PositiveInfinity, double.NaN })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => layer.DMax = bad);
            Assert.Equal("value", e.ParamName);
            Assert.StartsWith("dmax must be non-negative and finite.", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal(1, layer.RMax);
        Assert.Equal(0, layer.DMax);
    }

    [Fact]
    public void Saved_state_carries_the_limits_and_refuses_limits_out_of_range()
    {
        BatchRenormLayer source = Layer(BackwardStrategy.ClosedForm);
        source.Forward(X);
        string json = source.ExportState();
        Assert.Contains("\"rMax\": 1.5", json, StringComparison.Ordinal);
        Assert.Contains("\"dMax\": 0.75", json, StringComparison.Ordinal);

        var target = new BatchRenormLayer(3, Epsilon);
        target.ImportState(json);
        Assert.Equal(RMax, target.RMax);
        Assert.Equal(DMax, target.DMax);
        Assert.Equal(source.RunningMean, target.RunningMean);
        Assert.Equal(source.RunningVariance, target.RunningVariance);
        Assert.Equal(1, target.BatchesTracked);

        // The boundaries are valid saved values too.
        string edge = json.Replace("\"rMax\": 1.5", "\"rMax\": 1", StringComparison.Ordinal).Replace("\"dMax\": 0.75", "\"dMax\": 0", StringComparison.Ordinal);
        target.ImportState(edge);
        Assert.Equal(1, target.RMax);
        Assert.Equal(0, target.DMax);

        foreach (string bad in new[] { "\"rMax\": 0.999", "\"dMax\": -0.001" })
        {
            string field = bad[..bad.IndexOf(':', StringComparison.Ordinal)];
            string broken = json.Replace(field == "\"rMax\"" ? "\"rMax\": 1.5" : "\"dMax\": 0.75", bad, StringComparison.Ordinal);
            var e = Assert.Throws<FormatException>(() => target.ImportState(broken));
            Assert.Equal("'rMax' must be at least 1 and 'dMax' non-negative.", e.Message);
            Assert.Equal(1, target.RMax);
            Assert.Equal(0, target.DMax);
        }
    }

    [Fact]
    public void Backward_into_a_destination_checks_both_shapes()
    {
        BatchRenormLayer layer = Layer(BackwardStrategy.ClosedForm);
        layer.Forward(X);
        Matrix<double> dx = layer.Backward(OutputGradient);
        var wrongDy = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(3, 3), Matrix<double>.Build.Dense(4, 3)));
        Assert.Equal("outputGradient", wrongDy.ParamName);
        Assert.Contains("outputGradient is 3x3, the last Forward's input is 4x3", wrongDy.Message, StringComparison.Ordinal);
        var wrongDx = Assert.Throws<ArgumentException>(() => layer.Backward(OutputGradient, Matrix<double>.Build.Dense(4, 2)));
        Assert.Equal("inputGradient", wrongDx.ParamName);
        Assert.Contains("inputGradient is 4x2, outputGradient is 4x3", wrongDx.Message, StringComparison.Ordinal);
        Assert.Equal(dx, Backward(layer, OutputGradient, destination: true));
    }

    private static Matrix<double> Forward(BatchRenormLayer layer, Matrix<double> x, bool destination)
    {
        if (!destination)
        {
            return layer.Forward(x);
        }

        Matrix<double> y = Matrix<double>.Build.Dense(x.RowCount, x.ColumnCount, double.NaN);
        layer.Forward(x, y);
        return y;
    }

    private static Matrix<double> Backward(BatchRenormLayer layer, Matrix<double> dy, bool destination)
    {
        if (!destination)
        {
            return layer.Backward(dy);
        }

        Matrix<double> dx = Matrix<double>.Build.Dense(dy.RowCount, dy.ColumnCount, double.NaN);
        layer.Backward(dy, dx);
        return dx;
    }
}
