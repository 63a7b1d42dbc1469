using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The closed-form backward pass, per segment of N values:
/// dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)), evaluated as γ·istd·(dy − mean(dy) − x̂·mean(dy·x̂)).
/// After an inference Forward it is the frozen-statistics gradient dx = dy·γ·istd.
/// </summary>
/// <remarks>
/// <para>
/// Two passes over each segment, the second while it is still in cache: one fused reduction for Σdy and Σdy·x̂ (which
/// are also dβ and dγ), then one fused map for dx. For row groups (layer and group norm) the same formulas run over all
/// rows at once, each row a SIMD lane (<see cref="LaneKernels"/>). The derivation is in docs/derivation.md.
/// </para>
/// <para>
/// With two values x̂ = ±√(1 − δ), δ = ε/(σ² + ε), and the bracket reduces to (1 − x̂²)·(dy₁ − dy₂)/2 = δ·(dy₁ − dy₂)/2.
/// Evaluating 1 − x̂² would cancel about log₁₀(1/δ) digits, so two-value segments use dx₁ = −dx₂ = γ·istd·δ·(dy₁ − dy₂)/2
/// = γ·ε·(σ² + ε)^(−3/2)·(dy₁ − dy₂)/2, which keeps full precision. For that the third sum is dy₁ − dy₂, the values signed
/// by their place in the segment, so that it adds up across workers that hold one value each.
/// </para>
/// </remarks>
internal sealed class ClosedFormBackward : BackwardStrategy
{
    public override string Name => "closed";

    /// <summary>Handles RMS norm's segments: without centering the Σdy term drops out, dx = γ·istd·(dy − x̂·mean(dy·x̂)).</summary>
    public override bool SupportsUncentered => true;

    /// <summary>Σdy·x̂, Σdy, and for two-value segments dy₁ − dy₂.</summary>
    public override int SumCount => 3;

    protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
        => SumsOf(segment, segment.OutputGradient, segment.NormalizedInput, sums);

    /// <summary>
    /// The sums of a segment whose dy and x̂ are of element type T (a float segment carries its numbers in
    /// <paramref name="segment"/> and its values here).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void SumsOf<T>(in BackwardSegment segment, ReadOnlySpan<T> dy, ReadOnlySpan<T> xHat, Span<double> sums)
        where T : unmanaged
    {
        (double sumDy, double sumDyXHat) = ColumnKernels.SumAndDot(dy, xHat);
        sums[0] = sumDyXHat;
        sums[1] = sumDy;
        double difference = 0;
        if (IsTwoValues(segment))
        {
            for (int i = 0; i < dy.Length; i++)
            {
                double value = Elements<T>.ToDouble(dy[i]);
                difference += segment.Offset + i == 0 ? value : -value;
            }
        }

        sums[2] = difference;
    }

    protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
        => InputGradientFinite(segment, sums, inputGradient);

    /// <summary>The input gradient, and whether it is finite, which the kernels check as they write.</summary>
    internal override bool InputGradientFinite(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
        => InputGradientOf(segment, segment.OutputGradient, segment.NormalizedInput, sums, inputGradient);

    /// <summary>The input gradient of a segment whose dy, x̂ and dx are of element type T, and whether it is finite as stored.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static bool InputGradientOf<T>(in BackwardSegment segment, ReadOnlySpan<T> dy, ReadOnlySpan<T> xHat, ReadOnlySpan<double> sums, Span<T> inputGradient)
        where T : unmanaged
    {
        double scale = segment.Gamma * segment.InverseStandardDeviation;
        if (segment.FrozenStatistics)
        {
            return ColumnKernels.Scale(dy, scale, inputGradient, segment.Stream);
        }

        if (IsTwoValues(segment))
        {
            double first = TwoValueGradient(segment.Gamma, segment.Variance, segment.Epsilon, sums[2]);
            for (int i = 0; i < inputGradient.Length; i++)
            {
                inputGradient[i] = Elements<T>.FromDouble(segment.Offset + i == 0 ? first : -first);
            }

            return !double.IsNaN(Elements<T>.Probe(first));
        }

        // Without centering (RMS norm) μ is no node of the graph, and its term, mean(dy), drops out.
        int n = segment.Count;
        double meanDy = segment.Centered ? sums[1] / n : 0;
        return ColumnKernels.ClosedFormInputGradient(dy, xHat, meanDy, sums[0] / n, scale, inputGradient, segment.Stream);
    }

    /// <summary>
    /// Four short segments at once: their Σdy and Σdy·x̂ in one pass of four chains, the means and γ·istd as vectors, then dx
    /// segment by segment. Two-value segments keep their own formula, one at a time.
    /// </summary>
    internal override int QuadBackward(
        ref double outputGradient, ref double normalizedInput, int length, Vector256<double> gamma, Vector256<double> inverseStd, bool frozenStatistics, Span<double> sums, ref double inputGradient)
        => QuadBackwardOf(ref outputGradient, ref normalizedInput, length, gamma, inverseStd, frozenStatistics, sums, ref inputGradient);

    /// <summary><see cref="QuadBackward"/> over values of element type T.</summary>
    /// <remarks>Not inlined into the engine's loop, whose code it would swell past what the JIT allocates registers for well (the float step at 32×128 took 2.4 times as long).</remarks>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static int QuadBackwardOf<T>(
        ref T outputGradient, ref T normalizedInput, int length, Vector256<double> gamma, Vector256<double> inverseStd, bool frozenStatistics, Span<double> sums, ref T inputGradient)
        where T : unmanaged
    {
        if (length == 2 && !frozenStatistics)
        {
            return -1;
        }

        QuadKernels.SumAndDot(ref outputGradient, ref normalizedInput, length, out Vector256<double> sumDy, out Vector256<double> sumDyXHat);
        Vector256<double> count = Vector256.Create((double)length), scale = gamma * inverseStd;
        Vector256<double> meanDy = sumDy / count, meanDyXHat = sumDyXHat / count;
        for (int s = 0; s < 4; s++)
        {
            sums[3 * s] = sumDyXHat.GetElement(s);
            sums[(3 * s) + 1] = sumDy.GetElement(s);
            sums[(3 * s) + 2] = 0;
        }

        int bad = QuadKernels.InputGradient(ref outputGradient, ref normalizedInput, length, meanDy, meanDyXHat, scale, frozenStatistics, ref inputGradient);
        return bad;
    }

