using System;
using System.Globalization;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Both strategies against central differences, in training and in inference mode.</summary>
public class GradientTests
{
    /// <summary>
    /// A wrong term (a missing dμ or dσ² path, a lost factor of N) gives errors near 1e-1;
    /// central differences of a correct gradient stay many orders below this.
    /// </summary>
    private const double Tolerance = 1e-6;

    [BatchNormProperty(CasesFactor = 6)]
    public void Backward_matches_central_differences(BatchCase c, BackwardStrategy strategy, bool training)
    {
        BatchNormLayer layer = c.Layer(strategy);
        if (!training)
        {
            // Give the frozen statistics something other than their initial values.
            layer.Forward(c.Input);
            layer.IsTraining = false;
        }

        GradientCheckResult errors = GradientCheck.Check(layer, c.Input, c.Dy);
        Assert.True(
            errors.Max < Tolerance,
            string.Create(CultureInfo.InvariantCulture, $"{strategy} (training {training}): relative errors dx {errors.Input:E2}, dγ {errors.Gamma:E2}, dβ {errors.Beta:E2}"));
    }

    [Fact]
    public void A_uniform_upstream_gradient_hides_a_missing_variance_path_but_not_a_missing_mean_path()
    {
        // With dy the same for every row, dx̂ is uniform, so dσ² = γc·(−½)(σ² + ε)^(−3/2)·Σ(x − μ) = 0: the σ² path carries
        // nothing and its absence goes unseen. dμ = −N·γc/√(σ² + ε) is not zero, so a missing μ path shows at once.
        var x = Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2.0, 4.0, 7.0 }, new[] { 0.5, -3.0, 2.0, 1.5 });
        var uniform = Matrix<double>.Build.Dense(4, 2, 0.75);
        var varied = Matrix<double>.Build.DenseOfColumnArrays(new[] { 0.3, -1.0, 0.7, 0.2 }, new[] { -0.4, 0.9, 0.1, -0.6 });

        double Error(BackwardStrategy strategy, Matrix<double> dy)
        {
            var layer = new BatchNormLayer(2, backward: strategy);
            layer.Forward(x);
            return GradientCheck.Check(layer, x, dy).Input;
        }

        // Under a uniform dy the true dx is 0, and the correct strategy and the one without the σ² path report the same
        // small error (central-difference noise against CS231n's floor of 1e-8): the check cannot tell them apart.
        double correct = Error(BackwardStrategy.ClosedForm, uniform), withoutVariance = Error(new Without(variancePath: true), uniform);
        Assert.True(correct < 1e-3 && withoutVariance < 1e-3, $"uniform dy: correct {correct:E2}, without the σ² path {withoutVariance:E2}");
        Assert.True(Error(new Without(variancePath: false), uniform) > 0.5, "a missing μ path fails even a uniform dy");

        // A non-uniform dy tells all three apart.
        Assert.True(Error(BackwardStrategy.ClosedForm, varied) < 1e-7);
        Assert.True(Error(new Without(variancePath: true), varied) > 1e-2, "without the σ² path, under a non-uniform dy");
        Assert.True(Error(new Without(variancePath: false), varied) > 1e-2, "without the μ path, under a non-uniform dy");
    }

    /// <summary>The staged pass with one path of the graph left out, as a student might: the one through σ² or the one through μ.</summary>
    private sealed class Without(bool variancePath) : BackwardStrategy
    {
        public override string Name => variancePath ? "without the σ² path" : "without the μ path";

        public override int SumCount => 5;

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
            => Staged.SegmentSums(segment, sums, inputGradient);

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
        {
            int n = segment.Count;
            double dVariance = sums[2], dMean = sums[3] + (dVariance * (-2.0 / n) * sums[4]);
            for (int i = 0; i < segment.Length; i++)
            {
                double centered = segment.NormalizedInput[i] / segment.InverseStandardDeviation;
                double dx = inputGradient[i] * segment.InverseStandardDeviation;
                dx += variancePath ? 0 : dVariance * 2.0 * centered / n;
                dx += variancePath ? dMean / n : 0;
                inputGradient[i] = dx;
            }
        }
    }

    [BatchNormProperty]
    public void The_fused_forward_agrees_with_the_plain_reference(TallBatch tall)
    {
        BatchCase c = tall.Case;
        BatchNormLayer layer = c.Layer(BackwardStrategy.ClosedForm);
        Matrix<double> y = layer.Forward(c.Input);
        for (int j = 0; j < c.Features; j++)
        {
            (double mean, double variance, double[] xHat, double[] expected) = ReferenceBatchNorm.Forward(c.Columns[j], c.Gamma[j], c.Beta[j], c.Epsilon);
            double scale = c.Columns[j].Max(Math.Abs);
            Assert.True(Math.Abs(layer.Cache!.Mean[j] - mean) <= 1e-13 * scale);
            Assert.True(Math.Abs(layer.Cache.Variance[j] - variance) <= 1e-12 * (variance + (1e-3 * scale * scale * 1e-10)));
            for (int i = 0; i < c.Rows; i++)
            {
                Assert.True(Math.Abs(layer.Cache.NormalizedColumn(j)[i] - xHat[i]) <= 1e-9, $"x̂[{i},{j}]: {layer.Cache.NormalizedColumn(j)[i]:R} against {xHat[i]:R}");
                Assert.True(Math.Abs(y[i, j] - expected[i]) <= 1e-9 * (1 + Math.Abs(expected[i])));
            }
        }
    }
}
