using System;
using System.Globalization;
using System.Runtime.Intrinsics;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// A way of computing the backward pass of normalization, one segment at a time: given x̂, 1/√(σ² + ε), γ and the
/// upstream gradient dL/dy of the values normalized together, it produces dL/dx, and the sums dL/dγ = Σ dy·x̂ and
/// dL/dβ = Σ dy.
/// </summary>
/// <remarks>
/// <para>
/// Two interchangeable instances ship with the library: <see cref="Staged"/>, which walks the computational graph one
/// node at a time, and <see cref="ClosedForm"/>, which evaluates the simplified expression in fused passes. Every layer
/// takes either, and a strategy of your own.
/// </para>
/// <para>
/// <b>One surface, two steps.</b> The rows of a segment are coupled only through sums over the segment, so a strategy
/// works in two steps: <see cref="SegmentSumsCore"/> computes its <see cref="SumCount"/> sums over the values it is
/// given, and <see cref="SegmentInputGradientCore"/> then writes dL/dx from those sums. A layer calls the two back to
/// back. With statistics synchronized across data-parallel workers, the layer adds up every worker's sums (in rank
/// order, through the exchange) between the two steps, so any strategy works across workers without knowing it. The sums
/// must therefore be sums over the segment's values, which add up across workers.
/// </para>
/// <para>
/// To write your own, derive from this class and implement <see cref="Name"/>, <see cref="SumCount"/> and the two cores.
/// The first two sums are fixed: Σ dy·x̂ and Σ dy, which are dL/dγ and dL/dβ of the segment. Instances must be stateless:
/// a layer may call them on different segments from several threads at once, and any number of layers may share one.
/// </para>
/// </remarks>
public abstract class BackwardStrategy
{
    /// <summary>The sums every strategy provides first: Σ dy·x̂ (dL/dγ) and Σ dy (dL/dβ).</summary>
    public const int ParameterSums = 2;

    /// <summary>Gets the staged strategy: one stage per node of the graph (dx̂, dσ², dμ, dx), for teaching.</summary>
    public static BackwardStrategy Staged { get; } = new StagedBackward();

    /// <summary>Gets the closed-form strategy: dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)), fused and vectorized.</summary>
    public static BackwardStrategy ClosedForm { get; } = new ClosedFormBackward();

    /// <summary>Gets a short name for the strategy, as used on command lines and in reports.</summary>
    public abstract string Name { get; }

    /// <summary>
    /// Gets whether the strategy handles segments normalized without centering (<see cref="BackwardSegment.Centered"/>
    /// false: RMS norm, whose graph has no node μ). False by default, so that <see cref="RMSNormLayer"/> refuses a strategy
    /// written for batch norm's graph rather than compute a wrong gradient; both built-in strategies handle them.
    /// </summary>
    public virtual bool SupportsUncentered => false;

    /// <summary>
    /// Gets how many sums <see cref="SegmentSumsCore"/> writes per segment: at least <see cref="ParameterSums"/>, since the
    /// first two are Σ dy·x̂ and Σ dy.
    /// </summary>
    public abstract int SumCount { get; }

