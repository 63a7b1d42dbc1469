using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Batch renormalization (Ioffe, 2017): batch norm whose training output is corrected towards the running
/// statistics, so that training and inference agree better with small or non-i.i.d. batches.
/// </summary>
/// <remarks>
/// <para>Training, per feature, with σ_B = √(σ² + ε) from the batch and σ = √(running_var + ε), μ from the running
/// statistics as they were before this batch:</para>
/// <list type="bullet">
/// <item>r = clip(σ_B/σ, 1/rmax, rmax) and d = clip((μ_B − μ)/σ, −dmax, dmax);</item>
/// <item>x̂ = (x − μ_B)/σ_B and y = γ·(x̂·r + d) + β, computed as one affine map of x̂: y = γ′·x̂ + β′ with γ′ = γ·r and
/// β′ = γ·d + β, in the same fused pass as x̂;</item>
/// <item>the running statistics are then updated exactly as <see cref="BatchNormLayer"/> updates them.</item>
/// </list>
/// <para>Backward treats r and d as constants: it is the batch-norm backward pass with γ′ in place of γ, and by the chain
/// rule dγ = r·Σ dy·x̂ + d·Σ dy and dβ = Σ dy. Inference uses the running statistics, as batch norm does.
/// With rmax = 1 and dmax = 0 (the defaults, and the start of Ioffe's schedule) it is batch norm.</para>
/// <para>Bad input is rejected as by <see cref="BatchNormLayer"/>, before any state changes, including <see cref="R"/> and
/// <see cref="D"/>. Not thread-safe; the destination overloads allocate nothing in steady state.</para>
/// </remarks>
public sealed class BatchRenormLayer : RunningStatisticsLayer, ISegmentAffine
{
    private readonly double[] _nextR, _nextD;
    private double _rMax = 1, _dMax;

    /// <summary>Creates the layer with γ = 1, β = 0, running mean 0, running variance 1, rmax = 1 and dmax = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="momentum">m in [0, 1] as for <see cref="BatchNormLayer"/>; null for a cumulative average.</param>
    /// <param name="backward">The backward strategy; closed form when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">As for <see cref="BatchNormLayer"/>.</exception>
    public BatchRenormLayer(int features, double epsilon = 1e-5, double? momentum = 0.1, BackwardStrategy? backward = null)
        : base(features, 1, epsilon, momentum, backward, affine: true, trackRunningStatistics: true)
    {
        R = Vector<double>.Build.Dense(features, 1.0);
        D = Vector<double>.Build.Dense(features);
        _nextR = new double[features];
        _nextD = new double[features];
    }

    /// <summary>Gets or sets rmax ≥ 1, the widest factor r may take. Set it between steps to ramp it up.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1 or not finite.</exception>
    public double RMax
    {
        get => _rMax;
        set => _rMax = ValidRMax(value) ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "rmax must be at least 1 and finite.");
    }

    /// <summary>Gets or sets dmax ≥ 0, the widest shift d may take. Set it between steps to ramp it up.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is negative or not finite.</exception>
    public double DMax
    {
        get => _dMax;
        set => _dMax = ValidDMax(value) ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "dmax must be non-negative and finite.");
    }

    /// <summary>Gets r per feature from the last Forward (1 after an inference Forward).</summary>
    public Vector<double> R { get; }

    /// <summary>Gets d per feature from the last Forward (0 after an inference Forward).</summary>
    public Vector<double> D { get; }

    /// <summary>Creates a layer from a state written by <see cref="NormalizationLayer.ExportState"/> of a <see cref="BatchRenormLayer"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="NormalizationLayer.ImportState"/>, or the state is of another layer type.</exception>
    public static new BatchRenormLayer FromState(string json) => (BatchRenormLayer)LayerState.Create(json, typeof(BatchRenormLayer));

    private protected override ISegmentAffine TrainingAffine => this;

    private protected override string Describe() => string.Create(System.Globalization.CultureInfo.InvariantCulture, $", rmax: {_rMax}, dmax: {_dMax}") + base.Describe();

    /// <summary>r and d from the batch statistics and the running ones (not yet updated); y = γ·r·x̂ + (γ·d + β).</summary>
    void ISegmentAffine.Affine(int feature, double mean, double variance, ref double scale, ref double shift)
    {
        double runningStd = Math.Sqrt(RunningVariance[feature] + Epsilon);
        double r = Math.Clamp(Math.Sqrt(variance + Epsilon) / runningStd, 1 / _rMax, _rMax);
        double d = Math.Clamp((mean - RunningMean[feature]) / runningStd, -_dMax, _dMax);
        _nextR[feature] = r;
        _nextD[feature] = d;
        (scale, shift) = (scale * r, (scale * d) + shift);
    }

    private protected override void OnForwardCommitted(NormalizationCache cache)
    {
        // r and d were worked out with the running statistics as they were before this batch.
        if (cache.FrozenStatistics)
        {
            DenseColumns.Data(R).Fill(1.0);
            DenseColumns.Data(D).Clear();
        }
        else
        {
            _nextR.CopyTo(DenseColumns.Data(R));
            _nextD.CopyTo(DenseColumns.Data(D));
        }

        base.OnForwardCommitted(cache);
    }

    private protected override void BackwardScale(Span<double> scale)
    {
        for (int j = 0; j < Features; j++)
        {
            scale[j] = Gamma[j] * R[j];
        }
    }

    private protected override void ToParameterGradients(Span<double> scaleGradient, Span<double> shiftGradient)
    {
        // γ′ = γ·r and β′ = γ·d + β, so dγ = r·dγ′ + d·dβ′ and dβ = dβ′.
        for (int j = 0; j < Features; j++)
        {
            scaleGradient[j] = (R[j] * scaleGradient[j]) + (D[j] * shiftGradient[j]);
        }
    }

    internal override void WriteStateFields(LayerState.Writer writer)
    {
        base.WriteStateFields(writer);
        writer.Number("rMax", _rMax);
        writer.Number("dMax", _dMax);
    }

    internal override Action? ReadStateFields(LayerState state)
    {
        Action? applyRunningStatistics = base.ReadStateFields(state);
        double rMax = state.Number("rMax"), dMax = state.Number("dMax");
        if (!ValidRMax(rMax) || !ValidDMax(dMax))
        {
            throw new FormatException("'rMax' must be at least 1 and 'dMax' non-negative.");
        }

        return () =>
        {
            applyRunningStatistics?.Invoke();
            (_rMax, _dMax) = (rMax, dMax);
        };
    }

    private static bool ValidRMax(double value) => value >= 1 && double.IsFinite(value);

    private static bool ValidDMax(double value) => value >= 0 && double.IsFinite(value);
}
