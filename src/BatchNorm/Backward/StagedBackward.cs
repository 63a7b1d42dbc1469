using System;

namespace BatchNorm;

/// <summary>
/// The staged backward pass: one stage per node of the computational graph, undoing the forward pass
/// in reverse. It is the teaching path; docs/derivation.md derives each line.
/// </summary>
/// <remarks>
/// The forward graph of one segment, with N values:
/// <code>
/// μ   = (1/N)·Σᵢ xᵢ
/// σ²  = (1/N)·Σᵢ (xᵢ − μ)²
/// x̂ᵢ  = (xᵢ − μ)·(σ² + ε)^(−½)
/// yᵢ  = γ·x̂ᵢ + β
/// </code>
/// Wherever a value feeds several nodes (γ, β, μ and σ² feed every value; each xᵢ feeds x̂ᵢ, μ and σ²),
/// the contributions from each path are added; every such sum is written out with <c>+=</c>.
/// The sums over the segment are the first step (<see cref="SegmentSumsCore"/>): node y gives dγ and dβ, nodes σ² and μ
/// give dσ², the direct part of dμ and Σ(x − μ). The second step (<see cref="SegmentInputGradientCore"/>) puts dμ
/// together whole (<see cref="MeanNode"/>) and then walks node x. <see cref="StagedBackwardTrace"/> records every node's
/// gradient for a reader.
/// </remarks>
internal sealed class StagedBackward : BackwardStrategy
{
    public override string Name => "staged";

    /// <summary>Walks RMS norm's graph too: the same nodes without μ (see <see cref="SegmentSumsCore"/>).</summary>
    public override bool SupportsUncentered => true;

    /// <summary>dγ, dβ, dσ², the direct part of dμ, and Σ(x − μ).</summary>
    public override int SumCount => 5;

    protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
    {
        // dL/dx̂ goes into inputGradient, which the second step turns into dL/dx.
        OutputNode(segment.OutputGradient, segment.NormalizedInput, segment.Gamma, inputGradient, out sums[0], out sums[1]);
        if (segment.FrozenStatistics)
        {
            // μ and σ² were the running statistics, constants here: no paths through them.
            sums[2] = sums[3] = sums[4] = 0;
            return;
        }

        if (!segment.Centered)
        {
            // RMS norm's graph: ms = (1/N)·Σᵢ xᵢ², x̂ᵢ = xᵢ·(ms + ε)^(−½), y = γ·x̂. There is no node μ; node ms stands where σ²
            // stood, with xᵢ where xᵢ − μ was.
            sums[2] = VarianceNode(segment.NormalizedInput, segment.InverseStandardDeviation, inputGradient);
            sums[3] = sums[4] = 0;
            return;
        }

        StatisticsNodes(segment.NormalizedInput, segment.InverseStandardDeviation, inputGradient, out sums[2], out sums[3], out sums[4]);
    }

    protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
    {
        if (segment.FrozenStatistics)
        {
            // Inference Forward: x̂ᵢ = (xᵢ − μ)·(σ² + ε)^(−½) with constant μ and σ² is the only path from xᵢ to the loss.
            for (int i = 0; i < inputGradient.Length; i++)
            {
                inputGradient[i] *= segment.InverseStandardDeviation;
            }

            return;
        }

        double dVariance = sums[2];
        if (!segment.Centered)
        {
            // Node x of RMS norm: each xᵢ feeds x̂ᵢ and ms; with no μ, dμ = 0 and node x has two paths instead of three.
            InputNode(segment.NormalizedInput, segment.InverseStandardDeviation, segment.Count, dVariance, dMean: 0, inputGradient);
            return;
        }

        double dMean = MeanNode(sums[3], dVariance, sums[4], segment.Count);
        InputNode(segment.NormalizedInput, segment.InverseStandardDeviation, segment.Count, dVariance, dMean, inputGradient);
    }

