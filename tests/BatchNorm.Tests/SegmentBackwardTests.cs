using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Double;

namespace BatchNorm.Tests;

/// <summary>
/// Each strategy's two steps on one segment, called directly, against its formulas worked out here: every sum, every
/// node of the staged graph (with a Σ(x − μ) that is not zero, so the path from μ through σ² shows), the closed form,
/// its two-value form split across workers, and frozen statistics; then the segment's and the strategy's own checks.
/// </summary>
public class SegmentBackwardTests
{
    // x̂ need not sum to zero when a strategy is called directly: Σx̂ = 0.75 here, so Σ(x − μ) = 0.75·√(σ² + ε).
    private static readonly double[] XHat = [-1.25, 0.5, 1.5];
    private static readonly double[] Dy = [0.75, -2, 0.5];
    private const double Gamma = 1.5, Variance = 3, Epsilon = 1;

    private static double InverseStd => 1 / Math.Sqrt(Variance + Epsilon);     // 1/2

    [Fact]
    public void Staged_sums_are_node_y_and_nodes_sigma_squared_and_mu()
    {
        double[] sums = new double[5], scratch = new double[3];
        var segment = new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon);
        BackwardStrategy.Staged.SegmentSums(segment, sums, scratch);

        // dx̂ = γ·dy; dσ² = Σ dx̂·(x − μ)·(−½)·(σ² + ε)^(−3/2); dμ (direct) = Σ dx̂·(−1/√(σ² + ε)); Σ(x − μ) = Σ x̂·√(σ² + ε).
        double std = 2, istd = 0.5;
        double[] dXHat = Dy.Select(d => Gamma * d).ToArray();
        Assert.Equal(Dy.Zip(XHat, (a, b) => a * b).Sum(), sums[0], 1e-15);
        Assert.Equal(Dy.Sum(), sums[1], 1e-15);
        Assert.Equal(dXHat.Zip(XHat, (g, h) => g * h * std * -0.5 * istd * istd * istd).Sum(), sums[2], 1e-15);
        Assert.Equal(dXHat.Sum(g => g * -istd), sums[3], 1e-15);
        Assert.Equal(XHat.Sum() * std, sums[4], 1e-15);
        Assert.Equal(dXHat, scratch);
    }

    [Fact]
    public void Staged_input_gradient_walks_node_mu_whole_and_then_node_x()
    {
        // From sums chosen here: dσ² = 0.3, dμ (direct) = −0.7, Σ(x − μ) = 0.9, over N = 3 values, with dx̂ in the scratch.
        double[] sums = [99, 99, 0.3, -0.7, 0.9], dx = [0.4, -1.1, 0.6];
        var segment = new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon);
        BackwardStrategy.Staged.SegmentInputGradient(segment, sums, dx);

        // dμ = dμ (direct) + dσ²·(−2/N)·Σ(x − μ); dxᵢ = dx̂ᵢ/√(σ² + ε) + dσ²·2·(xᵢ − μ)/N + dμ/N.
        double dMean = -0.7 + (0.3 * (-2.0 / 3) * 0.9);
        double[] dXHat = [0.4, -1.1, 0.6];
        for (int i = 0; i < 3; i++)
        {
            double centered = XHat[i] * 2;
            Assert.Equal((dXHat[i] * 0.5) + (0.3 * 2 * centered / 3) + (dMean / 3), dx[i], 1e-15);
        }
    }

    [Fact]
    public void Staged_takes_its_count_from_the_whole_segment_when_it_holds_only_a_part()
    {
        // This worker holds 2 of 5 values: μ and σ² were taken over 5, so every 1/N is 1/5.
        double[] sums = [0, 0, 0.3, -0.7, 0.9], dx = [0.4, -1.1];
        var part = new BackwardSegment(Dy.AsSpan(0, 2), XHat.AsSpan(0, 2), Gamma, Variance, Epsilon, count: 5, offset: 3);
        Assert.Equal(2, part.Length);
        Assert.Equal(5, part.Count);
        Assert.Equal(3, part.Offset);
        BackwardStrategy.Staged.SegmentInputGradient(part, sums, dx);
        double dMean = -0.7 + (0.3 * (-2.0 / 5) * 0.9);
        Assert.Equal((0.4 * 0.5) + (0.3 * 2 * (XHat[0] * 2) / 5) + (dMean / 5), dx[0], 1e-15);
        Assert.Equal((-1.1 * 0.5) + (0.3 * 2 * (XHat[1] * 2) / 5) + (dMean / 5), dx[1], 1e-15);
    }

    [Theory]
    [InlineData("staged")]
    [InlineData("closed")]
    public void With_frozen_statistics_dx_is_gamma_dy_over_the_standard_deviation_and_no_path_goes_through_the_statistics(string name)
    {
        BackwardStrategy strategy = ContractTests.Strategy(name);
        double[] sums = Enumerable.Repeat(double.NaN, strategy.SumCount).ToArray(), dx = new double[3];
        var segment = new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon, frozenStatistics: true);
        Assert.True(segment.FrozenStatistics);
        strategy.SegmentSums(segment, sums, dx);
        Assert.Equal(Dy.Zip(XHat, (a, b) => a * b).Sum(), sums[0], 1e-15);
        Assert.Equal(Dy.Sum(), sums[1], 1e-15);
        Assert.All(sums.Skip(2), s => Assert.Equal(0, s));
        strategy.SegmentInputGradient(segment, sums, dx);
        Assert.Equal(Dy.Select(d => Gamma * d * 0.5).ToArray(), dx);

        // Two frozen values are not the two-value case: the same formula holds.
        double[] two = new double[2], twoSums = new double[strategy.SumCount];
        var pair = new BackwardSegment(Dy.AsSpan(0, 2), XHat.AsSpan(0, 2), Gamma, Variance, Epsilon, frozenStatistics: true);
        strategy.SegmentSums(pair, twoSums, two);
        strategy.SegmentInputGradient(pair, twoSums, two);
        Assert.Equal([Gamma * Dy[0] * 0.5, Gamma * Dy[1] * 0.5], two);
    }

    [Fact]
    public void Closed_form_sums_and_input_gradient()
    {
        double[] sums = new double[3], dx = new double[3];
        var segment = new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon);
        BackwardStrategy.ClosedForm.SegmentSums(segment, sums, dx);
        double sumDyXHat = Dy.Zip(XHat, (a, b) => a * b).Sum(), sumDy = Dy.Sum();
        Assert.Equal(sumDyXHat, sums[0], 1e-15);
        Assert.Equal(sumDy, sums[1], 1e-15);
        Assert.Equal(0, sums[2]);

        // dx = γ/√(σ² + ε)·(dy − Σdy/N − x̂·Σdy·x̂/N), from the sums it is given.
        double[] given = [0.9, -0.6, 123];
        BackwardStrategy.ClosedForm.SegmentInputGradient(segment, given, dx);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Gamma * 0.5 * (Dy[i] - (-0.6 / 3) - (XHat[i] * 0.9 / 3)), dx[i], 1e-14);
        }

        // A part of a larger segment divides by the whole count.
        double[] part = new double[2];
        BackwardStrategy.ClosedForm.SegmentInputGradient(new BackwardSegment(Dy.AsSpan(1, 2), XHat.AsSpan(1, 2), Gamma, Variance, Epsilon, count: 6, offset: 1), given, part);
        Assert.Equal(Gamma * 0.5 * (Dy[1] - (-0.6 / 6) - (XHat[1] * 0.9 / 6)), part[0], 1e-15);
        Assert.Equal(Gamma * 0.5 * (Dy[2] - (-0.6 / 6) - (XHat[2] * 0.9 / 6)), part[1], 1e-15);
    }

    [Fact]
    public void Closed_form_two_values_use_their_difference_without_cancellation()
    {
        // dx₁ = −dx₂ = γ·ε·(σ² + ε)^(−3/2)·(dy₁ − dy₂)/2 = 1.5·1/8·(0.75 + 2)/2.
        double[] sums = new double[3], dx = new double[2];
        var pair = new BackwardSegment(Dy.AsSpan(0, 2), XHat.AsSpan(0, 2), Gamma, Variance, Epsilon);
        BackwardStrategy.ClosedForm.SegmentSums(pair, sums, dx);
        Assert.Equal(0.75 - -2, sums[2]);
        BackwardStrategy.ClosedForm.SegmentInputGradient(pair, sums, dx);
        double first = 1.5 * 0.125 * (2.75 / 2);
        Assert.Equal([first, -first], dx);

        // Split across two workers, each signs its value by its place in the pair, and the sums add up to dy₁ − dy₂.
        double[] firstSums = new double[3], secondSums = new double[3], dx1 = new double[1], dx2 = new double[1];
        var one = new BackwardSegment(Dy.AsSpan(0, 1), XHat.AsSpan(0, 1), Gamma, Variance, Epsilon, count: 2, offset: 0);
        var two = new BackwardSegment(Dy.AsSpan(1, 1), XHat.AsSpan(1, 1), Gamma, Variance, Epsilon, count: 2, offset: 1);
        BackwardStrategy.ClosedForm.SegmentSums(one, firstSums, dx1);
        BackwardStrategy.ClosedForm.SegmentSums(two, secondSums, dx2);
        Assert.Equal(0.75, firstSums[2]);
        Assert.Equal(2, secondSums[2]);
        double[] total = [firstSums[0] + secondSums[0], firstSums[1] + secondSums[1], firstSums[2] + secondSums[2]];
        BackwardStrategy.ClosedForm.SegmentInputGradient(one, total, dx1);
        BackwardStrategy.ClosedForm.SegmentInputGradient(two, total, dx2);
        Assert.Equal(first, dx1[0]);
        Assert.Equal(-first, dx2[0]);
    }

    [Fact]
    public void The_strategies_name_themselves_and_their_sums()
    {
        Assert.Equal("staged", BackwardStrategy.Staged.Name);
        Assert.Equal("closed", BackwardStrategy.ClosedForm.Name);
        Assert.Equal("staged", BackwardStrategy.Staged.ToString());
        Assert.Equal("closed", BackwardStrategy.ClosedForm.ToString());
        Assert.Equal(5, BackwardStrategy.Staged.SumCount);
        Assert.Equal(3, BackwardStrategy.ClosedForm.SumCount);
        Assert.Equal(2, BackwardStrategy.ParameterSums);
    }

    [Theory]
    [InlineData("staged")]
    [InlineData("closed")]
    public void Both_steps_check_the_lengths_of_their_spans(string name)
    {
        BackwardStrategy strategy = ContractTests.Strategy(name);
        int sumCount = strategy.SumCount;
        foreach (int wrong in new[] { sumCount - 1, sumCount + 1 })
        {
            var e = Assert.Throws<ArgumentException>(() => strategy.SegmentSums(new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon), new double[wrong], new double[3]));
            Assert.Equal("sums", e.ParamName);
            Assert.StartsWith($"sums has {wrong} values, but the {name} strategy needs {sumCount}.", e.Message, StringComparison.Ordinal);
            e = Assert.Throws<ArgumentException>(() => strategy.SegmentInputGradient(new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon), new double[wrong], new double[3]));
            Assert.Equal("sums", e.ParamName);
        }

        foreach (int wrong in new[] { 2, 4 })
        {
            var e = Assert.Throws<ArgumentException>(() => strategy.SegmentSums(new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon), new double[sumCount], new double[wrong]));
            Assert.Equal("inputGradient", e.ParamName);
            Assert.StartsWith($"inputGradient has {wrong} values, but the segment needs 3.", e.Message, StringComparison.Ordinal);
            e = Assert.Throws<ArgumentException>(() => strategy.SegmentInputGradient(new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon), new double[sumCount], new double[wrong]));
            Assert.Equal("inputGradient", e.ParamName);
        }
    }

    [Fact]
    public void A_segment_checks_that_its_parts_fit_together()
    {
        var segment = new BackwardSegment(Dy, XHat, Gamma, 0, Epsilon);
        Assert.Equal(1 / Math.Sqrt(Epsilon), segment.InverseStandardDeviation);
        Assert.Equal((3, 0, 3, 1.5, 0.0, 1.0, false), (segment.Count, segment.Offset, segment.Length, segment.Gamma, segment.Variance, segment.Epsilon, segment.FrozenStatistics));
        Assert.Equal(Dy, segment.OutputGradient.ToArray());
        Assert.Equal(XHat, segment.NormalizedInput.ToArray());
        Assert.Equal(0.5, new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon).InverseStandardDeviation);

        var lengths = Assert.Throws<ArgumentException>(() => new BackwardSegment(Dy, XHat.AsSpan(0, 2), Gamma, Variance, Epsilon));
        Assert.Equal("normalizedInput", lengths.ParamName);
        Assert.StartsWith("normalizedInput has 2 values, but the output gradient of the segment needs 3.", lengths.Message, StringComparison.Ordinal);

        foreach (double variance in new[] { -double.Epsilon, -1, double.NaN, double.PositiveInfinity })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BackwardSegment(Dy, XHat, Gamma, variance, Epsilon));
            Assert.Equal("variance", e.ParamName);
            Assert.StartsWith("σ² must be finite and at least 0.", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal("epsilon", Assert.Throws<ArgumentOutOfRangeException>(() => new BackwardSegment(Dy, XHat, Gamma, Variance, 0)).ParamName);
        Assert.Equal(double.MaxValue, new BackwardSegment(Dy, XHat, Gamma, double.MaxValue, Epsilon).Variance);

        // A part fits when it lies in [0, count): at the end exactly, but not one further, and not before the start.
        Assert.Equal(4, new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon, count: 7, offset: 4).Offset);
        foreach ((int? count, int offset) in new (int?, int)[] { (7, 5), (2, 0), (null, 1), (3, -1) })
        {
            var e = Assert.Throws<ArgumentException>(() => new BackwardSegment(Dy, XHat, Gamma, Variance, Epsilon, count: count, offset: offset));
            Assert.Equal("count", e.ParamName);
            Assert.StartsWith($"A part of 3 values at offset {offset} does not fit in a segment of {count ?? 3}.", e.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("staged")]
    [InlineData("closed")]
    public void Backward_over_a_cache_gives_every_gradient_into_any_storage(string name)
    {
        // Batch norm over 4 rows, feature 0 = {1, 3, 5, 7} (μ = 4, σ² = 5), feature 1 = {2, 2, 0, 4} (μ = 2, σ² = 2).
        var layer = new BatchNormLayer(2, epsilon: 0.25);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 2 }, { 5, 0 }, { 7, 4 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1 }, { -0.25, 2 }, { 1, 0.5 }, { 0, -0.75 } });
        layer.Forward(x);
        Vector<double> gamma = Vector<double>.Build.DenseOfArray([2, -0.5]);
        foreach (bool dense in new[] { true, false })
        {
            Matrix<double> dx = dense ? Matrix<double>.Build.Dense(4, 2, double.NaN) : SparseMatrix.Create(4, 2, 0.0);
            Vector<double> dGamma = Vector<double>.Build.Dense(2, double.NaN), dBeta = dense ? Vector<double>.Build.Dense(2, double.NaN) : Vector<double>.Build.Sparse(2);
            ContractTests.Strategy(name).Backward(layer.Cache!, gamma, dense ? dy : SparseMatrix.OfMatrix(dy), dx, dGamma, dBeta);
            double[] mean = [4, 2], variance = [5, 2];
            for (int j = 0; j < 2; j++)
            {
                double istd = 1 / Math.Sqrt(variance[j] + 0.25);
                double[] xHat = Enumerable.Range(0, 4).Select(i => (x[i, j] - mean[j]) * istd).ToArray();
                double sumDy = dy.Column(j).Sum(), sumDyXHat = Enumerable.Range(0, 4).Sum(i => dy[i, j] * xHat[i]);
                for (int i = 0; i < 4; i++)
                {
                    Assert.Equal(gamma[j] * istd * (dy[i, j] - (sumDy / 4) - (xHat[i] * sumDyXHat / 4)), dx[i, j], 1e-14);
                }

                Assert.Equal(sumDyXHat, dGamma[j], 1e-14);
                Assert.Equal(sumDy, dBeta[j], 1e-15);
            }
        }
    }

    [Fact]
    public void Backward_over_a_cache_checks_every_argument_and_names_a_bad_column()
    {
        var layer = new BatchNormLayer(2);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 2 }, { 5, 0 } }));
        NormalizationCache cache = layer.Cache!;
        Vector<double> v = Vector<double>.Build.Dense(2), v3 = Vector<double>.Build.Dense(3);
        Matrix<double> m = Matrix<double>.Build.Dense(3, 2), m23 = Matrix<double>.Build.Dense(2, 3), m32 = Matrix<double>.Build.Dense(3, 3);
        BackwardStrategy s = BackwardStrategy.ClosedForm;
        Assert.Equal("cache", Assert.Throws<ArgumentNullException>(() => s.Backward(null!, v, m, m, v, v)).ParamName);
        Assert.Equal("gamma", Assert.Throws<ArgumentNullException>(() => s.Backward(cache, null!, m, m, v, v)).ParamName);
        Assert.Equal("outputGradient", Assert.Throws<ArgumentNullException>(() => s.Backward(cache, v, null!, m, v, v)).ParamName);
        Assert.Equal("inputGradient", Assert.Throws<ArgumentNullException>(() => s.Backward(cache, v, m, null!, v, v)).ParamName);
        Assert.Equal("gammaGradient", Assert.Throws<ArgumentNullException>(() => s.Backward(cache, v, m, m, null!, v)).ParamName);
        Assert.Equal("betaGradient", Assert.Throws<ArgumentNullException>(() => s.Backward(cache, v, m, m, v, null!)).ParamName);
        var dyShape = Assert.Throws<ArgumentException>(() => s.Backward(cache, v, m23, m, v, v));
        Assert.Equal("outputGradient", dyShape.ParamName);
        Assert.StartsWith("Matrix dimensions must agree: outputGradient is 2x3, the cached forward input is 3x2.", dyShape.Message, StringComparison.Ordinal);
        Assert.Equal("outputGradient", Assert.Throws<ArgumentException>(() => s.Backward(cache, v, m32, m, v, v)).ParamName);
        Assert.Equal("inputGradient", Assert.Throws<ArgumentException>(() => s.Backward(cache, v, m, m23, v, v)).ParamName);
        Assert.Equal("inputGradient", Assert.Throws<ArgumentException>(() => s.Backward(cache, v, m, m32, v, v)).ParamName);
        Assert.Equal("gamma", Assert.Throws<ArgumentException>(() => s.Backward(cache, v3, m, m, v, v)).ParamName);
        Assert.Equal("gammaGradient", Assert.Throws<ArgumentException>(() => s.Backward(cache, v, m, m, v3, v)).ParamName);
        Assert.Equal("betaGradient", Assert.Throws<ArgumentException>(() => s.Backward(cache, v, m, m, v, v3)).ParamName);

        Matrix<double> bad = Matrix<double>.Build.Dense(3, 2, 0.5);
        bad[2, 1] = double.NaN;
        Vector<double> dGamma = Vector<double>.Build.Dense(2, 7.0);
        var e = Assert.Throws<ArgumentException>(() => BackwardStrategy.Staged.Backward(cache, v, bad, m, dGamma, v.Clone()));
        Assert.Equal("outputGradient", e.ParamName);
        Assert.StartsWith("Column 1 of outputGradient cannot be back-propagated", e.Message, StringComparison.Ordinal);
        Assert.Equal([7.0, 7], dGamma.ToArray());
    }

    [Fact]
    public void The_cache_checks_the_elements_asked_for_and_hands_out_copies()
    {
        var layer = new BatchNormLayer(2) { VirtualBatchSize = 2 };
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 2 }, { 5, 0 }, { 7, 4 } });
        layer.Forward(x);
        NormalizationCache cache = layer.Cache!;
        Assert.Equal((4, 2, 2, 2, 2, 1, 4), (cache.BatchSize, cache.Features, cache.RowBlocks, cache.ColumnBlocks, cache.SegmentRows, cache.SegmentColumns, cache.SegmentCount));
        Assert.Equal([2.0, 6, 2, 2], cache.Mean.ToArray());
        Assert.Equal([1.0, 1, 0, 4], cache.Variance.ToArray());
        Assert.Equal(0, cache.SegmentOf(0, 0));
        Assert.Equal(1, cache.SegmentOf(3, 0));
        Assert.Equal(2, cache.SegmentOf(1, 1));
        Assert.Equal(3, cache.SegmentOf(2, 1));
        Assert.Equal(1e-5, cache.Epsilon);
        Assert.True(cache.IsTraining);
        Assert.False(cache.FrozenStatistics);

        foreach ((int row, int column) in new[] { (-1, 0), (4, 0) })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => cache.SegmentOf(row, column));
            Assert.Equal("row", e.ParamName);
            Assert.StartsWith("The row must lie in [0, 4).", e.Message, StringComparison.Ordinal);
        }

        foreach ((int row, int column) in new[] { (0, -1), (3, 2) })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => cache.SegmentOf(row, column));
            Assert.Equal("column", e.ParamName);
            Assert.StartsWith("The column must lie in [0, 2).", e.Message, StringComparison.Ordinal);
        }

        foreach (int feature in new[] { -1, 2 })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => cache.NormalizedColumn(feature));
            Assert.Equal("feature", e.ParamName);
            Assert.StartsWith("The feature index must lie in [0, 2).", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal(cache.NormalizedInput.Slice(4, 4).ToArray(), cache.NormalizedColumn(1).ToArray());
        Matrix<double> copy = cache.NormalizedInputToMatrix();
        Assert.Equal(cache.NormalizedColumn(0).ToArray(), copy.Column(0).ToArray());
        copy[0, 0] = 42;
        Assert.NotEqual(42, cache.NormalizedColumn(0)[0]);
    }
}
