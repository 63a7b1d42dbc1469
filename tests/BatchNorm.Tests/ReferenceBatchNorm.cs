using System;

namespace BatchNorm.Tests;

/// <summary>
/// Batch norm's forward pass of one feature as the formulas write it, one plain loop per line, for reading and for
/// checking the library's fused kernels against. docs/derivation.md links its forward table here.
/// </summary>
internal static class ReferenceBatchNorm
{
    /// <summary>The forward pass of one feature (one column of the batch).</summary>
    public static (double Mean, double Variance, double[] XHat, double[] Y) Forward(double[] x, double gamma, double beta, double epsilon)
    {
        int n = x.Length;

        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            sum += x[i];
        }

        double mean = sum / n;                                   // μ = (1/N)·Σᵢ xᵢ

        double squares = 0;
        for (int i = 0; i < n; i++)
        {
            squares += (x[i] - mean) * (x[i] - mean);
        }

        double variance = squares / n;                           // σ² = (1/N)·Σᵢ (xᵢ − μ)²

        double inverseStd = 1 / Math.Sqrt(variance + epsilon);   // 1/√(σ² + ε)

        var xHat = new double[n];
        var y = new double[n];
        for (int i = 0; i < n; i++)
        {
            xHat[i] = (x[i] - mean) * inverseStd;                // x̂ᵢ = (xᵢ − μ)/√(σ² + ε)
            y[i] = (gamma * xHat[i]) + beta;                     // yᵢ = γ·x̂ᵢ + β
        }

        return (mean, variance, xHat, y);
    }
}
