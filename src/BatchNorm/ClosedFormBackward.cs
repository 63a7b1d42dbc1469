using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The closed-form backward pass, per feature:
/// dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)), evaluated as γ·istd·(dy − mean(dy) − x̂·mean(dy·x̂)).
/// After an inference Forward it is the frozen-statistics gradient dx = dy·γ·istd.
/// </summary>
/// <remarks>
/// <para>
/// With two rows x̂ = ±√(1 − δ), δ = ε/(σ² + ε), and the bracket reduces to (1 − x̂²)·(dy₁ − dy₂)/2 = δ·(dy₁ − dy₂)/2.
/// Evaluating 1 − x̂² would cancel about log₁₀(1/δ) digits, so two-row batches use dx₁ = −dx₂ = γ·istd·δ·(dy₁ − dy₂)/2
/// with δ = ε·istd², which keeps full precision.
/// </para>
/// <para>
/// Two passes over each column: one fused reduction for Σdy and Σdy·x̂ (which are also dβ and dγ), then one
/// fused map for dx. The derivation is in docs/derivation.md.
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
        int n = cache.BatchSize;
        var dGamma = DenseColumns.Data(gammaGradient);
        var dBeta = DenseColumns.Data(betaGradient);
        var g = DenseColumns.Data(gamma);
        for (int j = 0; j < cache.Features; j++)
        {
            var dy = DenseColumns.Column(outputGradient, j);
            var xHat = cache.NormalizedColumn(j);
            var dx = DenseColumns.Column(inputGradient, j);
            (double sumDy, double sumDyXHat) = ColumnKernels.SumAndDot(dy, xHat);
            dBeta[j] = sumDy;
            dGamma[j] = sumDyXHat;
            double scale = g[j] * cache.InverseStandardDeviation[j];
            if (cache.IsTraining && n == 2)
            {
                double inverseStd = cache.InverseStandardDeviation[j];
                double delta = cache.Epsilon * inverseStd * inverseStd;
                dx[0] = scale * delta * ((dy[0] - dy[1]) / 2);
                dx[1] = -dx[0];
            }
            else if (cache.IsTraining)
            {
                ColumnKernels.ClosedFormInputGradient(dy, xHat, sumDy / n, sumDyXHat / n, scale, dx);
            }
            else
            {
                ColumnKernels.Scale(dy, scale, dx);
            }
        }
    }
}
