using System;
using System.Collections.Generic;
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
/// <item>x̂ = (x − μ_B)/σ_B and y = γ·(x̂·r + d) + β;</item>
/// <item>the running statistics are then updated exactly as <see cref="BatchNormLayer"/> updates them.</item>
/// </list>
/// <para>Backward treats r and d as constants: dx̂ = dy·γ·r goes through the batch-norm backward pass of x̂,
/// dγ = Σ dy·(x̂·r + d) and dβ = Σ dy. Inference uses the running statistics, as batch norm does.
/// With rmax = 1 and dmax = 0 (the defaults, and the start of Ioffe's schedule) it is batch norm.</para>
/// <para>Bad input is rejected as by <see cref="BatchNormLayer"/>, before any state changes. Not thread-safe; the
/// destination overloads allocate nothing in steady state.</para>
/// </remarks>
public sealed class BatchRenormLayer
{
    private readonly BatchNormLayer _norm;
    private readonly double[] _oldMean, _oldVariance;
    private readonly Vector<double> _gammaGradientScratch, _betaGradientScratch;
    private Matrix<double>? _normalizedGradient, _outputGradientScratch;
    private double _rMax = 1, _dMax;

    /// <summary>Creates the layer with γ = 1, β = 0, running mean 0, running variance 1, rmax = 1 and dmax = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="momentum">m in [0, 1] as for <see cref="BatchNormLayer"/>; null for a cumulative average.</param>
    /// <param name="backward">The built-in backward strategy; closed form when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">As for <see cref="BatchNormLayer"/>.</exception>
    /// <exception cref="ArgumentException">A strategy defined outside the library.</exception>
    public BatchRenormLayer(int features, double epsilon = 1e-5, double? momentum = 0.1, BackwardStrategy? backward = null)
    {
        _norm = new BatchNormLayer(features, epsilon, momentum, backward);
        BackwardStrategy.RequireBuiltIn(_norm.BackwardStrategy, nameof(BatchRenormLayer), nameof(backward));
        Gamma = Vector<double>.Build.Dense(features, 1.0);
        Beta = Vector<double>.Build.Dense(features);
        GammaGradient = Vector<double>.Build.Dense(features);
        BetaGradient = Vector<double>.Build.Dense(features);
        _gammaGradientScratch = Vector<double>.Build.Dense(features);
        _betaGradientScratch = Vector<double>.Build.Dense(features);
        R = Vector<double>.Build.Dense(features, 1.0);
        D = Vector<double>.Build.Dense(features);
        _oldMean = new double[features];
        _oldVariance = new double[features];
        Parameters = [new LayerParameter("gamma", Gamma, GammaGradient), new LayerParameter("beta", Beta, BetaGradient)];
    }

    /// <summary>Gets D, the number of features.</summary>
    public int Features => _norm.Features;

    /// <summary>Gets ε.</summary>
    public double Epsilon => _norm.Epsilon;

    /// <summary>Gets the momentum of the running statistics.</summary>
    public double? Momentum => _norm.Momentum;

