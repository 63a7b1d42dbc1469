using System;
using System.Linq;
using System.Threading;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Faults, misuse and extremes give a clear error or a correct result, and leave everything as it was.</summary>
public class FaultTests
{
    public static TheoryData<string> Strategies => new() { "staged", "closed" };

    // ---- GradientCheck leaves everything as it found it ----

    [Fact]
    public void NumericalGradient_restores_the_point_when_the_function_throws()
    {
        Matrix<double> x = Matrix<double>.Build.Dense(3, 2, (i, j) => i - (0.5 * j)), before = x.Clone();
        int calls = 0;
        Assert.Throws<DivideByZeroException>(() => GradientCheck.NumericalGradient(m => ++calls == 5 ? throw new DivideByZeroException() : m.Enumerate().Sum(), x));
        Assert.Equal(before, x);

        Matrix<double> dy = Matrix<double>.Build.Dense(3, 2, 1.0);
        calls = 0;
        Assert.Throws<DivideByZeroException>(() => GradientCheck.NumericalGradient(m => ++calls == 3 ? throw new DivideByZeroException() : m * 2, x, dy));
        Assert.Equal(before, x);

        Vector<double> v = Vector<double>.Build.DenseOfArray([1.5, -2]);
        calls = 0;
        Assert.Throws<DivideByZeroException>(() => GradientCheck.NumericalGradient(w => ++calls == 2 ? throw new DivideByZeroException() : w[0] * w[1], v));
        Assert.Equal([1.5, -2], v.ToArray());
    }

