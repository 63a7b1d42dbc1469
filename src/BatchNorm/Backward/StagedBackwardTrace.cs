using System;
using System.Globalization;
using System.Linq;
using System.Text;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The gradient at every node of the staged backward pass, for a reader following the derivation: dx̂, dσ², dμ with both
/// of its parts and their sum, dx, dγ and dβ. It runs the same node methods as <see cref="BackwardStrategy.Staged"/>
/// and keeps what each produces, the way the CS231n notebook prints them for a small batch.
/// </summary>
/// <remarks>
/// For a cache whose segments are columns or blocks of columns (batch norm, ghost batches, renorm): the per-segment
/// values are indexed like the cache's <see cref="NormalizationCache.Mean"/>. Allocates its matrices and vectors: it is
/// for looking at, not for training loops.
/// </remarks>
public sealed class StagedBackwardTrace
{
    private StagedBackwardTrace(int rows, int features, int segments)
    {
        NormalizedInputGradient = Matrix<double>.Build.Dense(rows, features);
        InputGradient = Matrix<double>.Build.Dense(rows, features);
        VarianceGradient = Vector<double>.Build.Dense(segments);
        MeanGradientDirect = Vector<double>.Build.Dense(segments);
        MeanGradientThroughVariance = Vector<double>.Build.Dense(segments);
        MeanGradient = Vector<double>.Build.Dense(segments);
        GammaGradient = Vector<double>.Build.Dense(features);
        BetaGradient = Vector<double>.Build.Dense(features);
    }

    /// <summary>Gets dL/dx̂ = γ·dL/dy, node y's gradient towards x̂.</summary>
    public Matrix<double> NormalizedInputGradient { get; }

    /// <summary>Gets dL/dσ² per segment: Σᵢ dx̂ᵢ·(xᵢ − μ)·(−½)(σ² + ε)^(−3/2).</summary>
    public Vector<double> VarianceGradient { get; }

    /// <summary>Gets the part of dL/dμ that comes straight from the x̂ᵢ: Σᵢ dx̂ᵢ·(−1/√(σ² + ε)).</summary>
    public Vector<double> MeanGradientDirect { get; }

    /// <summary>Gets the part of dL/dμ that comes through σ²: dL/dσ²·(−2/N)·Σᵢ (xᵢ − μ), zero but for rounding.</summary>
    public Vector<double> MeanGradientThroughVariance { get; }

    /// <summary>Gets dL/dμ whole: the sum of its two parts.</summary>
    public Vector<double> MeanGradient { get; }

    /// <summary>Gets dL/dx: through x̂ᵢ, through σ² and through μ.</summary>
    public Matrix<double> InputGradient { get; }

    /// <summary>Gets dL/dγ = Σᵢ dyᵢ·x̂ᵢ per feature.</summary>
    public Vector<double> GammaGradient { get; }

    /// <summary>Gets dL/dβ = Σᵢ dyᵢ per feature.</summary>
    public Vector<double> BetaGradient { get; }

