using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The closed-form backward pass, per feature:
/// dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)), evaluated as γ·istd·(dy − mean(dy) − x̂·mean(dy·x̂)).
/// After an inference Forward it is the frozen-statistics gradient dx = dy·γ·istd.
/// </summary>
/// <remarks>
/// <para>
/// Two passes over each column, the second while the column is still in cache: one fused reduction for
/// Σdy and Σdy·x̂ (which are also dβ and dγ), then one fused map for dx. Columns are split across threads
/// for large batches. The derivation is in docs/derivation.md.
/// </para>
/// <para>
/// With two rows x̂ = ±√(1 − δ), δ = ε/(σ² + ε), and the bracket reduces to (1 − x̂²)·(dy₁ − dy₂)/2 = δ·(dy₁ − dy₂)/2.
/// Evaluating 1 − x̂² would cancel about log₁₀(1/δ) digits, so two-row batches use dx₁ = −dx₂ = γ·istd·δ·(dy₁ − dy₂)/2
/// with δ = ε·istd², which keeps full precision.
/// </para>
/// </remarks>
internal sealed class ClosedFormBackward : BackwardStrategy
{
    public override string Name => "closed";

    protected override void BackwardCore(
        BatchNormCache cache,
        Vector<double> gamma,
        Matrix<double> outputGradient,
        Matrix<double> inputGradient,
        Vector<double> gammaGradient,
        Vector<double> betaGradient)
    {
        if (cache.StrategyWork is not Work work)
        {
            cache.StrategyWork = work = new Work(cache);
        }

        work.Start(gamma, outputGradient, inputGradient, gammaGradient, betaGradient);
        try
        {
            cache.Runner.Run(work, cache.BatchSize, cache.Features);
        }
        finally
        {
            work.Finish();
        }
    }

    /// <summary>The closed-form backward pass of one normalized segment; see the class remarks.</summary>
    internal override void Segment(
        ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat, double gamma, double inverseStd, double epsilon, bool training, Span<double> dx, out double gammaGradient, out double betaGradient)
        => Column(dy, xHat, gamma, inverseStd, epsilon, training, stream: false, dx, out gammaGradient, out betaGradient);

    /// <summary>
    /// Σdy and Σdy·x̂ in one fused pass, then dx = γ·istd·(dy − mean(dy) − x̂·mean(dy·x̂)) in another; the
    /// frozen-statistics gradient dy·γ·istd after an inference Forward; the exact two-row form for two rows.
    /// </summary>
    private static void Column(
        ReadOnlySpan<double> dy, ReadOnlySpan<double> xHat, double gamma, double inverseStd, double epsilon, bool training, bool stream, Span<double> dx, out double gammaGradient, out double betaGradient)
    {
        int n = dy.Length;
        (double sumDy, double sumDyXHat) = ColumnKernels.SumAndDot(dy, xHat);
        betaGradient = sumDy;
        gammaGradient = sumDyXHat;
        double scale = gamma * inverseStd;
        if (!training)
        {
            ColumnKernels.Scale(dy, scale, dx, stream);
        }
        else if (n == 2)
        {
            double delta = epsilon * inverseStd * inverseStd;
            dx[0] = scale * delta * ((dy[0] - dy[1]) / 2);
            dx[1] = -dx[0];
        }
        else
        {
            ColumnKernels.ClosedFormInputGradient(dy, xHat, sumDy / n, sumDyXHat / n, scale, dx, stream);
        }
    }

    /// <summary>One closed-form backward over a range of columns; it lives in the cache so steps allocate nothing.</summary>
    private sealed class Work(BatchNormCache cache) : IColumnWork
    {
        private Vector<double>? _gamma, _gammaGradient, _betaGradient;
        private Matrix<double>? _dy, _dx;

        public void Start(Vector<double> gamma, Matrix<double> dy, Matrix<double> dx, Vector<double> gammaGradient, Vector<double> betaGradient)
        {
            (_gamma, _dy, _dx, _gammaGradient, _betaGradient) = (gamma, dy, dx, gammaGradient, betaGradient);
        }

        public void Finish() => (_gamma, _dy, _dx, _gammaGradient, _betaGradient) = (null, null, null, null, null);

        public void Run(int start, int end)
        {
            bool stream = (long)cache.BatchSize * cache.Features >= ColumnKernels.StreamingThreshold;
            Span<double> dGamma = DenseColumns.Data(_gammaGradient!), dBeta = DenseColumns.Data(_betaGradient!);
            Span<double> gamma = DenseColumns.Data(_gamma!);
            int blocks = cache.VirtualBatches, rows = cache.VirtualBatchSize;
            for (int j = start; j < end; j++)
            {
                dGamma[j] = dBeta[j] = 0;
                for (int b = 0; b < blocks; b++)
                {
                    Column(
                        DenseColumns.Column(_dy!, j).Slice(b * rows, rows),
                        cache.NormalizedColumn(j).Slice(b * rows, rows),
                        gamma[j],
                        cache.InverseStandardDeviation[(j * blocks) + b],
                        cache.Epsilon,
                        cache.IsTraining,
                        stream,
                        DenseColumns.Column(_dx!, j).Slice(b * rows, rows),
                        out double blockGamma,
                        out double blockBeta);
                    dGamma[j] += blockGamma;
                    dBeta[j] += blockBeta;
                }
            }
        }
    }
}
