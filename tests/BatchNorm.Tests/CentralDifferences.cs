using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>The gradient property of the layers other than BatchNormLayer, which GradientCheck.Check does not take.</summary>
internal static class CentralDifferences
{
    /// <summary>
    /// Asserts that a layer's Backward matches central differences of L = Σ y·dy to 1e-6, relative with
    /// <see cref="GradientCheck.DefaultRelativeFloor"/>. x: Richardson's extrapolation of two central differences,
    /// (4·g(h) − g(2h))/3, fourth-order accurate, with each element's step from <paramref name="steps"/>. γ and β: y is
    /// linear in them, so a large step is exact up to rounding and keeps the rounding noise small.
    /// </summary>
    public static void AssertBackwardMatches(
        Func<Matrix<double>, Matrix<double>> forward,
        Func<Matrix<double>, Matrix<double>> backward,
        Vector<double> gamma,
        Vector<double> beta,
        Func<(Vector<double> Gamma, Vector<double> Beta)> parameterGradients,
        Matrix<double> x,
        Matrix<double> dy,
        Matrix<double> steps)
    {
        Matrix<double> numericalX = ((GradientCheck.NumericalGradient(forward, x.Clone(), dy, steps) * 4)
            - GradientCheck.NumericalGradient(forward, x.Clone(), dy, steps * 2)) / 3;
        Vector<double> numericalGamma = GradientCheck.NumericalGradient(_ => forward(x), gamma, dy, step: 0.5);
        Vector<double> numericalBeta = GradientCheck.NumericalGradient(_ => forward(x), beta, dy, step: 0.5);
        forward(x);
        Matrix<double> dx = backward(dy);
        (Vector<double> dGamma, Vector<double> dBeta) = parameterGradients();
        double errorX = GradientCheck.RelativeError(dx, numericalX, GradientCheck.DefaultRelativeFloor);
        double errorGamma = GradientCheck.RelativeError(dGamma, numericalGamma, GradientCheck.DefaultRelativeFloor);
        double errorBeta = GradientCheck.RelativeError(dBeta, numericalBeta, GradientCheck.DefaultRelativeFloor);
        Assert.True(Math.Max(errorX, Math.Max(errorGamma, errorBeta)) < 1e-6, $"relative errors dx {errorX:E2}, dγ {errorGamma:E2}, dβ {errorBeta:E2}");
    }
}