    /// <summary>Runs the staged backward pass over a cache, keeping every node's gradient.</summary>
    /// <param name="cache">The cache of a Forward whose segments are columns or blocks of columns (batch norm, ghost batches, renorm).</param>
    /// <param name="gamma">The γ the Forward scaled x̂ by, one per feature (γ·r for renorm).</param>
    /// <param name="outputGradient">dL/dy, of the cache's shape.</param>
    /// <returns>The trace.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">A shape differs from the cache's, or the cache is of a row layout (layer or group norm),
    /// where γ varies within a segment, or of a synchronized Forward.</exception>
    public static StagedBackwardTrace Of(NormalizationCache cache, Vector<double> gamma, Matrix<double> outputGradient)
    {
        Guard.NotNull(cache, nameof(cache));
        Guard.NotNull(gamma, nameof(gamma));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.SameShape(outputGradient, cache.BatchSize, cache.Features, nameof(outputGradient), "the cached forward input");
        Guard.Length(gamma, cache.Features, nameof(gamma));
        if (cache.Layout.ByRow)
        {
            throw new ArgumentException("A trace follows one γ per segment: it takes the cache of a batch norm, ghost batches or renorm, not of layer or group norm.", nameof(cache));
        }

        if (cache.Synchronized)
        {
            throw new ArgumentException("A trace runs one worker's segments on their own; the cache of a synchronized Forward needs every worker's sums.", nameof(cache));
        }

        int blocks = cache.RowBlocks, rows = cache.SegmentRows;
        var trace = new StagedBackwardTrace(cache.BatchSize, cache.Features, cache.SegmentCount);
        var dXHat = new double[rows];

        // x̂ as doubles: a single-precision Forward's widened, exactly.
        double[] normalized = cache.NormalizedInputToMatrix().AsColumnMajorArray();
        for (int j = 0; j < cache.Features; j++)
        {
            for (int b = 0; b < blocks; b++)
            {
                int k = (j * blocks) + b;
                double[] dy = outputGradient.Column(j, b * rows, rows).ToArray();
                ReadOnlySpan<double> xHat = normalized.AsSpan((j * cache.BatchSize) + (b * rows), rows);
                double inverseStd = cache.InverseStandardDeviation[k];

                // Node y, then nodes σ² and μ, then node x: the stages of BackwardStrategy.Staged.
                StagedBackward.OutputNode(dy, xHat, gamma[j], dXHat, out double dGamma, out double dBeta);
                trace.GammaGradient[j] += dGamma;
                trace.BetaGradient[j] += dBeta;
                trace.NormalizedInputGradient.SetSubMatrix(b * rows, j, Matrix<double>.Build.DenseOfColumnArrays(dXHat));
                if (cache.FrozenStatistics)
                {
                    trace.InputGradient.SetSubMatrix(b * rows, j, Matrix<double>.Build.DenseOfColumnArrays(Array.ConvertAll(dXHat, d => d * inverseStd)));
                    continue;
                }

                StagedBackward.StatisticsNodes(xHat, inverseStd, dXHat, out double dVariance, out double dMeanDirect, out double sumCentered);
                trace.VarianceGradient[k] = dVariance;
                trace.MeanGradientDirect[k] = dMeanDirect;
                trace.MeanGradientThroughVariance[k] = StagedBackward.ThroughVariance(dVariance, sumCentered, rows);
                trace.MeanGradient[k] = StagedBackward.MeanNode(dMeanDirect, dVariance, sumCentered, rows);
                var dx = (double[])dXHat.Clone();
                StagedBackward.InputNode(xHat, inverseStd, rows, dVariance, trace.MeanGradient[k], dx);
                trace.InputGradient.SetSubMatrix(b * rows, j, Matrix<double>.Build.DenseOfColumnArrays(dx));
            }
        }

        return trace;
    }

    /// <summary>Prints every node's gradient, one block per node, as a notebook would.</summary>
    /// <returns>The text.</returns>
    public override string ToString()
    {
        var text = new StringBuilder();
        void Line(string name, string value) => text.Append(name).Append('\n').Append(value).Append('\n');
        static string Row(Vector<double> v) => "  [" + string.Join(", ", v.Select(e => e.ToString("G6", CultureInfo.InvariantCulture))) + "]";
        static string Grid(Matrix<double> m)
        {
            var rows = new StringBuilder();
            for (int i = 0; i < m.RowCount; i++)
            {
                rows.Append("  [").Append(string.Join(", ", m.Row(i).Select(e => e.ToString("G6", CultureInfo.InvariantCulture).PadLeft(12)))).Append(']');
                rows.Append(i + 1 < m.RowCount ? "\n" : string.Empty);
            }

            return rows.ToString();
        }

        Line("dx̂ = γ·dy", Grid(NormalizedInputGradient));
        Line("dσ²", Row(VarianceGradient));
        Line("dμ, through x̂", Row(MeanGradientDirect));
        Line("dμ, through σ² (zero but for rounding)", Row(MeanGradientThroughVariance));
        Line("dμ", Row(MeanGradient));
        Line("dx", Grid(InputGradient));
        Line("dγ", Row(GammaGradient));
        Line("dβ", Row(BetaGradient));
        return text.ToString().TrimEnd('\n');
    }
}