    /// <summary>Every row group at once, each row a SIMD lane: the same formulas with g = γ·dy per feature in place of dy.</summary>
    internal override bool TryBackwardRowGroups(NormalizationCache cache, ReadOnlySpan<double> gamma, Matrix<double> dy, Matrix<double> dx, LaneScratch scratch, out bool finite)
        => BackwardRowGroupsOf(cache, gamma, dy, dx, scratch, out finite);

    /// <summary><see cref="TryBackwardRowGroups"/> over values of element type T.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static bool BackwardRowGroupsOf<T>(NormalizationCache cache, ReadOnlySpan<double> gamma, Matrix<T> dy, Matrix<T> dx, LaneScratch scratch, out bool finite)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        finite = true;
        int n = cache.BatchSize, size = cache.SegmentColumns;
        ReadOnlySpan<T> dyData = DenseColumns.Data(dy), xHat = cache.Normalized<T>();
        Span<T> dxData = DenseColumns.Data(dx);
        Span<double> meanG = scratch.First(n), meanGXHat = scratch.Second(n);
        for (int g = 0; g < cache.ColumnBlocks; g++)
        {
            int first = g * size;
            ReadOnlySpan<double> inverseStd = cache.InverseStandardDeviation.Slice(g * n, n), variance = cache.Variance.Slice(g * n, n);
            if (size == 2 && cache.Centered)
            {
                for (int i = 0; i < n; i++)
                {
                    double difference = (gamma[first] * Elements<T>.ToDouble(dyData[(first * n) + i])) - (gamma[first + 1] * Elements<T>.ToDouble(dyData[((first + 1) * n) + i]));
                    double value = TwoValueGradient(1, variance[i], cache.Epsilon, difference);
                    dxData[(first * n) + i] = Elements<T>.FromDouble(value);
                    dxData[((first + 1) * n) + i] = Elements<T>.FromDouble(-value);
                    finite &= !double.IsNaN(Elements<T>.Probe(value));
                }

                continue;
            }

            LaneKernels.ScaledSumAndDot(dyData, xHat, n, first, size, gamma, meanG, meanGXHat, scratch);
            ColumnKernels.Divide(meanG, size);
            ColumnKernels.Divide(meanGXHat, size);
            if (!cache.Centered)
            {
                // RMS norm: no node μ, so no mean(g) term.
                meanG.Clear();
            }


            finite &= LaneKernels.ClosedFormInputGradient(dyData, xHat, n, first, size, gamma, meanG, meanGXHat, inverseStd, dxData);
        }

        return true;
    }

    private static bool IsTwoValues(in BackwardSegment segment) => segment.Count == 2 && !segment.FrozenStatistics && segment.Centered;

    /// <summary>
    /// dx₁ = γ·ε·(σ² + ε)^(−3/2)·(dy₁ − dy₂)/2, the two-value gradient without cancellation, with (σ² + ε)^(−3/2) formed as
    /// 1/(s·√s) from s = σ² + ε rather than as a cube of 1/√s, which would triple that factor's rounding error.
    /// </summary>
    private static double TwoValueGradient(double gamma, double variance, double epsilon, double difference)
    {
        double s = variance + epsilon;
        return gamma * (epsilon / (s * Math.Sqrt(s))) * (difference / 2);
    }
}
