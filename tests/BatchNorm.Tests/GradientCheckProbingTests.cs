using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// What GradientCheck computes and where it probes, against values worked out by hand: the central differences of
/// every overload, the representable step far from zero, the fourth-order extrapolation of <see cref="GradientCheck.Check(INormalizationLayer, MathNet.Numerics.LinearAlgebra.Matrix{double}, MathNet.Numerics.LinearAlgebra.Matrix{double}, double)"/>,
/// the step it takes for each element and parameter, and what it puts back.
/// </summary>
public class GradientCheckProbingTests
{
    [Fact]
    public void Central_differences_of_a_cubic_are_f_prime_plus_h_squared_in_every_overload()
    {
        // For f(v) = v³ the central difference is exactly 3v² + h²; h = 2⁻⁴ keeps every term exact in binary.
        const double h = 0.0625;
        double[] values = [0.5, -1.25, 2, 3];
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnMajor(2, 2, values);
        Matrix<double> expected = x.Map(v => (3 * v * v) + (h * h));

        Assert.Equal(expected, GradientCheck.NumericalGradient(m => m.Enumerate().Sum(v => v * v * v), x, h));
        Assert.Equal(expected.ToColumnMajorArray(), GradientCheck.NumericalGradient(v => v.Sum(e => e * e * e), Vector<double>.Build.DenseOfArray(values), h).ToArray());

        // Matrix-valued: y = x³ element-wise contracted with g multiplies each element's derivative by its own g.
        var g = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -2 }, { 0.5, 4 } });
        Assert.Equal(expected.PointwiseMultiply(g), GradientCheck.NumericalGradient(Cube, x, g, h));

        // Per element: each element's own step shows in its own h².
        Matrix<double> steps = Matrix<double>.Build.DenseOfArray(new[,] { { 0.125, 0.25 }, { 0.0625, 0.5 } });
        Assert.Equal(x.Map(v => 3 * v * v).PointwiseMultiply(g) + steps.PointwisePower(2).PointwiseMultiply(g), GradientCheck.NumericalGradient(Cube, x, g, steps));

        // Of a vector: y = column j of X scaled by vⱼ³, so dL/dvⱼ = (3vⱼ² + h²)·Σᵢ Xᵢⱼ·gᵢⱼ.
        var w = Vector<double>.Build.DenseOfArray([0.5, -1.5]);
        Vector<double> numerical = GradientCheck.NumericalGradient(v => x.Multiply(Matrix<double>.Build.DiagonalOfDiagonalVector(v.Map(e => e * e * e))), w, g, h);
        Vector<double> contracted = x.PointwiseMultiply(g).ColumnSums();
        Assert.Equal(new[] { ((3 * 0.25) + (h * h)) * contracted[0], ((3 * 2.25) + (h * h)) * contracted[1] }, numerical.ToArray());

        // Every probed element is back where it was.
        Assert.Equal(values, x.ToColumnMajorArray());
        Assert.Equal([0.5, -1.5], w.ToArray());
    }

    [Fact]
    public void The_default_step_is_one_hundred_thousandth()
    {
        // f(v) = v³ at v = 0: the central difference is exactly h², so it shows the step taken.
        Matrix<double> numerical = GradientCheck.NumericalGradient(m => Math.Pow(m[0, 0], 3), Matrix<double>.Build.Dense(1, 1));
        double offset = 1e-5;
        Assert.Equal(offset * offset, numerical[0, 0], 1e-25);
    }

    [Fact]
    public void Far_from_zero_the_step_is_the_distance_to_the_next_double()
    {
        // At 1e12 the doubles are 1.2e-4 apart, so x + 1e-5 rounds back to x: the step becomes that spacing u, and for
        // f = t³ + t with t = x − 1e12 (exact) the central difference is 1 + u². A zero step would give 0/0.
        const double x0 = 1e12;
        double u = Math.BitIncrement(x0) - x0;
        double Cubic(double v)
        {
            double t = v - x0;
            return (t * t * t) + t;
        }

        Matrix<double> m = GradientCheck.NumericalGradient(a => Cubic(a[0, 0]), Matrix<double>.Build.Dense(1, 1, x0));
        Assert.Equal(1 + (u * u), m[0, 0], 1e-15);
        Vector<double> v = GradientCheck.NumericalGradient(a => Cubic(a[0]), Vector<double>.Build.Dense(1, x0));
        Assert.Equal(1 + (u * u), v[0], 1e-15);
        Matrix<double> g = Matrix<double>.Build.Dense(1, 1, 1.0);
        Assert.Equal(1 + (u * u), GradientCheck.NumericalGradient(a => Matrix<double>.Build.Dense(1, 1, Cubic(a[0, 0])), Matrix<double>.Build.Dense(1, 1, x0), g)[0, 0], 1e-15);
    }

    [Fact]
    public void Check_on_a_cubic_layer_is_exact_because_its_difference_is_fourth_order()
    {
        // y = γ·x³ + β·x per feature. Richardson's extrapolation of two central differences is exact for a cubic, and y is
        // linear in γ and β: every numerical gradient equals the analytic one up to rounding.
        var layer = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]);
        (Matrix<double> x, Matrix<double> dy) = CubicBatch();
        GradientCheckResult result = GradientCheck.Check(layer, x, dy);
        Assert.True(result.Max < 1e-12, result.ToString());
        Assert.Equal(["gamma", "beta"], result.Parameters.Select(p => p.Name));

        // A plain central difference would be off by h² for each element: the extrapolation is what makes it exact.
        Matrix<double> secondOrder = GradientCheck.NumericalGradient(layer.Forward, x.Clone(), dy, Matrix<double>.Build.Dense(3, 2, (_, j) => 1e-3 * Math.Sqrt(ColumnVariance(x, j) + layer.Epsilon)));
        layer.Forward(x);
        Assert.True(GradientCheck.RelativeError(layer.Backward(dy), secondOrder, GradientCheck.DefaultRelativeFloor) > 1e-8);
    }

    [Fact]
    public void Check_reports_each_wrong_gradient_under_its_own_name_and_by_how_much()
    {
        // Gradients off by a known factor k have the relative error |k − 1|/(k + 1), whatever the values.
        (Matrix<double> x, Matrix<double> dy) = CubicBatch();
        var wrongX = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]) { InputFactor = 1.5 };
        GradientCheckResult result = GradientCheck.Check(wrongX, x, dy);
        Assert.Equal(0.5 / 2.5, result.Input, 1e-9);
        Assert.True(result.Gamma < 1e-12 && result.Beta < 1e-12, result.ToString());
        Assert.Equal(result.Input, result.Max);

        var wrongBeta = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]) { BetaFactor = 3 };
        result = GradientCheck.Check(wrongBeta, x, dy);
        Assert.Equal(2.0 / 4, result.Beta, 1e-9);
        Assert.Equal(2.0 / 4, result.ErrorOf("beta"), 1e-9);
        Assert.True(result.Input < 1e-12 && result.Gamma < 1e-12, result.ToString());
        Assert.Equal(result.Beta, result.Max);

        var wrongGamma = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]) { GammaFactor = -1 };
        result = GradientCheck.Check(wrongGamma, x, dy);
        Assert.Equal(1.0, result.Gamma, 1e-9);
        Assert.True(result.Input < 1e-12 && result.Beta < 1e-12, result.ToString());
    }

    [Fact]
    public void Check_steps_each_input_by_a_fraction_of_its_column_spread_when_the_layer_keeps_no_cache()
    {
        // Without a cache the scale is √(σ² + ε) of each column: h = relativeStep·√(σ² + ε), then 2h.
        var layer = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]);
        (Matrix<double> x, Matrix<double> dy) = CubicBatch();
        GradientCheck.Check(layer, x, dy, relativeStep: 1e-2);
        for (int j = 0; j < 2; j++)
        {
            double h = 1e-2 * Math.Sqrt(ColumnVariance(x, j) + layer.Epsilon);
            AssertProbed(layer, x, row: 1, column: j, [h, -h, 2 * h, -2 * h]);
        }
    }

    [Fact]
    public void Check_steps_each_parameter_by_a_fraction_of_its_size_and_at_least_of_one()
    {
        // γ = (3, −4), β = (0.25, −0.5): steps relativeStep·max(1, |value|), so 3e-3, 4e-3, 1e-3 and 1e-3, then twice those.
        var layer = new CubicLayer(2, gamma: [3, -4], beta: [0.25, -0.5]);
        (Matrix<double> x, Matrix<double> dy) = CubicBatch();
        GradientCheck.Check(layer, x, dy);
        AssertParameterProbed(layer.GammaSeen, 0, 3, 3e-3);
        AssertParameterProbed(layer.GammaSeen, 1, -4, 4e-3);
        AssertParameterProbed(layer.BetaSeen, 0, 0.25, 1e-3);
        AssertParameterProbed(layer.BetaSeen, 1, -0.5, 1e-3);
        Assert.Equal([3.0, -4], layer.Gamma.ToArray());
        Assert.Equal([0.25, -0.5], layer.Beta.ToArray());
    }

    [Fact]
    public void Check_steps_on_the_cached_scale_of_each_segment_in_inference_and_in_row_groups()
    {
        // Inference batch norm divides by √(running_var + ε), not by the batch's spread: with running variances 4 and
        // 0.01 the steps are 1e-3·√(4 + ε) and 1e-3·√(0.01 + ε) although both columns spread over about 10.
        var norm = new BatchNormLayer(2) { IsTraining = false };
        norm.RunningVariance.SetValues([4, 0.01]);
        var recorded = new RecordingLayer(norm);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -3 }, { 9, 2 }, { -4, 8 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1 }, { 0.25, 0.75 }, { -1, 0.125 } });
        GradientCheck.Check(recorded, x, dy);
        AssertProbed(recorded, x, row: 2, column: 0, Steps(1e-3 * Math.Sqrt(4 + 1e-5)));
        AssertProbed(recorded, x, row: 0, column: 1, Steps(1e-3 * Math.Sqrt(0.01 + 1e-5)));

        // Group norm: each row's group has its own σ².
        var group = new RecordingLayer(new GroupNormLayer(4, 2));
        Matrix<double> rows = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 3, 10, 30 }, { -2, 6, 0.5, 0.25 } });
        GradientCheck.Check(group, rows, rows.Map(v => Math.Sin(v)));
        AssertProbed(group, rows, row: 0, column: 1, Steps(1e-3 * Math.Sqrt(1 + 1e-5)));       // {1, 3}: σ² = 1
        AssertProbed(group, rows, row: 0, column: 2, Steps(1e-3 * Math.Sqrt(100 + 1e-5)));     // {10, 30}: σ² = 100
        AssertProbed(group, rows, row: 1, column: 0, Steps(1e-3 * Math.Sqrt(16 + 1e-5)));      // {−2, 6}: σ² = 16
        AssertProbed(group, rows, row: 1, column: 3, Steps(1e-3 * Math.Sqrt(0.015625 + 1e-5))); // {0.5, 0.25}: σ² = 1/64
    }

    [Fact]
    public void A_cache_of_another_batch_shape_is_not_read_for_the_steps()
    {
        // The layer reports a stale cache: of 4 rows instead of 3, or of 3 features instead of 2. The steps then come from
        // the columns of x, √(σ² + ε) with ε = 1e-5 of the inner layer.
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -3 }, { 9, 2 }, { -4, 8 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1 }, { 0.25, 0.75 }, { -1, 0.125 } });
        var fourRows = new BatchNormLayer(2);
        fourRows.Forward(Matrix<double>.Build.Dense(4, 2, (i, j) => i * (j + 100)));
        var threeFeatures = new BatchNormLayer(3);
        threeFeatures.Forward(Matrix<double>.Build.Dense(3, 3, (i, j) => i * (j + 100)));
        foreach (NormalizationCache stale in new[] { fourRows.Cache!, threeFeatures.Cache! })
        {
            var layer = new RecordingLayer(new BatchNormLayer(2)) { StaleCache = stale };
            GradientCheck.Check(layer, x, dy);
            AssertProbed(layer, x, row: 0, column: 0, Steps(1e-3 * Math.Sqrt(ColumnVariance(x, 0) + 1e-5)));
            AssertProbed(layer, x, row: 2, column: 1, Steps(1e-3 * Math.Sqrt(ColumnVariance(x, 1) + 1e-5)));
        }
    }

    [Fact]
    public void Check_puts_back_a_layer_of_its_own_through_its_saved_state_before_the_analytic_step_and_at_the_end()
    {
        var layer = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]);
        (Matrix<double> x, Matrix<double> dy) = CubicBatch();
        string before = layer.ExportState();
        layer.Events.Clear();
        GradientCheck.Check(layer, x, dy);

        // Export first; the analytic step runs on the restored state with the unprobed input; then the state is put back.
        Assert.Equal("export", layer.Events[0]);
        Assert.Equal(["import", "forward", "backward", "import"], layer.Events.TakeLast(4));
        Assert.Equal(x, layer.LastInput);
        Assert.Equal(before, layer.ExportState());

        // Without its saved state put back the layer would have counted every probe.
        Assert.Equal(0, layer.Forwards);
    }

    [Fact]
    public void Check_puts_back_the_mode_and_the_probed_parameter_when_a_forward_throws()
    {
        (Matrix<double> x, Matrix<double> dy) = CubicBatch();
        foreach (int failingCall in new[] { 3, 30 })
        {
            // Call 3 probes the input, call 30 the second element of γ (4 probes per element of the 3×2 input first).
            var layer = new CubicLayer(2, gamma: [0.75, -2], beta: [0.5, 1.5]) { FailAt = failingCall, SwitchesToInference = true };
            string before = layer.ExportState();
            Assert.Equal("probe failed", Assert.Throws<InvalidOperationException>(() => GradientCheck.Check(layer, x, dy)).Message);
            Assert.True(layer.IsTraining);
            Assert.Equal([0.75, -2], layer.Gamma.ToArray());
            Assert.Equal([0.5, 1.5], layer.Beta.ToArray());
            Assert.Equal(before, layer.ExportState());
        }
    }

    [Fact]
    public void Check_leaves_a_running_statistics_layer_as_it_found_it()
    {
        // Renorm reads its running statistics in training, and Check runs hundreds of training Forwards: every one must
        // start from the statistics as they were, and the statistics, the count and the mode are back afterwards.
        var layer = new BatchRenormLayer(2, momentum: 0.5) { RMax = 2, DMax = 0.5 };
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 4 }, { 2, -1 }, { 6, 0.5 }, { -3, 2 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.1, -1 }, { 0.7, 0.3 }, { -0.2, 0.9 }, { 0.5, -0.4 } });
        layer.Forward(x);
        layer.RunningMean.SetValues([1e5, -1e5]);
        layer.RunningVariance.SetValues([1e6, 4e6]);
        GradientCheckResult result = GradientCheck.Check(layer, x, dy);
        Assert.True(result.Max < 1e-6, result.ToString());
        Assert.Equal([1e5, -1e5], layer.RunningMean.ToArray());
        Assert.Equal([1e6, 4e6], layer.RunningVariance.ToArray());
        Assert.Equal(1, layer.BatchesTracked);
        Assert.True(layer.IsTraining);

        // The analytic step leaves its cache and gradients: those of a training Forward of x with r and d clipped.
        Assert.Equal([0.5, 0.5], layer.R.ToArray());
        Assert.Equal(4, layer.Cache!.BatchSize);
        Assert.True(layer.Cache.IsTraining);
    }

    [Fact]
    public void A_cumulative_average_keeps_its_count_through_a_check()
    {
        // With momentum null the weight of a batch is 1/BatchesTracked: a count that moved would change the next update.
        var layer = new BatchNormLayer(2, momentum: null);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 4 }, { 2, -1 }, { 6, 0.5 } });
        layer.Forward(x);
        layer.Forward(x * 2);
        double[] variance = layer.RunningVariance.ToArray();
        GradientCheck.Check(layer, x, x.Map(Math.Cos));
        Assert.Equal(2, layer.BatchesTracked);
        Assert.Equal(variance, layer.RunningVariance.ToArray());
    }

    private static Matrix<double> Cube(Matrix<double> m) => m.Map(v => v * v * v);

    private static (Matrix<double> X, Matrix<double> Dy) CubicBatch()
        => (Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1 }, { 2, 3 }, { -1.5, 0.25 } }),
            Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -0.5 }, { 0.25, 2 }, { -0.75, 0.5 } }));

    private static double ColumnVariance(Matrix<double> x, int j)
    {
        double[] c = x.Column(j).ToArray();
        double mean = c.Average();
        return c.Average(v => (v - mean) * (v - mean));
    }

    private static double[] Steps(double h) => [h, -h, 2 * h, -2 * h];

    /// <summary>Asserts that the probes of one input element moved it by the given offsets, in order, and nothing else.</summary>
    private static void AssertProbed(IRecording layer, Matrix<double> x, int row, int column, double[] offsets)
    {
        double[] moved = layer.Inputs
            .Where(m => m[row, column] != x[row, column])
            .Select(m => m[row, column] - x[row, column])
            .ToArray();
        Assert.Equal(offsets.Length, moved.Length);
        for (int k = 0; k < offsets.Length; k++)
        {
            // The offset actually taken is the representable one, within an ulp of x of the nominal step.
            Assert.Equal(offsets[k], moved[k], 4 * Math.BitIncrement(Math.Abs(x[row, column])) - (4 * Math.Abs(x[row, column])) + 1e-18);
        }

        // Every probe moves one element only.
        Assert.All(layer.Inputs.Where(m => m[row, column] != x[row, column]), m => Assert.Equal(1, (m - x).Enumerate().Count(d => d != 0)));
    }

    private static void AssertParameterProbed(List<double[]> seen, int index, double value, double step)
    {
        double[] moved = seen.Where(p => p[index] != value).Select(p => p[index] - value).ToArray();
        Assert.Equal(4, moved.Length);
        double[] expected = [step, -step, 2 * step, -2 * step];
        for (int k = 0; k < 4; k++)
        {
            Assert.Equal(expected[k], moved[k], 1e-15);
        }
    }

    private interface IRecording
    {
        List<Matrix<double>> Inputs { get; }
    }

    /// <summary>
    /// A layer of one's own, as GradientCheck sees it: y = γ·x³ + β·x per feature, no cache, and a saved state that holds
    /// only a count of its Forwards (so that what puts γ and β back after a probe is the check itself), with options to report wrong gradients, fail at a given Forward, or switch modes by itself.
    /// </summary>
    private sealed class CubicLayer : INormalizationLayer, IRecording
    {
        private Matrix<double>? _x;

        public CubicLayer(int features, double[] gamma, double[] beta)
        {
            Features = features;
            Gamma = Vector<double>.Build.DenseOfArray(gamma);
            Beta = Vector<double>.Build.DenseOfArray(beta);
            GammaGradient = Vector<double>.Build.Dense(features);
            BetaGradient = Vector<double>.Build.Dense(features);
            Parameters = [new LayerParameter("gamma", Gamma, GammaGradient), new LayerParameter("beta", Beta, BetaGradient)];
        }

        public int Features { get; }

        public double Epsilon => 0.25;

        public bool IsTraining { get; set; } = true;

        public BackwardStrategy BackwardStrategy { get; set; } = BackwardStrategy.ClosedForm;

        public IReadOnlyList<LayerParameter> Parameters { get; }

        public NormalizationCache? Cache => null;

        public Vector<double> Gamma { get; }

        public Vector<double> Beta { get; }

        public Vector<double> GammaGradient { get; }

        public Vector<double> BetaGradient { get; }

        public double InputFactor { get; init; } = 1;

        public double GammaFactor { get; init; } = 1;

        public double BetaFactor { get; init; } = 1;

        public int FailAt { get; init; } = -1;

        public bool SwitchesToInference { get; init; }

        public int Forwards { get; private set; }

        public List<string> Events { get; } = [];

        public List<Matrix<double>> Inputs { get; } = [];

        public List<double[]> GammaSeen { get; } = [];

        public List<double[]> BetaSeen { get; } = [];

        public Matrix<double>? LastInput => _x;

        public Matrix<double> Forward(Matrix<double> input)
        {
            Forwards++;
            Events.Add("forward");
            if (Inputs.Count + 1 == FailAt)
            {
                throw new InvalidOperationException("probe failed");
            }

            if (SwitchesToInference)
            {
                IsTraining = false;
            }

            _x = input.Clone();
            Inputs.Add(_x);
            GammaSeen.Add(Gamma.ToArray());
            BetaSeen.Add(Beta.ToArray());
            return Matrix<double>.Build.Dense(input.RowCount, input.ColumnCount, (i, j) => (Gamma[j] * Math.Pow(input[i, j], 3)) + (Beta[j] * input[i, j]));
        }

        public void Forward(Matrix<double> input, Matrix<double> output) => Forward(input).CopyTo(output);

        public Matrix<double> Backward(Matrix<double> outputGradient)
        {
            Events.Add("backward");
            Matrix<double> x = _x!;
            for (int j = 0; j < Features; j++)
            {
                GammaGradient[j] = GammaFactor * Enumerable.Range(0, x.RowCount).Sum(i => outputGradient[i, j] * Math.Pow(x[i, j], 3));
                BetaGradient[j] = BetaFactor * Enumerable.Range(0, x.RowCount).Sum(i => outputGradient[i, j] * x[i, j]);
            }

            return Matrix<double>.Build.Dense(x.RowCount, x.ColumnCount, (i, j) => InputFactor * outputGradient[i, j] * ((3 * Gamma[j] * x[i, j] * x[i, j]) + Beta[j]));
        }

        public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient) => Backward(outputGradient).CopyTo(inputGradient);

        public void ResetParameters() => throw new NotSupportedException();

        public string ExportState()
        {
            Events.Add("export");
            return Forwards.ToString(CultureInfo.InvariantCulture);
        }

        public void ImportState(string json)
        {
            Events.Add("import");
            Forwards = int.Parse(json, CultureInfo.InvariantCulture);
        }
    }

    /// <summary>One of the library's layers seen through the contract only, recording every input it is given.</summary>
    private sealed class RecordingLayer(INormalizationLayer inner) : INormalizationLayer, IRecording
    {
        public List<Matrix<double>> Inputs { get; } = [];

        public NormalizationCache? StaleCache { get; init; }

        public int Features => inner.Features;

        public double Epsilon => inner.Epsilon;

        public bool IsTraining
        {
            get => inner.IsTraining;
            set => inner.IsTraining = value;
        }

        public BackwardStrategy BackwardStrategy
        {
            get => inner.BackwardStrategy;
            set => inner.BackwardStrategy = value;
        }

        public IReadOnlyList<LayerParameter> Parameters => inner.Parameters;

        public NormalizationCache? Cache => StaleCache ?? inner.Cache;

        public Matrix<double> Forward(Matrix<double> input)
        {
            Inputs.Add(input.Clone());
            return inner.Forward(input);
        }

        public void Forward(Matrix<double> input, Matrix<double> output) => output.SetSubMatrix(0, 0, Forward(input));

        public Matrix<double> Backward(Matrix<double> outputGradient) => inner.Backward(outputGradient);

        public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient) => inner.Backward(outputGradient, inputGradient);

        public void ResetParameters() => inner.ResetParameters();

        public string ExportState() => inner.ExportState();

        public void ImportState(string json) => inner.ImportState(json);
    }
}
