using System;

namespace BatchNorm.Tests;

/// <summary>
/// A strategy of one's own, as a student would write it from the closed-form formula with plain loops: it has no
/// special two-row path and knows nothing of threads or workers, yet every layer and synchronization take it.
/// </summary>
internal sealed class TextbookBackward : BackwardStrategy
{
    public override string Name => "textbook";

    public override int SumCount => ParameterSums;

    protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
    {
        double sumDyXHat = 0, sumDy = 0;
        for (int i = 0; i < segment.Length; i++)
        {
            sumDyXHat += segment.OutputGradient[i] * segment.NormalizedInput[i];
            sumDy += segment.OutputGradient[i];
        }

        sums[0] = sumDyXHat;
        sums[1] = sumDy;
    }

    protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
    {
        // dx = γ/(N·√(σ² + ε))·(N·dy − Σdy − x̂·Σdy·x̂); with frozen statistics, dx = γ·dy/√(σ² + ε).
        double n = segment.Count, scale = segment.Gamma * segment.InverseStandardDeviation;
        for (int i = 0; i < segment.Length; i++)
        {
            double dy = segment.OutputGradient[i];
            inputGradient[i] = segment.FrozenStatistics
                ? scale * dy
                : scale / n * ((n * dy) - sums[1] - (segment.NormalizedInput[i] * sums[0]));
        }
    }
}
