using System;
using System.Globalization;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>LayerNormLayer and GroupNormLayer.</summary>
public class RowNormalizationTests
{
    public static TheoryData<string> Strategies => new() { "staged", "closed" };

    private static BackwardStrategy Strategy(string name) => ContractTests.Strategy(name);

    [BatchNormProperty(CasesFactor = 3)]
    public void Group_norm_backward_matches_central_differences(RowCase c, BackwardStrategy strategy)
        => CheckGradients(c.Layer(strategy), c);

    [BatchNormProperty(CasesFactor = 3)]
    public void Two_features_per_group_with_an_epsilon_near_the_spread(TwoPerGroup t, BackwardStrategy strategy)
    {
        // Values within ±10 of zero, so σ² ≤ 100 and ε = 10 keeps ε/(σ² + ε) above 0.09.
        CheckGradients(t.Case.Layer(strategy, epsilon: 10), t.Case);
    }

    [BatchNormProperty(CasesFactor = 3)]
    public void Layer_norm_backward_matches_central_differences(RowCase c, BackwardStrategy strategy)
    {
        // Two features in a row are the two-element case, covered above with a suitable ε.
        if (c.X.ColumnCount == 2)
        {
            return;
        }

        var layer = new LayerNormLayer(c.X.ColumnCount, backward: strategy);
        Vector<double>.Build.DenseOfArray(c.Gamma).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray(c.Beta).CopyTo(layer.Beta);
        CheckGradients(layer, c);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void An_element_of_dx_that_cancels_to_nearly_zero_is_judged_against_the_size_of_dx(string strategy)
    {
        // A case the layer-norm property once generated. dx[2, 7] is 1.1e-7 while the largest |dx| is 0.036, and
        // the central difference is off there by 2.3e-13: rounding noise of about 1e-16·|y| divided by the step.
        // Element-wise that is a relative error of 1e-6, although both strategies agree on the element to 1e-11.
        var x = Matrix<double>.Build.DenseOfArray(new[,]
        {
            { 61.96, -53.41, -16.08, 4.55, -82.63, 66.8, -20.68, -41.09 },
            { 64.55, -50.01, -16.24, 2.15, -94.64, 66.32, -23.23, -47.69 },
            { 61.95, -55.39, 2.91, -0.3, -76.54, 68.34, -17.27, -51.39 },
        });
        var dy = Matrix<double>.Build.DenseOfArray(new[,]
        {
            { -0.788, -0.233, -0.24, -0.503, -0.297, -0.635, -0.669, -0.626 },
            { -0.257, 0.078, -0.821, 0.929, 0.761, 0.164, -0.544, -0.836 },
            { -0.852, 0.385, -0.421, 0.297, 0.356, 0.293, 0.168, 0.353 },
        });
        var layer = new LayerNormLayer(8, backward: Strategy(strategy));
        Vector<double>.Build.DenseOfArray([0.905, 2.062, 0.761, 2.193, 1.441, 1.3, 0.341, 1.345]).CopyTo(layer.Gamma);
        const double h = 1e-3;
        Matrix<double> numerical = ((GradientCheck.NumericalGradient(m => layer.Forward(m), x.Clone(), dy, h) * 4)
            - GradientCheck.NumericalGradient(m => layer.Forward(m), x.Clone(), dy, 2 * h)) / 3;
        layer.Forward(x);
        Matrix<double> dx = layer.Backward(dy);

        Assert.InRange(Math.Abs(dx[2, 7]), 1e-7, 1.2e-7);
        // The noise itself depends on the rounding of each machine's kernels, but both errors are dominated by the same
        // element, so their ratio does not: the floor, 1e-4·(max|a| + max|b|) = 7.2e-6, is 33 times |a| + |b| = 2.2e-7 there.
        double elementWise = GradientCheck.RelativeError(dx, numerical);
        double floored = GradientCheck.RelativeError(dx, numerical, GradientCheck.DefaultRelativeFloor);
        Assert.True(floored < 1e-6, $"with the floor {floored:E2}");
        Assert.True(elementWise >= 20 * floored, $"element-wise {elementWise:E2}, with the floor {floored:E2}");
    }

    [BatchNormProperty]
    public void Group_norm_with_one_group_equals_layer_norm(RowCase c)
    {
        var group = new GroupNormLayer(c.X.ColumnCount, 1);
        var layer = new LayerNormLayer(c.X.ColumnCount);
        Vector<double>.Build.DenseOfArray(c.Gamma).CopyTo(group.Gamma);
        Vector<double>.Build.DenseOfArray(c.Gamma).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray(c.Beta).CopyTo(group.Beta);
        Vector<double>.Build.DenseOfArray(c.Beta).CopyTo(layer.Beta);
        Assert.Equal(layer.Forward(c.X), group.Forward(c.X));
        Assert.Equal(layer.Backward(c.Dy), group.Backward(c.Dy));
        Assert.Equal(layer.GammaGradient, group.GammaGradient);
        Assert.Equal(layer.BetaGradient, group.BetaGradient);
    }

    [BatchNormProperty]
    public void Each_group_of_each_row_has_mean_beta_free_zero_and_unit_spread(RowCase c)
    {
        var layer = new GroupNormLayer(c.X.ColumnCount, c.Groups, epsilon: 1e-12);
        Matrix<double> y = layer.Forward(c.X);
        int size = c.X.ColumnCount / c.Groups;
        for (int i = 0; i < c.X.RowCount; i++)
        {
            for (int g = 0; g < c.Groups; g++)
            {
                double[] group = Enumerable.Range(g * size, size).Select(j => y[i, j]).ToArray();
                double[] source = Enumerable.Range(g * size, size).Select(j => c.X[i, j]).ToArray();
                double mean = group.Average();
                double variance = group.Select(v => (v - mean) * (v - mean)).Average();
                bool constant = source.All(v => v == source[0]);
                Assert.True(Math.Abs(mean) < 1e-12, $"row {i} group {g}: mean {mean}");
                Assert.True(constant ? variance == 0 : Math.Abs(variance - 1) < 1e-9, $"row {i} group {g}: variance {variance}");
            }
        }
    }

    [Fact]
    public void Layer_norm_works_on_a_single_row_and_ignores_the_other_rows()
    {
        var layer = new LayerNormLayer(3);
        Matrix<double> one = layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2, 6 } }));
        Matrix<double> many = layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 5.0, -1, 0 }, { 1, 2, 6 } }));
        double inverseStd = 1 / Math.Sqrt((14.0 / 3) + 1e-5);
        Assert.Equal((1 - 3) * inverseStd, one[0, 0], 14);
        Assert.Equal(one.Row(0), many.Row(1));
    }

    [Fact]
    public void Bad_arguments_are_rejected_clearly()
    {
        Assert.Contains("must divide", Assert.Throws<ArgumentException>(() => new GroupNormLayer(10, 4)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new GroupNormLayer(10, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LayerNormLayer(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LayerNormLayer(3, epsilon: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LayerNormLayer(3, epsilon: double.NaN));
        Assert.Throws<InvalidOperationException>(() => new LayerNormLayer(3).Backward(Matrix<double>.Build.Dense(2, 3)));
    }

    [Fact]
    public void Bad_input_changes_nothing()
    {
        var layer = new GroupNormLayer(4, 2);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2, 3, 5 }, { 4, 0, -1, 2 }, { 2, 5, 7, 1 } });
        Matrix<double> y = layer.Forward(x);
        layer.Backward(Matrix<double>.Build.Dense(3, 4, (i, j) => i - j));
        double[] gamma = layer.GammaGradient.ToArray(), beta = layer.BetaGradient.ToArray();
        Matrix<double> dxBefore = layer.Backward(Matrix<double>.Build.Dense(3, 4, (i, j) => i - j));

        Matrix<double> bad = x.Clone();
        bad[2, 3] = double.NaN;
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(bad));
        Assert.Contains("Row 2", e.Message);
        Assert.Contains("group 1", e.Message);
        Assert.Contains("4x3", Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(4, 3))).Message);
        Assert.Contains("2x4", Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(2, 4))).Message);
        Matrix<double> badGradient = Matrix<double>.Build.Dense(3, 4, 1.0);
        badGradient[0, 1] = double.PositiveInfinity;
        Assert.Contains("Column 1", Assert.Throws<ArgumentException>(() => layer.Backward(badGradient)).Message);
        Assert.Throws<ArgumentNullException>(() => layer.Forward((Matrix<double>)null!));
        Assert.Throws<ArgumentException>(() => layer.BackwardStrategy = new TooFewSums());

        // The cache is still the last good Forward's, and the gradients are unchanged.
        Assert.Equal(gamma, layer.GammaGradient.ToArray());
        Assert.Equal(beta, layer.BetaGradient.ToArray());
        Assert.Equal(dxBefore, layer.Backward(Matrix<double>.Build.Dense(3, 4, (i, j) => i - j)));
        Assert.Equal(y, layer.Forward(x));
    }

    internal static void CheckGradients(NormalizationLayer layer, RowCase c)
    {
        // Each element's step is a fraction of √(σ² + ε) of the group it is normalized with, the scale the layer divides by.
        int groups = layer is GroupNormLayer group ? group.Groups : 1, size = c.X.ColumnCount / groups;
        Matrix<double> h = Matrix<double>.Build.Dense(c.X.RowCount, c.X.ColumnCount, (i, j) =>
        {
            double[] values = Enumerable.Range(j / size * size, size).Select(k => c.X[i, k]).ToArray();
            double mean = values.Average(), variance = values.Average(v => (v - mean) * (v - mean));
            return 1e-3 * Math.Sqrt(variance + layer.Epsilon);
        });
        CentralDifferences.AssertBackwardMatches(layer.Forward, layer.Backward, layer.Gamma, layer.Beta, () => (layer.GammaGradient, layer.BetaGradient), c.X, c.Dy, h);
    }

    /// <summary>A strategy that does not provide Σdy·x̂ and Σdy, which every layer needs for dγ and dβ.</summary>
    private sealed class TooFewSums : BackwardStrategy
    {
        public override string Name => "too few sums";

        public override int SumCount => 1;

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient) => throw new NotSupportedException();

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient) => throw new NotSupportedException();
    }
}