    /// <summary>
    /// Node σ², which feeds every x̂ᵢ = (xᵢ − μ)·(σ² + ε)^(−½): dL/dσ² = Σᵢ dx̂ᵢ·(xᵢ − μ)·(−½)·(σ² + ε)^(−3/2), with
    /// xᵢ − μ = x̂ᵢ·√(σ² + ε). RMS norm's node ms = (1/N)·Σᵢ xᵢ² is the same node with μ = 0, so it uses this method too.
    /// </summary>
    internal static double VarianceNode(ReadOnlySpan<double> xHat, double inverseStd, ReadOnlySpan<double> dXHat)
    {
        double std = 1.0 / inverseStd;
        double dVariance = 0;
        for (int i = 0; i < xHat.Length; i++)
        {
            double centered = xHat[i] * std;
            dVariance += dXHat[i] * centered * -0.5 * inverseStd * inverseStd * inverseStd;
        }

        return dVariance;
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
    /// The sums over the rows that nodes σ² and μ need: dL/dσ², the direct part of dL/dμ (μ feeds every x̂ᵢ), and Σᵢ (xᵢ − μ),
    /// which carries dL/dσ² back to μ. These three (with dγ and dβ) are all that couples the rows; synchronized workers add
    /// them up across workers before <see cref="MeanNode"/> and <see cref="InputNode"/>.
    /// </summary>
    internal static void StatisticsNodes(ReadOnlySpan<double> xHat, double inverseStd, ReadOnlySpan<double> dXHat, out double dVarianceSum, out double dMeanDirectSum, out double centeredSum)
    {
        int n = xHat.Length;
        double std = 1.0 / inverseStd;

        // Node x̂ᵢ = (xᵢ − μ)·(σ² + ε)^(−½). σ² feeds every x̂ᵢ.
        double dVariance = VarianceNode(xHat, inverseStd, dXHat);

        // μ feeds every x̂ᵢ directly: the first part of dμ.
        double dMeanDirect = 0;
        for (int i = 0; i < n; i++)
        {
            dMeanDirect += dXHat[i] * -inverseStd;
        }

        double sumCentered = 0;
        for (int i = 0; i < n; i++)
        {
            sumCentered += xHat[i] * std;
        }

        dVarianceSum = dVariance;
        dMeanDirectSum = dMeanDirect;
        centeredSum = sumCentered;
    }

    /// <summary>
    /// Node μ, whole: μ feeds every x̂ᵢ directly and also σ² = (1/N)·Σᵢ (xᵢ − μ)², so both paths add to dL/dμ. The second
    /// carries Σᵢ (xᵢ − μ), which is zero in exact arithmetic: see "the triangle" in docs/derivation.md.
    /// </summary>
    /// <param name="dMeanDirect">Σᵢ dx̂ᵢ·(−1/√(σ² + ε)), the path through x̂.</param>
    /// <param name="dVariance">dL/dσ².</param>
    /// <param name="sumCentered">Σᵢ (xᵢ − μ).</param>
    /// <param name="n">The number of values μ was taken over (all workers' when synchronized).</param>
    internal static double MeanNode(double dMeanDirect, double dVariance, double sumCentered, int n)
    {
        double dMean = dMeanDirect;                                  // through x̂
        dMean += ThroughVariance(dVariance, sumCentered, n);         // through σ²
        return dMean;
    }

    /// <summary>The path from μ through σ² to the loss: dL/dσ²·∂σ²/∂μ = dL/dσ²·(−2/N)·Σᵢ (xᵢ − μ).</summary>
    internal static double ThroughVariance(double dVariance, double sumCentered, int n) => dVariance * (-2.0 / n) * sumCentered;

    /// <summary>
    /// Node x: each xᵢ feeds x̂ᵢ, σ² and μ. <paramref name="n"/> is the number of values μ and σ² were taken over
    /// (all workers' when synchronized); <paramref name="dx"/> holds dL/dx̂ on entry and dL/dx on return.
    /// </summary>
    internal static void InputNode(ReadOnlySpan<double> xHat, double inverseStd, int n, double dVariance, double dMean, Span<double> dx)
    {
        double std = 1.0 / inverseStd;
        ReadOnlySpan<double> dXHat = dx;

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
