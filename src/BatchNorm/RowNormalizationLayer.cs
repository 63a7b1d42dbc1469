using System;
using System.Collections.Generic;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The shared engine of <see cref="LayerNormLayer"/> and <see cref="GroupNormLayer"/>: statistics per row, over
/// each group of adjacent columns, and γ and β per feature. There are no running statistics, so training and
/// inference behave the same, and a single row is a valid batch.
/// </summary>
/// <remarks>
/// <para>Per row i and group g of C = D/G adjacent features:
/// μ = (1/C)·Σ xᵢⱼ and σ² = (1/C)·Σ (xᵢⱼ − μ)² over the group, x̂ᵢⱼ = (xᵢⱼ − μ)/√(σ² + ε), yᵢⱼ = γⱼ·x̂ᵢⱼ + βⱼ.</para>
/// <para>Backward: dγⱼ = Σᵢ dyᵢⱼ·x̂ᵢⱼ, dβⱼ = Σᵢ dyᵢⱼ, and within each group, with dx̂ = dy·γ, the batch-norm backward
/// pass of the group: dx = (1/√(σ² + ε))·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) for the closed form, or the same
/// graph walked node by node for the staged strategy.</para>
/// <para>Rows are strided in MathNet's column-major storage, so the layer works on a transposed copy, where each
/// group of a row is contiguous, and runs the same kernels and strategies as <see cref="BatchNormLayer"/> on it.</para>
/// <para><b>Bad input</b> throws before anything is written. A layer is not thread-safe. The destination
/// overloads allocate nothing once the scratch buffers exist for the batch shape.</para>
/// </remarks>
public abstract class RowNormalizationLayer
{
    private readonly int _groupSize;
    private BackwardStrategy _backwardStrategy;
    private Matrix<double>? _xHatByRow;          // D×N: column i is row i of x̂
    private double[] _inverseStd = [];           // per row and group, row-major
    private double[] _mean = [], _correction = [], _variance = [];
    private Matrix<double>? _byRow;              // D×N scratch for transposes
    private Matrix<double>? _inputScratch, _outputScratch;
    private readonly Vector<double> _gammaGradientScratch, _betaGradientScratch;

    /// <summary>Creates the layer with γ = 1 and β = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="groups">G, at least 1, dividing D.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="backward">The built-in strategy to use; closed form when null.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> or <paramref name="groups"/> ≤ 0, or ε not positive and finite.</exception>
    /// <exception cref="ArgumentException"><paramref name="groups"/> does not divide <paramref name="features"/>.</exception>
    private protected RowNormalizationLayer(int features, int groups, double epsilon, BackwardStrategy? backward)
    {
        if (features <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(features), features, "The number of features must be at least 1.");
        }

