using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// A way of computing the backward pass of batch normalization from the forward cache: given x̂, μ, σ²,
/// γ and the upstream gradient dL/dy, it produces dL/dx, dL/dγ and dL/dβ.
/// </summary>
/// <remarks>
/// <para>
/// Two interchangeable instances ship with the library: <see cref="Staged"/>, which walks the computational
/// graph one node at a time, and <see cref="ClosedForm"/>, which evaluates the simplified expression in one
/// fused pass. Both handle a cache from a training Forward (the full gradient through μ and σ²) and from an
/// inference Forward (the frozen-statistics gradient dx = dy·γ/√(running_var + ε)).
/// </para>
/// <para>
/// To write your own, derive from this class and implement <see cref="BackwardCore"/>. The public
/// <see cref="Backward"/> checks the arguments once and hands <see cref="BackwardCore"/> dense matrices of
/// the right shapes. Instances are stateless and may be shared by any number of layers and threads.
/// </para>
/// </remarks>
public abstract class BackwardStrategy
{
    /// <summary>Gets the staged strategy: one stage per node of the graph (dx̂, dσ², dμ, dx), for teaching.</summary>
    public static BackwardStrategy Staged { get; } = new StagedBackward();

    /// <summary>Gets the closed-form strategy: dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)), fused and vectorized.</summary>
    public static BackwardStrategy ClosedForm { get; } = new ClosedFormBackward();

    /// <summary>Gets a short name for the strategy, as used on command lines and in reports.</summary>
    public abstract string Name { get; }

    /// <summary>Computes dL/dx, dL/dγ and dL/dβ from a forward cache and dL/dy.</summary>
    /// <param name="cache">The cache of the Forward being differentiated.</param>
    /// <param name="gamma">γ, one value per feature.</param>
    /// <param name="outputGradient">dL/dy, N×D. It is not modified.</param>
    /// <param name="inputGradient">Receives dL/dx, N×D. It may be the same matrix as <paramref name="outputGradient"/>.</param>
    /// <param name="gammaGradient">Receives dL/dγ = Σᵢ dyᵢ·x̂ᵢ per feature.</param>
    /// <param name="betaGradient">Receives dL/dβ = Σᵢ dyᵢ per feature.</param>
    /// <exception cref="ArgumentNullException">Any argument is null.</exception>
    /// <exception cref="ArgumentException">A shape differs from the cache's N×D.</exception>
    /// <remarks>Allocates only when a matrix or vector argument is not dense, to make a dense copy.</remarks>
    public void Backward(
        BatchNormCache cache,
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

        Matrix<double>? dyScratch = null, dxScratch = null;
        Matrix<double> dy = DenseColumns.AsDense(outputGradient, ref dyScratch);
        Matrix<double> dx = DenseColumns.DenseTarget(inputGradient, ref dxScratch);
        Vector<double> dGamma = DenseColumns.IsDense(gammaGradient) ? gammaGradient : Vector<double>.Build.Dense(features);
        Vector<double> dBeta = DenseColumns.IsDense(betaGradient) ? betaGradient : Vector<double>.Build.Dense(features);
        BackwardCore(cache, DenseColumns.IsDense(gamma) ? gamma : Vector<double>.Build.DenseOfVector(gamma), dy, dx, dGamma, dBeta);
        DenseColumns.CopyBack(dx, inputGradient);
        dGamma.CopyTo(gammaGradient);
        dBeta.CopyTo(betaGradient);
    }

    /// <summary>The arguments are checked; the layer calls this directly with its own dense buffers.</summary>
    internal void BackwardChecked(
        BatchNormCache cache,
        Vector<double> gamma,
        Matrix<double> outputGradient,
        Matrix<double> inputGradient,
        Vector<double> gammaGradient,
        Vector<double> betaGradient)
        => BackwardCore(cache, gamma, outputGradient, inputGradient, gammaGradient, betaGradient);

    /// <summary>
    /// Computes the gradients. All arguments are non-null, dense, and of the cache's shapes;
    /// <paramref name="inputGradient"/> may be the same matrix as <paramref name="outputGradient"/>.
    /// </summary>
    /// <param name="cache">The cache of the Forward being differentiated.</param>
    /// <param name="gamma">γ, D values.</param>
    /// <param name="outputGradient">dL/dy, N×D, dense. Read only.</param>
    /// <param name="inputGradient">Receives dL/dx, N×D, dense.</param>
    /// <param name="gammaGradient">Receives dL/dγ, D values, dense.</param>
    /// <param name="betaGradient">Receives dL/dβ, D values, dense.</param>
    protected abstract void BackwardCore(
        BatchNormCache cache,
        Vector<double> gamma,
        Matrix<double> outputGradient,
        Matrix<double> inputGradient,
        Vector<double> gammaGradient,
        Vector<double> betaGradient);

    /// <summary>
    /// The backward pass of one segment normalized with a single μ and σ²: a column of a batch, a block of a
    /// column (ghost batches), or a group of a row (group and layer norm). Only the built-in strategies have one.
    /// </summary>
    /// <exception cref="NotSupportedException">A strategy defined outside the library.</exception>
    internal virtual void Segment(
        ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat, double gamma, double inverseStd, double epsilon, bool training, Span<double> dx, out double gammaGradient, out double betaGradient)
        => throw new NotSupportedException($"The {Name} strategy works on BatchNormLayer only; the other layers use BackwardStrategy.Staged or BackwardStrategy.ClosedForm.");

    /// <summary>Throws unless <paramref name="strategy"/> is one of the built-in strategies, which the other layers need.</summary>
    internal static void RequireBuiltIn(BackwardStrategy strategy, string layer, string parameterName)
    {
        if (strategy != Staged && strategy != ClosedForm)
        {
            throw new ArgumentException($"{layer} supports the built-in strategies only, not '{strategy.Name}'.", parameterName);
        }
    }

    /// <summary>Returns <see cref="Name"/>.</summary>
    /// <returns>The strategy's name.</returns>
    public override string ToString() => Name;
}