    /// <summary>The first step of a segment's backward pass: the sums over its values that couple its rows.</summary>
    /// <param name="segment">The segment.</param>
    /// <param name="sums">Receives <see cref="SumCount"/> sums: [0] = Σ dy·x̂, [1] = Σ dy, then the strategy's own.</param>
    /// <param name="inputGradient">The segment's part of dL/dx, which the strategy may use as scratch: <see cref="SegmentInputGradient"/> receives it as this step left it.</param>
    /// <exception cref="ArgumentException">A span has the wrong length.</exception>
    public void SegmentSums(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
    {
        Guard.Length(sums.Length, SumCount, nameof(sums), string.Create(CultureInfo.InvariantCulture, $"the {Name} strategy"));
        Guard.Length(inputGradient.Length, segment.Length, nameof(inputGradient), "the segment");
        SegmentSumsCore(segment, sums, inputGradient);
    }

    /// <summary>The second step of a segment's backward pass: dL/dx from the sums over all of the segment's values.</summary>
    /// <param name="segment">The segment; <see cref="BackwardSegment.Count"/> is the number of values the sums were taken over.</param>
    /// <param name="sums">The <see cref="SumCount"/> sums of the whole segment (this worker's, or all workers' added up).</param>
    /// <param name="inputGradient">Holds what <see cref="SegmentSums"/> left in it; receives dL/dx of this worker's values.</param>
    /// <exception cref="ArgumentException">A span has the wrong length.</exception>
    public void SegmentInputGradient(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
    {
        Guard.Length(sums.Length, SumCount, nameof(sums), string.Create(CultureInfo.InvariantCulture, $"the {Name} strategy"));
        Guard.Length(inputGradient.Length, segment.Length, nameof(inputGradient), "the segment");
        SegmentInputGradientCore(segment, sums, inputGradient);
    }

    /// <summary>
    /// Runs the strategy over every segment of a cache: dL/dx, and dL/dγ and dL/dβ per feature, as a layer would
    /// unsynchronized with the given γ.
    /// </summary>
    /// <param name="cache">The cache of the Forward being differentiated.</param>
    /// <param name="gamma">γ, one value per feature.</param>
    /// <param name="outputGradient">dL/dy, N×D. It is not modified.</param>
    /// <param name="inputGradient">Receives dL/dx, N×D. It may be the same matrix as <paramref name="outputGradient"/>.</param>
    /// <param name="gammaGradient">Receives dL/dγ = Σᵢ dyᵢ·x̂ᵢ per feature.</param>
    /// <param name="betaGradient">Receives dL/dβ = Σᵢ dyᵢ per feature.</param>
    /// <exception cref="ArgumentNullException">Any argument is null.</exception>
    /// <exception cref="ArgumentException">A shape differs from the cache's N×D, or a column of dy is not finite, or dx overflows (the message names the column).</exception>
    /// <exception cref="InvalidOperationException">The cache is of a synchronized Forward, whose Backward must exchange its sums
    /// (call the layer's Backward), or its x̂ is not finite.</exception>
    /// <remarks>Allocates a little scratch, and a dense copy of any argument that is not dense; a layer's own Backward allocates nothing.</remarks>
    public void Backward(
        NormalizationCache cache,
        Vector<double> gamma,
        Matrix<double> outputGradient,
        Matrix<double> inputGradient,
        Vector<double> gammaGradient,
        Vector<double> betaGradient)
    {
        Guard.NotNull(cache, nameof(cache));
        Guard.NotNull(gamma, nameof(gamma));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.NotNull(inputGradient, nameof(inputGradient));
        Guard.NotNull(gammaGradient, nameof(gammaGradient));
        Guard.NotNull(betaGradient, nameof(betaGradient));
        int rows = cache.BatchSize, features = cache.Features;
        Guard.SameShape(outputGradient, rows, features, nameof(outputGradient), "the cached forward input");
        Guard.SameShape(inputGradient, rows, features, nameof(inputGradient), "the cached forward input");
        Guard.Length(gamma, features, nameof(gamma));
        Guard.Length(gammaGradient, features, nameof(gammaGradient));
        Guard.Length(betaGradient, features, nameof(betaGradient));
        if (cache.Synchronized)
        {
            throw new InvalidOperationException("This cache is of a Forward synchronized across workers, whose Backward must add up every worker's sums; call the layer's Backward.");
        }

        Matrix<double>? dyScratch = null, dxScratch = null;
        Matrix<double> dy = DenseColumns.AsDense(outputGradient, ref dyScratch);
        Matrix<double> dx = DenseColumns.DenseTarget(inputGradient, ref dxScratch);
        double[] dGamma = new double[features], dBeta = new double[features];
        var engine = new NormalizationEngine(new ColumnRunner { MaxDegreeOfParallelism = 1 });
        NormalizationCache? wide = null;
        cache = cache.SinglePrecision ? cache.WidenInto(ref wide) : cache;
        if (engine.Backward(this, cache, gamma.ToArray(), dy, dx, dGamma, dBeta) is { Failed: true } fault)
        {
            throw fault.BackwardException(nameof(outputGradient), this);
        }

        DenseColumns.CopyBack(dx, inputGradient);
        for (int j = 0; j < features; j++)
        {
            gammaGradient[j] = dGamma[j];
            betaGradient[j] = dBeta[j];
        }
    }

    /// <summary>
    /// Computes the sums of one segment. <paramref name="sums"/> has <see cref="SumCount"/> elements and
    /// <paramref name="inputGradient"/> the segment's length; <paramref name="inputGradient"/> may be the same memory as
    /// the segment's output gradient, so read dy in full before writing to it.
    /// </summary>
    /// <param name="segment">The segment.</param>
    /// <param name="sums">Receives [0] = Σ dy·x̂, [1] = Σ dy, then the strategy's own sums.</param>
    /// <param name="inputGradient">Scratch for the strategy, passed on to <see cref="SegmentInputGradientCore"/>.</param>
    protected abstract void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient);

    /// <summary>
    /// Writes dL/dx of the segment's values from the sums of the whole segment (<see cref="BackwardSegment.Count"/> values).
    /// The spans have the lengths <see cref="SegmentInputGradient"/> checks.
    /// </summary>
    /// <param name="segment">The segment.</param>
    /// <param name="sums">The sums of the whole segment.</param>
    /// <param name="inputGradient">Holds what <see cref="SegmentSumsCore"/> left in it; receives dL/dx.</param>
    protected abstract void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient);