    /// <summary>Gets or sets rmax ≥ 1, the widest factor r may take. Set it between steps to ramp it up.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1 or not finite.</exception>
    public double RMax
    {
        get => _rMax;
        set => _rMax = value >= 1 && double.IsFinite(value) ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "rmax must be at least 1 and finite.");
    }

    /// <summary>Gets or sets dmax ≥ 0, the widest shift d may take. Set it between steps to ramp it up.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is negative or not finite.</exception>
    public double DMax
    {
        get => _dMax;
        set => _dMax = value >= 0 && double.IsFinite(value) ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "dmax must be non-negative and finite.");
    }

    /// <summary>Gets or sets whether Forward uses batch statistics with the r, d correction (true) or the running statistics.</summary>
    public bool IsTraining
    {
        get => _norm.IsTraining;
        set => _norm.IsTraining = value;
    }

    /// <summary>Gets or sets the backward strategy, <see cref="BackwardStrategy.Staged"/> or <see cref="BackwardStrategy.ClosedForm"/>.</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    /// <exception cref="ArgumentException">A strategy defined outside the library.</exception>
    public BackwardStrategy BackwardStrategy
    {
        get => _norm.BackwardStrategy;
        set
        {
            Guard.NotNull(value, nameof(value));
            BackwardStrategy.RequireBuiltIn(value, nameof(BatchRenormLayer), nameof(value));
            _norm.BackwardStrategy = value;
        }
    }

    /// <summary>Gets γ; update it in place.</summary>
    public Vector<double> Gamma { get; }

    /// <summary>Gets β; update it in place.</summary>
    public Vector<double> Beta { get; }

    /// <summary>Gets dL/dγ = Σ dy·(x̂·r + d), overwritten by each Backward.</summary>
    public Vector<double> GammaGradient { get; }

    /// <summary>Gets dL/dβ = Σ dy, overwritten by each Backward.</summary>
    public Vector<double> BetaGradient { get; }

    /// <summary>Gets ("gamma", Gamma, GammaGradient) and ("beta", Beta, BetaGradient).</summary>
    public IReadOnlyList<LayerParameter> Parameters { get; }

    /// <summary>Gets r per feature from the last Forward (1 after an inference Forward).</summary>
    public Vector<double> R { get; }

    /// <summary>Gets d per feature from the last Forward (0 after an inference Forward).</summary>
    public Vector<double> D { get; }

    /// <summary>Gets the running mean.</summary>
    public Vector<double> RunningMean => _norm.RunningMean;

    /// <summary>Gets the running (unbiased) variance.</summary>
    public Vector<double> RunningVariance => _norm.RunningVariance;

    /// <summary>Gets the number of training batches folded into the running statistics.</summary>
    public long BatchesTracked => _norm.BatchesTracked;

    /// <summary>Gets the cache of the last Forward: x̂ before the r, d correction, μ_B and σ²_B (or the running statistics).</summary>
    public BatchNormCache? Cache => _norm.Cache;

    /// <summary>Normalizes a batch and returns y in a new matrix.</summary>
    /// <param name="input">x, N×D; N ≥ 2 in training.</param>
    /// <returns>y.</returns>
    /// <exception cref="ArgumentNullException">The input is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="BatchNormLayer.Forward(Matrix{double})"/>.</exception>
    public Matrix<double> Forward(Matrix<double> input)
    {
        Guard.NotNull(input, nameof(input));
        Matrix<double> output = Matrix<double>.Build.Dense(input.RowCount, input.ColumnCount);
        Forward(input, output);
        return output;
    }

    /// <summary>Normalizes a batch into <paramref name="output"/>.</summary>
    /// <param name="input">x, N×D; N ≥ 2 in training.</param>
    /// <param name="output">Receives y; it may be <paramref name="input"/>.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="BatchNormLayer.Forward(Matrix{double}, Matrix{double})"/>.</exception>
    public void Forward(Matrix<double> input, Matrix<double> output)
    {
        DenseColumns.Data(_norm.RunningMean).CopyTo(_oldMean);
        DenseColumns.Data(_norm.RunningVariance).CopyTo(_oldVariance);
        _norm.Forward(input, output);   // y = x̂, since the inner layer keeps γ = 1 and β = 0; it checks everything
        BatchNormCache cache = _norm.Cache!;
        for (int j = 0; j < Features; j++)
        {
            if (cache.IsTraining)
            {
                double runningStd = Math.Sqrt(_oldVariance[j] + Epsilon);
                R[j] = Math.Clamp(Math.Sqrt(cache.Variance[j] + Epsilon) / runningStd, 1 / _rMax, _rMax);
                D[j] = Math.Clamp((cache.Mean[j] - _oldMean[j]) / runningStd, -_dMax, _dMax);
            }
            else
            {
                R[j] = 1;
                D[j] = 0;
            }
        }

        // y = γ·(x̂·r + d) + β = x̂·(γ·r) + (γ·d + β), column by column.
        for (int j = 0; j < Features; j++)
        {
            double scale = Gamma[j] * R[j], shift = (Gamma[j] * D[j]) + Beta[j];
            if (DenseColumns.IsDense(output))
            {
                Span<double> column = DenseColumns.Column(output, j);
                ColumnKernels.Affine(column, scale, shift, column);
                continue;
            }

            for (int i = 0; i < output.RowCount; i++)
            {
                output[i, j] = (output[i, j] * scale) + shift;
            }
        }
    }

    /// <summary>Back-propagates dL/dy, with r and d held constant, and returns dL/dx.</summary>
    /// <param name="outputGradient">dL/dy of the last Forward's shape.</param>
    /// <returns>dL/dx.</returns>
    /// <exception cref="ArgumentNullException">The argument is null.</exception>
    /// <exception cref="ArgumentException">Another shape, or a non-finite or overflowing column.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    public Matrix<double> Backward(Matrix<double> outputGradient)
    {
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Matrix<double> inputGradient = Matrix<double>.Build.Dense(outputGradient.RowCount, outputGradient.ColumnCount);
        Backward(outputGradient, inputGradient);
        return inputGradient;
    }

    /// <summary>Back-propagates dL/dy into <paramref name="inputGradient"/>, with r and d held constant.</summary>
    /// <param name="outputGradient">dL/dy of the last Forward's shape.</param>
    /// <param name="inputGradient">Receives dL/dx.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">A shape differs, or a non-finite or overflowing column.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient)
    {
        BatchNormCache cache = _norm.Cache ?? throw new InvalidOperationException("Backward needs the cache of a Forward; call Forward first.");
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.NotNull(inputGradient, nameof(inputGradient));
        Guard.SameShape(outputGradient, cache.BatchSize, Features, nameof(outputGradient), "the last Forward's input");
        Guard.SameShape(inputGradient, cache.BatchSize, Features, nameof(inputGradient), nameof(outputGradient));
        if (_normalizedGradient is null || _normalizedGradient.RowCount != cache.BatchSize)
        {
            _normalizedGradient = Matrix<double>.Build.Dense(cache.BatchSize, Features);
        }

        // dγ = r·Σdy·x̂ + d·Σdy and dβ = Σdy; then dx̂ = dy·γ·r goes through the inner layer's backward.
        Matrix<double> dy = DenseColumns.AsDense(outputGradient, ref _outputGradientScratch);
        for (int j = 0; j < Features; j++)
        {
            ReadOnlySpan<double> column = DenseColumns.Column(dy, j);
            (double sumDy, double sumDyXHat) = ColumnKernels.SumAndDot(column, cache.NormalizedColumn(j));
            if (!double.IsFinite(sumDy) || !double.IsFinite(sumDyXHat))
            {
                throw Guard.NotFinite(nameof(outputGradient), j, "cannot be back-propagated");
            }

            _betaGradientScratch[j] = sumDy;
            _gammaGradientScratch[j] = (R[j] * sumDyXHat) + (D[j] * sumDy);
            ColumnKernels.Scale(column, Gamma[j] * R[j], DenseColumns.Column(_normalizedGradient, j), stream: false);
        }

        _norm.Backward(_normalizedGradient, inputGradient);
        _gammaGradientScratch.CopyTo(GammaGradient);
        _betaGradientScratch.CopyTo(BetaGradient);
    }
}