        if (groups <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(groups), groups, "The number of groups must be at least 1.");
        }

        if (features % groups != 0)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"{features} features cannot be split into {groups} groups of equal size: the number of groups must divide the number of features."), nameof(groups));
        }

        if (!(epsilon > 0) || double.IsInfinity(epsilon))
        {
            throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "Epsilon must be positive and finite.");
        }

        Features = features;
        GroupCount = groups;
        _groupSize = features / groups;
        Epsilon = epsilon;
        _backwardStrategy = BackwardStrategy.ClosedForm;
        BackwardStrategy = backward ?? BackwardStrategy.ClosedForm;
        Gamma = Vector<double>.Build.Dense(features, 1.0);
        Beta = Vector<double>.Build.Dense(features);
        GammaGradient = Vector<double>.Build.Dense(features);
        BetaGradient = Vector<double>.Build.Dense(features);
        _gammaGradientScratch = Vector<double>.Build.Dense(features);
        _betaGradientScratch = Vector<double>.Build.Dense(features);
        Parameters = [new LayerParameter("gamma", Gamma, GammaGradient), new LayerParameter("beta", Beta, BetaGradient)];
    }

    /// <summary>Gets D, the number of features (columns).</summary>
    public int Features { get; }

    /// <summary>Gets ε.</summary>
    public double Epsilon { get; }

    /// <summary>Gets or sets the backward strategy: <see cref="BackwardStrategy.Staged"/> or <see cref="BackwardStrategy.ClosedForm"/> (the default).</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    /// <exception cref="ArgumentException">A strategy defined outside the library; those work on <see cref="BatchNormLayer"/> only.</exception>
    public BackwardStrategy BackwardStrategy
    {
        get => _backwardStrategy;
        set
        {
            Guard.NotNull(value, nameof(value));
            BackwardStrategy.RequireBuiltIn(value, GetType().Name, nameof(value));
            _backwardStrategy = value;
        }
    }

    /// <summary>Gets γ, per feature, 1 at start; update it in place.</summary>
    public Vector<double> Gamma { get; }

    /// <summary>Gets β, per feature, 0 at start; update it in place.</summary>
    public Vector<double> Beta { get; }

    /// <summary>Gets dL/dγ, overwritten by each Backward.</summary>
    public Vector<double> GammaGradient { get; }

    /// <summary>Gets dL/dβ, overwritten by each Backward.</summary>
    public Vector<double> BetaGradient { get; }

    /// <summary>Gets ("gamma", Gamma, GammaGradient) and ("beta", Beta, BetaGradient).</summary>
    public IReadOnlyList<LayerParameter> Parameters { get; }

    /// <summary>Gets the number of groups each row is split into.</summary>
    private protected int GroupCount { get; }

    /// <summary>Sets γ to 1 and β to 0.</summary>
    public void ResetParameters()
    {
        Gamma.Clear();
        Gamma.Add(1.0, Gamma);
        Beta.Clear();
    }

    /// <summary>Normalizes each row's groups and returns y in a new matrix.</summary>
    /// <param name="input">x, N×D with N ≥ 1.</param>
    /// <returns>y, a new N×D matrix.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    /// <exception cref="ArgumentException">The column count is not D, or a row holds NaN or infinity or overflows its statistics (the message names the row).</exception>
    public Matrix<double> Forward(Matrix<double> input)
    {
        CheckInput(input);
        Matrix<double> output = Matrix<double>.Build.Dense(input.RowCount, Features);
        ForwardCore(input, output);
        return output;
    }

    /// <summary>Normalizes each row's groups into <paramref name="output"/>, which may be <paramref name="input"/> itself.</summary>
    /// <param name="input">x, N×D with N ≥ 1.</param>
    /// <param name="output">Receives y, N×D.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Forward(Matrix{double})"/>, or the shapes differ.</exception>
    public void Forward(Matrix<double> input, Matrix<double> output)
    {
        CheckInput(input);
        Guard.NotNull(output, nameof(output));
        Guard.SameShape(output, input.RowCount, input.ColumnCount, nameof(output), nameof(input));
        ForwardCore(input, output);
    }

    /// <summary>Back-propagates dL/dy through the last Forward and returns dL/dx; writes the γ and β gradients.</summary>
    /// <param name="outputGradient">dL/dy, of the last Forward's shape.</param>
    /// <returns>dL/dx in a new matrix.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="outputGradient"/> is null.</exception>
    /// <exception cref="ArgumentException">Another shape, or a column holds NaN or infinity or overflows dγ or dβ.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    public Matrix<double> Backward(Matrix<double> outputGradient)
    {
        CheckOutputGradient(outputGradient);
        Matrix<double> inputGradient = Matrix<double>.Build.Dense(outputGradient.RowCount, Features);
        BackwardCore(outputGradient, inputGradient);
        return inputGradient;
    }

    /// <summary>Back-propagates dL/dy into <paramref name="inputGradient"/> (which may be <paramref name="outputGradient"/>).</summary>
    /// <param name="outputGradient">dL/dy, of the last Forward's shape.</param>
    /// <param name="inputGradient">Receives dL/dx.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Backward(Matrix{double})"/>, or <paramref name="inputGradient"/> has another shape.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient)
    {
        CheckOutputGradient(outputGradient);
        Guard.NotNull(inputGradient, nameof(inputGradient));
        Guard.SameShape(inputGradient, outputGradient.RowCount, Features, nameof(inputGradient), nameof(outputGradient));
        BackwardCore(outputGradient, inputGradient);
    }

    private void CheckInput(Matrix<double> input)
    {
        Guard.NotNull(input, nameof(input));
        Guard.Columns(input, Features, nameof(input));
    }

    private void CheckOutputGradient(Matrix<double> outputGradient)
    {
        Matrix<double> cached = _xHatByRow ?? throw new InvalidOperationException("Backward needs the cache of a Forward; call Forward first.");
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.SameShape(outputGradient, cached.ColumnCount, Features, nameof(outputGradient), "the last Forward's input");
    }

    private void ForwardCore(Matrix<double> input, Matrix<double> output)
    {
        int n = input.RowCount, segments = n * GroupCount;
        Matrix<double> byRow = ByRow(n);
        DenseColumns.AsDense(input, ref _inputScratch).Transpose(byRow);
        if (_mean.Length != segments)
        {
            (_mean, _correction, _variance) = (new double[segments], new double[segments], new double[segments]);
        }

        // Statistics of every group of every row first: nothing is written until they are all finite.
        Span<double> rows = DenseColumns.Data(byRow);
        for (int s = 0; s < segments; s++)
        {
            ColumnKernels.Moments(rows.Slice(s * _groupSize, _groupSize), out _mean[s], out _correction[s], out _variance[s]);
            if (!double.IsFinite(_mean[s] + _correction[s]) || !double.IsFinite(_variance[s]))
            {
                throw new ArgumentException(
                    string.Create(CultureInfo.InvariantCulture, $"Row {s / GroupCount} of input cannot be normalized: group {s % GroupCount} holds NaN or infinity, or values so large that its statistics overflow."),
                    nameof(input));
            }
        }

        if (_xHatByRow is null || _xHatByRow.ColumnCount != n)
        {
            _xHatByRow = Matrix<double>.Build.Dense(Features, n);
            _inverseStd = new double[segments];
        }

        Span<double> xHat = DenseColumns.Data(_xHatByRow);
        for (int s = 0; s < segments; s++)
        {
            _inverseStd[s] = 1.0 / Math.Sqrt(_variance[s] + Epsilon);
            Span<double> segment = xHat.Slice(s * _groupSize, _groupSize);
            ColumnKernels.Normalize(rows.Slice(s * _groupSize, _groupSize), _mean[s], _correction[s], _inverseStd[s], 1, 0, segment, segment, stream: false);
        }

        Matrix<double> y = DenseColumns.DenseTarget(output, ref _outputScratch);
        _xHatByRow.Transpose(y);
        for (int j = 0; j < Features; j++)
        {
            Span<double> column = DenseColumns.Column(y, j);
            ColumnKernels.Affine(column, Gamma[j], Beta[j], column);
        }

        DenseColumns.CopyBack(y, output);
    }

    private void BackwardCore(Matrix<double> outputGradient, Matrix<double> inputGradient)
    {
        Matrix<double> xHatByRow = _xHatByRow!;
        int n = xHatByRow.ColumnCount;
        Matrix<double> byRow = ByRow(n);
        DenseColumns.AsDense(outputGradient, ref _inputScratch).Transpose(byRow);
        Span<double> dy = DenseColumns.Data(byRow);
        ReadOnlySpan<double> xHat = DenseColumns.Data(xHatByRow);

        // dβⱼ = Σᵢ dyᵢⱼ and dγⱼ = Σᵢ dyᵢⱼ·x̂ᵢⱼ, then dx̂ = dy·γ in place, row by row.
        Span<double> dGamma = DenseColumns.Data(_gammaGradientScratch), dBeta = DenseColumns.Data(_betaGradientScratch);
        dGamma.Clear();
        dBeta.Clear();
        for (int i = 0; i < n; i++)
        {
            Span<double> row = dy.Slice(i * Features, Features);
            ReadOnlySpan<double> rowXHat = xHat.Slice(i * Features, Features);
            for (int j = 0; j < Features; j++)
            {
                dBeta[j] += row[j];
                dGamma[j] += row[j] * rowXHat[j];
                row[j] *= Gamma[j];
            }
        }

        for (int j = 0; j < Features; j++)
        {
            if (!double.IsFinite(dBeta[j]) || !double.IsFinite(dGamma[j]))
            {
                throw Guard.NotFinite(nameof(outputGradient), j, "cannot be back-propagated");
            }
        }

        // Each group of each row is a batch-norm segment with upstream gradient dx̂ and γ = 1; dx overwrites dx̂.
        for (int s = 0; s < n * GroupCount; s++)
        {
            Span<double> segment = dy.Slice(s * _groupSize, _groupSize);
            _backwardStrategy.Segment(segment, xHat.Slice(s * _groupSize, _groupSize), 1, _inverseStd[s], Epsilon, training: true, segment, out _, out _);
        }

        Matrix<double> dx = DenseColumns.DenseTarget(inputGradient, ref _outputScratch);
        byRow.Transpose(dx);
        DenseColumns.CopyBack(dx, inputGradient);
        _gammaGradientScratch.CopyTo(GammaGradient);
        _betaGradientScratch.CopyTo(BetaGradient);
    }

    private Matrix<double> ByRow(int rows)
    {
        if (_byRow is null || _byRow.ColumnCount != rows)
        {
            _byRow = Matrix<double>.Build.Dense(Features, rows);
        }

        return _byRow;
    }
}