    /// <summary>The engine's entry to <see cref="SegmentSumsCore"/>, whose arguments it has sized itself.</summary>
    internal void SumsUnchecked(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient) => SegmentSumsCore(segment, sums, inputGradient);

    /// <summary>
    /// The engine's entry to <see cref="SegmentInputGradientCore"/>: it also tells whether every dx came out finite, which a
    /// strategy may know from its own kernels; by default the engine checks dx once written.
    /// </summary>
    internal virtual bool InputGradientFinite(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
    {
        SegmentInputGradientCore(segment, sums, inputGradient);
        return ColumnKernels.AllFinite(inputGradient);
    }

    /// <summary>
    /// The whole backward pass of four adjacent short segments at once (see <see cref="QuadKernels"/>), for a strategy that
    /// has one: each segment's sums into <paramref name="sums"/> (<see cref="SumCount"/> per segment, in order) and its dx.
    /// The segments are whole (not split across workers), of length <paramref name="length"/> ≤ <see cref="QuadKernels.MaxLength"/>.
    /// </summary>
    /// <returns>A mask of the segments whose dx is not finite (bit s for segment s), or −1 when the strategy has no such pass
    /// for these segments; the engine then takes each segment in turn.</returns>
    internal virtual int QuadBackward(
        ref double outputGradient, ref double normalizedInput, int length, Vector256<double> gamma, Vector256<double> inverseStd, bool frozenStatistics, Span<double> sums, ref double inputGradient)
        => -1;

    /// <summary>
    /// The backward pass of every row group of a cache at once, for row layouts (layer and group norm), where a segment is
    /// strided in storage. A strategy that has a vectorized way to do this returns true; otherwise the engine gathers each
    /// segment into contiguous scratch and calls the two cores.
    /// </summary>
    internal virtual bool TryBackwardRowGroups(NormalizationCache cache, ReadOnlySpan<double> gamma, Matrix<double> dy, Matrix<double> dx, LaneScratch scratch, out bool finite)
    {
        finite = true;
        return false;
    }

    /// <summary>Returns <see cref="Name"/>.</summary>
    /// <returns>The strategy's name.</returns>
    public override string ToString() => Name;
}
