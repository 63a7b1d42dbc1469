using System;
using System.Globalization;

namespace BatchNorm;

/// <summary>
/// What a <see cref="BackwardStrategy"/> sees of one segment: values normalized together with one μ and σ², the
/// gradient arriving at their outputs, and the scalars of the segment.
/// </summary>
/// <remarks>
/// <para>The forward pass of a segment was x̂ᵢ = (xᵢ − μ)·(σ² + ε)^(−½), then yᵢ = γ·x̂ᵢ + β, so the gradient at x̂ is
/// γ·dyᵢ. Where γ differs within a segment (layer and group norm, which scale each feature by its own γ), the layer
/// passes the gradient at x̂ itself as <see cref="OutputGradient"/> and γ = 1.</para>
/// <para>With data-parallel workers a segment can be split across them: this worker holds <see cref="Length"/> of the
/// <see cref="Count"/> values normalized together, starting at index <see cref="Offset"/> among them.</para>
/// </remarks>
public readonly ref struct BackwardSegment
{
    /// <summary>Describes a segment, checking that its parts fit together.</summary>
    /// <param name="outputGradient">dL/dy of this part of the segment.</param>
    /// <param name="normalizedInput">x̂ of the same values.</param>
    /// <param name="gamma">The γ that scaled x̂ in the forward pass.</param>
    /// <param name="variance">σ², the variance the values were normalized with; finite and at least 0.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="frozenStatistics">Whether μ and σ² were constants (running statistics) rather than computed from the values.</param>
    /// <param name="count">The number of values normalized together; the length of the spans when null.</param>
    /// <param name="offset">The index of this part's first value among them; 0 when the segment is whole.</param>
    /// <param name="centered">Whether the forward pass subtracted the mean (batch, layer, group and instance norm) or not
    /// (RMS norm, where <paramref name="variance"/> is the mean square and x̂ = x/√(ms + ε)).</param>
    /// <exception cref="ArgumentException">The spans differ in length, or the part does not fit in [0, count).</exception>
    /// <exception cref="ArgumentOutOfRangeException">A scalar is out of range.</exception>
    public BackwardSegment(
        ReadOnlySpan<double> outputGradient,
        ReadOnlySpan<double> normalizedInput,
        double gamma,
        double variance,
        double epsilon,
        bool frozenStatistics = false,
        int? count = null,
        int offset = 0,
        bool centered = true)
    {
        Guard.Length(normalizedInput.Length, outputGradient.Length, nameof(normalizedInput), "the output gradient of the segment");
        Guard.Epsilon(epsilon);
        if (!(variance >= 0) || double.IsInfinity(variance))
        {
            throw new ArgumentOutOfRangeException(nameof(variance), variance, "σ² must be finite and at least 0.");
        }

        int total = count ?? outputGradient.Length;
        if (offset < 0 || total < offset + outputGradient.Length)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"A part of {outputGradient.Length} values at offset {offset} does not fit in a segment of {total}."),
                nameof(count));
        }

        this = new BackwardSegment(
            outputGradient, normalizedInput, gamma, variance, ElementFormulas.InverseStandardDeviation(variance, epsilon), epsilon, frozenStatistics, total, offset, stream: false, centered);
    }

    /// <summary>The engine's constructor: the arguments are known to fit, and 1/√(σ² + ε) is the one the Forward used.</summary>
    internal BackwardSegment(
        ReadOnlySpan<double> outputGradient,
        ReadOnlySpan<double> normalizedInput,
        double gamma,
        double variance,
        double inverseStandardDeviation,
        double epsilon,
        bool frozenStatistics,
        int count,
        int offset,
        bool stream,
        bool centered)
    {
        OutputGradient = outputGradient;
        NormalizedInput = normalizedInput;
        Gamma = gamma;
        Variance = variance;
        InverseStandardDeviation = inverseStandardDeviation;
        Epsilon = epsilon;
        FrozenStatistics = frozenStatistics;
        Count = count;
        Offset = offset;
        Stream = stream;
        Centered = centered;
    }

    /// <summary>Gets dL/dy of this worker's values of the segment.</summary>
    public ReadOnlySpan<double> OutputGradient { get; }

    /// <summary>Gets x̂ of the same values.</summary>
    public ReadOnlySpan<double> NormalizedInput { get; }

    /// <summary>Gets γ, so that the gradient at x̂ is γ·dy.</summary>
    public double Gamma { get; }

    /// <summary>Gets σ², the variance the values were normalized with: the batch's, or the running one with frozen statistics.</summary>
    public double Variance { get; }

    /// <summary>Gets 1/√(σ² + ε), as the Forward computed it.</summary>
    public double InverseStandardDeviation { get; }

    /// <summary>Gets ε.</summary>
    public double Epsilon { get; }

    /// <summary>Gets whether μ and σ² were constants in the forward pass, so that x̂ᵢ is the only path from xᵢ to the loss.</summary>
    public bool FrozenStatistics { get; }

    /// <summary>Gets N, the number of values normalized together, across all workers.</summary>
    public int Count { get; }

    /// <summary>Gets the index of this worker's first value among the <see cref="Count"/>.</summary>
    public int Offset { get; }

    /// <summary>
    /// Gets whether the forward pass subtracted the mean: true for batch, layer, group and instance norm; false for RMS
    /// norm, whose graph has no node μ (x̂ = x/√(ms + ε) with ms = mean(x²) in <see cref="Variance"/>).
    /// </summary>
    public bool Centered { get; }

    /// <summary>Gets the number of values this worker holds, the length of the spans.</summary>
    public int Length => OutputGradient.Length;

    /// <summary>Whether large outputs should be written with non-temporal stores (see <see cref="ColumnKernels.StreamingThreshold"/>).</summary>
    internal bool Stream { get; }
}