/// <summary>
/// Layer normalization (Ba, Kiros and Hinton, 2016): each row is normalized over all its features, then scaled
/// by γ and shifted by β per feature. No running statistics; the same in training and inference; works on a
/// single row. See <see cref="RowNormalizationLayer"/> for the formulas.
/// </summary>
public sealed class LayerNormLayer : RowNormalizationLayer
{
    /// <summary>Creates the layer with γ = 1 and β = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="backward">The built-in strategy to use; closed form when null.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> ≤ 0 or ε not positive and finite.</exception>
    public LayerNormLayer(int features, double epsilon = 1e-5, BackwardStrategy? backward = null)
        : base(features, 1, epsilon, backward)
    {
    }
}

/// <summary>
/// Group normalization (Wu and He, 2018): each row's features are split into G groups of adjacent columns, and
/// each group is normalized with its own statistics, then scaled by γ and shifted by β per feature. With G = 1 it
/// is <see cref="LayerNormLayer"/>. See <see cref="RowNormalizationLayer"/> for the formulas.
/// </summary>
public sealed class GroupNormLayer : RowNormalizationLayer
{
    /// <summary>Creates the layer with γ = 1 and β = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="groups">G, at least 1; it must divide D.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="backward">The built-in strategy to use; closed form when null.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> or <paramref name="groups"/> ≤ 0, or ε not positive and finite.</exception>
    /// <exception cref="ArgumentException"><paramref name="groups"/> does not divide <paramref name="features"/>.</exception>
    public GroupNormLayer(int features, int groups, double epsilon = 1e-5, BackwardStrategy? backward = null)
        : base(features, groups, epsilon, backward)
    {
    }

    /// <summary>Gets G, the number of groups per row.</summary>
    public int Groups => GroupCount;
}