    [Fact]
    public void NumericalGradient_names_both_shapes_when_the_function_returns_the_wrong_one_or_null()
    {
        Matrix<double> x = Matrix<double>.Build.Dense(3, 2, (i, j) => i + j), before = x.Clone(), dy = Matrix<double>.Build.Dense(3, 2, 1.0);
        var e = Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(m => m.SubMatrix(0, 2, 0, 2), x, dy));
        Assert.Contains("2x2", e.Message);
        Assert.Contains("3x2", e.Message);
        Assert.Equal(before, x);
        Assert.Contains("null", Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(_ => null!, x, dy)).Message);
        Assert.Equal(before, x);
        Vector<double> gamma = Vector<double>.Build.DenseOfArray([1.0, 2]);
        Assert.Contains("2x2", Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(_ => x.SubMatrix(0, 2, 0, 2), gamma, dy)).Message);
        Assert.Equal([1.0, 2], gamma.ToArray());
    }

    [Fact]
    public void Check_restores_mode_parameters_and_running_statistics_when_the_layer_throws_midway()
    {
        var inner = new BatchNormLayer(2);
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(6, 2, seed: 3);
        inner.Forward(x * 2);
        inner.Gamma[1] = -0.5;
        var flaky = new FailsAfter(inner, calls: 7);
        string before = inner.ExportState();
        Matrix<double> input = x.Clone();
        Assert.Throws<TimeoutException>(() => GradientCheck.Check(flaky, input, dy));
        Assert.Equal(before, inner.ExportState());
        Assert.True(inner.IsTraining);
        Assert.Equal(x, input);
    }

    // ---- GradientCheck does not cry wolf ----

    [Theory]
    [InlineData("staged", 1e8)]
    [InlineData("closed", 1e8)]
    [InlineData("staged", 1e12)]
    [InlineData("closed", 1e12)]
    public void Check_reports_a_correct_layer_as_correct_far_from_zero(string strategy, double mean)
    {
        // The README's hard case: a spread of 1 around a mean of 1e8 or 1e12, which the layer handles exactly. At 1e12
        // doubles are 1.2e-4 apart, so x ± h rounds; a check that divided by the nominal step reported errors up to 9e-2.
        var random = new Random(21);
        Matrix<double> x = Matrix<double>.Build.Dense(16, 3, (_, j) => (mean * (j + 1)) + Math.Round((random.NextDouble() - 0.5) * 4096) / 1024);
        Matrix<double> dy = Matrix<double>.Build.Dense(16, 3, (_, _) => random.NextDouble() - 0.5);
        foreach (bool training in new[] { true, false })
        {
            var layer = new BatchNormLayer(3, momentum: 1, backward: ContractTests.Strategy(strategy));
            layer.Forward(x);
            layer.IsTraining = training;
            GradientCheckResult errors = GradientCheck.Check(layer, x, dy);
            Assert.True(errors.Max < 1e-7, $"mean {mean:E0}, training {training}: {errors}");
        }
    }

    // ---- One layer, two threads ----

    [Fact]
    public void A_call_overlapping_a_running_call_on_the_same_layer_is_refused_and_the_running_one_finishes()
    {
        // Thread A stops inside its Backward (in the strategy); thread B then calls Forward on the same layer.
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var layer = new BatchNormLayer(2, backward: new Pausing(entered, release));
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(4, 2, seed: 5);
        layer.Forward(x);
        var reference = new BatchNormLayer(2);
        reference.Forward(x);
        Matrix<double> expected = reference.Backward(dy);

        Matrix<double>? result = null;
        var a = new Thread(() => result = layer.Backward(dy));
        a.Start();
        Assert.True(entered.Wait(TimeSpan.FromSeconds(10)));
        foreach (Action overlapping in new Action[] { () => layer.Forward(x), () => layer.Backward(dy), () => layer.ResetParameters(), () => layer.ImportState(reference.ExportState()) })
        {
            var e = Assert.Throws<InvalidOperationException>(overlapping);
            Assert.Contains("not thread-safe", e.Message);
            Assert.Contains("each thread its own layer", e.Message);
        }

        release.Set();
        Assert.True(a.Join(TimeSpan.FromSeconds(10)));
        Assert.True((expected - result!).InfinityNorm() < 1e-12);
        Assert.Equal(reference.RunningMean, layer.RunningMean);
    }

    [Fact]
    public void Two_threads_hammering_one_layer_get_correct_results_or_a_clear_refusal_never_silence()
    {
        // Whether two starts overlap is up to the scheduler, so this test does not insist that they do (the test above
        // makes them overlap for certain); it insists that no call, overlapping or not, returns a wrong result silently.
        (Matrix<double> x, _) = ContractTests.Batch(512, 256, seed: 6);
        var layer = new LayerNormLayer(256);
        Matrix<double> expected = new LayerNormLayer(256).Forward(x);
        using var barrier = new Barrier(2);
        int refused = 0, wrong = 0, other = 0;
        Thread[] threads = [.. Enumerable.Range(0, 2).Select(_ => new Thread(
            () =>
            {
                var y = Matrix<double>.Build.Dense(512, 256);
                for (int round = 0; round < 100; round++)
                {
                    barrier.SignalAndWait();
                    try
                    {
                        layer.Forward(x, y);
                        if (!y.Equals(expected))
                        {
                            Interlocked.Increment(ref wrong);
                        }
                    }
                    catch (InvalidOperationException)
                    {
                        Interlocked.Increment(ref refused);
                    }
                    catch (Exception)
                    {
                        Interlocked.Increment(ref other);
                    }
                }
            }))];
        foreach (Thread thread in threads)
        {
            thread.Start();
        }

        Assert.All(threads, t => Assert.True(t.Join(TimeSpan.FromSeconds(60))));
        Assert.Equal(0, wrong);
        Assert.Equal(0, other);
        Assert.InRange(refused, 0, 200);
    }

    // ---- Extremes: a correct finite value, or an error that names the column and the cause ----

    [Theory]
    [MemberData(nameof(Strategies))]
    public void A_variance_plus_epsilon_beyond_the_range_of_double_still_normalizes_correctly(string strategy)
    {
        // σ² = 8.1e307 and ε = 1e308: σ² + ε overflows, but 1/√(σ² + ε) ≈ 7.4e-155 is an ordinary double. (The squares
        // around the first value, 3.2e308, overflow too; those around the mean fit, so the statistics pass again.)
        var layer = new BatchNormLayer(1, epsilon: 1e308, momentum: 1, backward: ContractTests.Strategy(strategy));
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnArrays(new[] { 0.9e154, -0.9e154 });
        Matrix<double> y = layer.Forward(x);
        double expected = 0.9e154 / (2 * Math.Sqrt((0.25 * 0.81e308) + (0.25 * 1e308)));
        Assert.Equal(expected, y[0, 0], expected * 1e-15);
        Assert.Equal(-expected, y[1, 0], expected * 1e-15);
        Assert.Equal(1.62e308, layer.RunningVariance[0], 1e294);
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, -1 }));
        Assert.All(dx.Enumerate(), v => Assert.True(double.IsFinite(v)));
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void A_subnormal_epsilon_on_a_constant_column_gives_finite_values(string strategy)
    {
        var layer = new BatchNormLayer(1, epsilon: double.Epsilon, backward: ContractTests.Strategy(strategy));
        layer.Beta[0] = 0.25;
        Matrix<double> y = layer.Forward(Matrix<double>.Build.Dense(4, 1, 3.0));
        Assert.All(y.Enumerate(), v => Assert.Equal(0.25, v));
        Matrix<double> dy = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1e-150, -2e-150, 0.5e-150, 0 });
        Matrix<double> dx = layer.Backward(dy);
        double inverseStd = 1 / Math.Sqrt(double.Epsilon), mean = dy.Column(0).Average();
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(inverseStd * (dy[i, 0] - mean), dx[i, 0], Math.Abs(inverseStd * 1e-150) * 1e-13);
        }
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void A_dx_beyond_the_range_of_double_names_its_column_and_changes_nothing(string strategy)
    {
        // A constant column with ε = 1e-300: 1/√ε = 1e150, and dy of 1e200 makes dx about 1e350.
        var layer = new BatchNormLayer(2, epsilon: 1e-300, backward: ContractTests.Strategy(strategy));
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2, 4 }, new[] { 5.0, 5, 5 }));
        var snapshot = new LayerSnapshot(layer);
        Matrix<double> dy = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 0, -1 }, new[] { 1e200, -1e200, 0.5e200 });
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
        Assert.Contains("Column 1 of outputGradient", e.Message);
        Assert.Contains("dx", e.Message);
        Assert.Contains("overflows", e.Message);
        snapshot.AssertUnchanged();
    }

    [Fact]
    public void Where_the_staged_graph_overflows_inside_and_the_closed_form_does_not_the_staged_strategy_says_so()
    {
        // σ² ≈ 5e-320 and ε the smallest double: 1/√(σ² + ε) ≈ 4.5e159, so the staged node dσ² ≈ x̂·dx̂·istd² overflows,
        // while the closed form's dx ≈ 1e159 is an ordinary double.
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnArrays(new[] { -3e-160, -1e-160, 1e-160, 3e-160 });
        Matrix<double> dy = Matrix<double>.Build.DenseOfColumnArrays(new[] { 0.5, -0.25, 1, 0.125 });
        var closed = new BatchNormLayer(1, epsilon: double.Epsilon);
        closed.Forward(x);
        Assert.All(closed.Backward(dy).Enumerate(), v => Assert.True(double.IsFinite(v)));
        var staged = new BatchNormLayer(1, epsilon: double.Epsilon, backward: BackwardStrategy.Staged);
        staged.Forward(x);
        var e = Assert.Throws<ArgumentException>(() => staged.Backward(dy));
        Assert.Contains("Column 0", e.Message);
        Assert.Contains("staged", e.Message);
    }

    [Fact]
    public void An_output_beyond_the_range_of_double_names_its_column_and_changes_nothing()
    {
        var layer = new BatchNormLayer(2);
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2, 4 }, new[] { 0.0, 1, 5 });
        layer.Forward(x);
        layer.Gamma[1] = 1.5e308;     // x̂ reaches 1.37 in column 1, so γ·x̂ is about 2e308
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Contains("Column 1 of input", e.Message);
        Assert.Contains("overflows", e.Message);
        snapshot.AssertUnchanged();

        // In inference, too, unless the input itself held NaN there (which inference passes through).
        layer.IsTraining = false;
        Assert.Contains("overflows", Assert.Throws<ArgumentException>(() => layer.Forward(x * 100)).Message);
        layer.Gamma[1] = 1;
        Matrix<double> withNaN = x.Clone();
        withNaN[1, 1] = double.NaN;
        Assert.True(double.IsNaN(layer.Forward(withNaN)[1, 1]));
    }

    [Theory]
    [InlineData("batch norm")]
    [InlineData("layer norm")]
    [InlineData("batch renorm")]
    public void A_non_finite_gamma_or_beta_names_the_feature_and_changes_nothing(string kind)
    {
        var layer = (NormalizationLayer)ContractTests.Create(kind, features: 6);
        (Matrix<double> x, _) = ContractTests.Batch(8, 6, seed: 7);
        layer.Forward(x);
        layer.Beta[4] = double.NaN;
        var snapshot = layer.ExportStateOrNull();
        NormalizationCache? cache = layer.Cache;
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(x));
        Assert.Contains("β[4] = NaN", e.Message);
        Assert.Same(cache, layer.Cache);
        Assert.Equal(snapshot, layer.ExportStateOrNull());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Running_statistics_edited_into_nonsense_are_named_before_anything_changes(bool training)
    {
        foreach ((int feature, double mean, double variance) in new[] { (2, 0.0, -1.0), (0, double.NaN, 1.0), (1, 0.0, double.PositiveInfinity) })
        {
            var layer = new BatchNormLayer(3) { IsTraining = training };
            layer.RunningMean[feature] = mean;
            layer.RunningVariance[feature] = variance;
            var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 3, (i, j) => i + j)));
            Assert.Contains(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"RunningVariance[{feature}] = {variance:R}"), e.Message);
            Assert.Null(layer.Cache);
            Assert.Equal(0, layer.BatchesTracked);
        }
    }

    // ---- Messages that point at the real cause ----

    [Theory]
    [MemberData(nameof(Strategies))]
    public void After_an_inference_forward_of_NaN_a_finite_output_gradient_is_not_blamed(string strategy)
    {
        var layer = new BatchNormLayer(2, backward: ContractTests.Strategy(strategy)) { IsTraining = false };
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2 }, new[] { double.NaN, 3 });
        layer.Forward(x);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Backward(Matrix<double>.Build.Dense(2, 2, 0.5)));
        Assert.Contains("Column 1 of the last Forward's normalized values is not finite", e.Message);
        Assert.Contains("output gradient is fine", e.Message);
    }

    [Fact]
    public void An_exchange_that_fails_inside_its_all_gather_is_named()
    {
        var layer = new BatchNormLayer(2) { StatisticsExchange = new ShortExchange() };
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(3, 2, (i, j) => i * j)));
        Assert.Contains(nameof(ShortExchange), e.Message);
        Assert.Contains("from each of the 3 workers", e.Message);
        Assert.Null(layer.Cache);

        var huge = new BatchNormLayer(2) { StatisticsExchange = new ShortExchange(int.MaxValue) };
        Assert.Contains("do not fit", Assert.Throws<InvalidOperationException>(() => huge.Forward(Matrix<double>.Build.Dense(3, 2))).Message);
    }

    /// <summary>A layer of the contract that forwards to another and, after a number of Forwards, throws.</summary>
    private sealed class FailsAfter(INormalizationLayer inner, int calls) : INormalizationLayer
    {
        private int _calls;

        public int Features => inner.Features;

        public double Epsilon => inner.Epsilon;

        public bool IsTraining { get => inner.IsTraining; set => inner.IsTraining = value; }

        public BackwardStrategy BackwardStrategy { get => inner.BackwardStrategy; set => inner.BackwardStrategy = value; }

        public System.Collections.Generic.IReadOnlyList<LayerParameter> Parameters => inner.Parameters;

        public NormalizationCache? Cache => inner.Cache;

        public Matrix<double> Forward(Matrix<double> input) => ++_calls > calls ? throw new TimeoutException("stopped") : inner.Forward(input);

        public void Forward(Matrix<double> input, Matrix<double> output) => Forward(input).CopyTo(output);

        public Matrix<double> Backward(Matrix<double> outputGradient) => inner.Backward(outputGradient);

        public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient) => inner.Backward(outputGradient, inputGradient);

        public void ResetParameters() => inner.ResetParameters();

        public string ExportState() => inner.ExportState();

        public void ImportState(string json) => inner.ImportState(json);
    }

    /// <summary>The closed form, except that its first step waits to be released once it has signalled that it is inside.</summary>
    private sealed class Pausing(ManualResetEventSlim entered, ManualResetEventSlim release) : BackwardStrategy
    {
        public override string Name => "pausing";

        public override int SumCount => ClosedForm.SumCount;

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
        {
            entered.Set();
            release.Wait(TimeSpan.FromSeconds(10));
            ClosedForm.SegmentSums(segment, sums, inputGradient);
        }

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
            => ClosedForm.SegmentInputGradient(segment, sums, inputGradient);
    }

    /// <summary>An exchange that reports a worker count it does not gather for.</summary>
    private sealed class ShortExchange(int workerCount = 3) : IStatisticsExchange
    {
        public int WorkerCount => workerCount;

        public int Rank => 0;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
        {
            local.CopyTo(gathered);
            local.CopyTo(gathered[local.Length..]);
            local.CopyTo(gathered[(3 * local.Length)..]);   // past the end of what 3 workers take
        }
    }
}

/// <summary>Helpers for comparing a layer's saved state before and after a failed call.</summary>
internal static class StateExtensions
{
    /// <summary>The state, or null where the layer holds a value that cannot be saved (which is then compared by identity of the text).</summary>
    public static string ExportStateOrNull(this NormalizationLayer layer)
    {
        try
        {
            return layer.ExportState();
        }
        catch (InvalidOperationException e)
        {
            return e.Message + string.Join(",", layer.Gamma) + string.Join(",", layer.Beta);
        }
    }
}
