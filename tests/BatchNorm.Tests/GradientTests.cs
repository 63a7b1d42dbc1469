using System;
using System.Globalization;

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
    public void A_uniform_upstream_gradient_would_hide_a_missing_mean_path()
    {
        // Why the generators use a non-uniform dy: with dy = 1 everywhere the true dx is 0, and so is
        // the input gradient of a layer that forgot the mean path entirely, since Σx̂ = 0.
        var layer = new BatchNormLayer(1);
        var x = MathNet.Numerics.LinearAlgebra.Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2.0, 4.0, 7.0 });
        layer.Forward(x);
        var ones = MathNet.Numerics.LinearAlgebra.Matrix<double>.Build.Dense(4, 1, 1.0);
        var dx = layer.Backward(ones);
        Assert.All(dx.Enumerate(), v => Assert.True(Math.Abs(v) < 1e-15));
    }
}
