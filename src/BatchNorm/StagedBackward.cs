using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The staged backward pass: one stage per node of the computational graph, undoing the forward pass
/// in reverse. It is the teaching path; docs/derivation.md derives each line.
/// </summary>
/// <remarks>
/// The forward graph, per feature, with N rows:
/// <code>
/// μ   = (1/N)·Σᵢ xᵢ
/// σ²  = (1/N)·Σᵢ (xᵢ − μ)²
/// x̂ᵢ  = (xᵢ − μ)·(σ² + ε)^(−½)
/// yᵢ  = γ·x̂ᵢ + β
/// </code>
/// Wherever a value feeds several nodes (γ, β, μ and σ² feed every row; each xᵢ feeds x̂ᵢ, μ and σ²),
/// the contributions from each path are added; every such sum is written out with <c>+=</c>.
/// </remarks>
internal sealed class StagedBackward : BackwardStrategy
{
    public override string Name => "staged";

    protected override void BackwardCore(
        BatchNormCache cache,
        Vector<double> gamma,
        Matrix<double> outputGradient,
        Matrix<double> inputGradient,
        Vector<double> gammaGradient,
        Vector<double> betaGradient)
    {
        int blocks = cache.VirtualBatches, rows = cache.VirtualBatchSize;
        for (int j = 0; j < cache.Features; j++)
        {
            // Each block of rows (the whole column without ghost batches) was normalized on its own;
            // γ and β are shared by the blocks, so their gradients add up over them.
            gammaGradient[j] = 0;
            betaGradient[j] = 0;
            for (int b = 0; b < blocks; b++)
            {
                Segment(
                    DenseColumns.Column(outputGradient, j).Slice(b * rows, rows),
                    cache.NormalizedColumn(j).Slice(b * rows, rows),
                    gamma[j],
                    cache.InverseStandardDeviation[(j * blocks) + b],
                    cache.Epsilon,
                    cache.IsTraining,
                    DenseColumns.Column(inputGradient, j).Slice(b * rows, rows),
                    out double dGamma,
                    out double dBeta);
                gammaGradient[j] += dGamma;
                betaGradient[j] += dBeta;
            }
        }
    }

    /// <summary>
    /// The backward pass of one normalized segment (a feature column, or a group of a row for group norm):
    /// the values x̂ were normalized together with one μ and σ², and scaled by one γ.
    /// </summary>
    internal override void Segment(
        ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat, double gamma, double inverseStd, double epsilon, bool training, Span<double> dx, out double gammaGradient, out double betaGradient)
    {
        OutputNode(dy, xHat, gamma, dx, out gammaGradient, out betaGradient);
        Span<double> dXHat = dx;
        if (!training)
        {
            // Inference Forward: μ and σ² were the running statistics, constants here,
            // so x̂ᵢ = (xᵢ − μ)·(σ² + ε)^(−½) is the only path from xᵢ to the loss.
            for (int i = 0; i < dy.Length; i++)
            {
                dx[i] = dXHat[i] * inverseStd;
            }

            return;
        }

        StatisticsNodes(xHat, inverseStd, dXHat, out double dVariance, out double dMean, out double sumCentered);
        InputNode(xHat, inverseStd, dy.Length, dVariance, dMean, sumCentered, dx);
    }

    /// <summary>
    /// Node y = γ·x̂ + β: dL/dγ and dL/dβ, and dL/dx̂ written into <paramref name="dXHat"/>
    /// (which may be the same memory as <paramref name="dy"/>).
    /// </summary>
    internal static void OutputNode(ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat, double gamma, Span<double> dXHat, out double gammaGradient, out double betaGradient)
    {
        int n = dy.Length;

        // γ and β feed every row, so their gradients sum over the rows.
        double dBeta = 0, dGamma = 0;
        for (int i = 0; i < n; i++)
        {
            dBeta += dy[i];
            dGamma += dy[i] * xHat[i];
        }

        gammaGradient = dGamma;
        betaGradient = dBeta;

        // dL/dx̂ᵢ = dyᵢ·γ. (dy has been read in full above, so dX̂ may be the same memory as dy.)
        for (int i = 0; i < n; i++)
        {
            dXHat[i] = dy[i] * gamma;
        }
    }

    /// <summary>
    /// Nodes σ² and μ, as sums over the rows: dL/dσ², the direct part of dL/dμ, and Σᵢ (xᵢ − μ) for the σ² part.
    /// These three sums (with dγ and dβ) are all that couples the rows; synchronized workers add them up across
    /// workers before <see cref="InputNode"/>.
    /// </summary>
    internal static void StatisticsNodes(ReadOnlySpan<double> xHat, double inverseStd, ReadOnlySpan<double> dXHat, out double dVarianceSum, out double dMeanSum, out double centeredSum)
    {
        int n = xHat.Length;
        double std = 1.0 / inverseStd;

        // Node x̂ᵢ = (xᵢ − μ)·(σ² + ε)^(−½). σ² feeds every x̂ᵢ:
        // dσ² = Σᵢ dx̂ᵢ·(xᵢ − μ)·(−½)·(σ² + ε)^(−3/2), where xᵢ − μ = x̂ᵢ·√(σ² + ε).
        double dVariance = 0;
        for (int i = 0; i < n; i++)
        {
            double centered = xHat[i] * std;
            dVariance += dXHat[i] * centered * -0.5 * inverseStd * inverseStd * inverseStd;
        }

        // μ feeds every x̂ᵢ directly and also σ² = (1/N)·Σᵢ (xᵢ − μ)²: both paths add to dμ (see InputNode for the second).
        double dMean = 0;
        for (int i = 0; i < n; i++)
        {
            dMean += dXHat[i] * -inverseStd;
        }

        double sumCentered = 0;
        for (int i = 0; i < n; i++)
        {
            sumCentered += xHat[i] * std;
        }

        dVarianceSum = dVariance;
        dMeanSum = dMean;
        centeredSum = sumCentered;
    }

    /// <summary>
    /// Node x: each xᵢ feeds x̂ᵢ, σ² and μ. <paramref name="n"/> is the number of rows μ and σ² were taken over
    /// (all workers' rows when synchronized); <paramref name="dx"/> holds dL/dx̂ on entry and dL/dx on return.
    /// </summary>
    internal static void InputNode(ReadOnlySpan<double> xHat, double inverseStd, int n, double dVariance, double dMean, double sumCentered, Span<double> dx)
    {
        double std = 1.0 / inverseStd;
        ReadOnlySpan<double> dXHat = dx;

        // The σ² path carries Σᵢ (xᵢ − μ), which is zero in exact arithmetic; it is kept to show the fan-out.
        dMean += dVariance * (-2.0 / n) * sumCentered;

        // Each xᵢ feeds x̂ᵢ, σ² and μ: three contributions.
        for (int i = 0; i < xHat.Length; i++)
        {
            double centered = xHat[i] * std;
            double dxi = dXHat[i] * inverseStd;        // through x̂ᵢ
            dxi += dVariance * 2.0 * centered / n;     // through σ²
            dxi += dMean / n;                          // through μ
            dx[i] = dxi;
        }
    }
}
