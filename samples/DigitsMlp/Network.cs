using System;
using System.Collections.Generic;
using BatchNorm;
using MathNet.Numerics.Distributions;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>A fully connected layer y = x·W + b, with W initialized for ReLU (He et al., 2015).</summary>
/// <typeparam name="T">The precision of the weights and activations: double or float.</typeparam>
public sealed class Linear<T>
    where T : struct, System.Numerics.IFloatingPointIeee754<T>, IFormattable
{
    private Matrix<T>? _input;

    /// <summary>Creates a layer from <paramref name="inputs"/> to <paramref name="outputs"/> features.</summary>
    /// <param name="inputs">Input features.</param>
    /// <param name="outputs">Output features.</param>
    /// <param name="random">The source of the initial weights.</param>
    public Linear(int inputs, int outputs, Random random)
    {
        // Drawn in double and rounded, so that both precisions start from the same weights.
        var normal = new Normal(0, Math.Sqrt(2.0 / inputs), random);
        Weights = Matrix<double>.Build.Random(inputs, outputs, normal).Map(T.CreateChecked);
        Bias = Vector<T>.Build.Dense(outputs);
        WeightsGradient = Matrix<T>.Build.Dense(inputs, outputs);
        BiasGradient = Vector<T>.Build.Dense(outputs);
    }

    /// <summary>Gets W, inputs × outputs.</summary>
    public Matrix<T> Weights { get; }

    /// <summary>Gets b.</summary>
    public Vector<T> Bias { get; }

    /// <summary>Gets dL/dW from the last Backward.</summary>
    public Matrix<T> WeightsGradient { get; }

    /// <summary>Gets dL/db from the last Backward.</summary>
    public Vector<T> BiasGradient { get; }

    /// <summary>y = x·W + b.</summary>
    /// <param name="input">N × inputs.</param>
    /// <returns>N × outputs.</returns>
    public Matrix<T> Forward(Matrix<T> input)
    {
        _input = input;
        Matrix<T> output = input * Weights;
        for (int j = 0; j < output.ColumnCount; j++)
        {
            for (int i = 0; i < output.RowCount; i++)
            {
                output[i, j] += Bias[j];
            }
        }

        return output;
    }

    /// <summary>dW = xᵀ·dy, db = Σᵢ dyᵢ, and returns dx = dy·Wᵀ.</summary>
    /// <param name="outputGradient">dL/dy.</param>
    /// <returns>dL/dx.</returns>
    public Matrix<T> Backward(Matrix<T> outputGradient)
    {
        _input!.TransposeThisAndMultiply(outputGradient, WeightsGradient);
        outputGradient.ColumnSums().CopyTo(BiasGradient);
        return outputGradient.TransposeAndMultiply(Weights);
    }
}

/// <summary>
/// Linear → [normalization] → ReLU → Linear → [normalization] → ReLU → Linear, trained with softmax cross-entropy
/// and plain mini-batch SGD. The two normalization slots hold any <see cref="INormalizationLayer"/>, or nothing.
/// </summary>
/// <typeparam name="T">The precision of the weights and activations: double or float. The normalization layers take
/// either (their γ and β stay double, and the SGD step updates them in double).</typeparam>
public class Network<T>
    where T : struct, System.Numerics.IFloatingPointIeee754<T>, IFormattable
{
    private readonly Linear<T>[] _linear;
    private readonly INormalizationLayer?[] _norms;
    private readonly Matrix<T>?[] _reluMasks = new Matrix<T>?[2];

    /// <summary>Creates the network with whatever normalization <paramref name="normalization"/> makes for each slot.</summary>
    /// <param name="hidden">The widths of the two hidden layers.</param>
    /// <param name="normalization">Makes the layer for a slot of the given width; null for a network without normalization.</param>
    /// <param name="seed">Seeds the initial weights.</param>
    public Network((int First, int Second) hidden, Func<int, INormalizationLayer>? normalization, int seed)
    {
        var random = new Random(seed);
        _linear =
        [
            new Linear<T>(DigitsData.Pixels, hidden.First, random),
            new Linear<T>(hidden.First, hidden.Second, random),
            new Linear<T>(hidden.Second, DigitsData.Classes, random),
        ];
        _norms = [normalization?.Invoke(hidden.First), normalization?.Invoke(hidden.Second)];
    }

    /// <summary>Gets the three Linear layers, in order, for code that combines their gradients across processes.</summary>
    public IReadOnlyList<Linear<T>> LinearLayers => _linear;

    /// <summary>Switches the normalization layers between training and inference.</summary>
    /// <param name="training">True while training.</param>
    public void SetTraining(bool training)
    {
        foreach (INormalizationLayer? norm in _norms)
        {
            norm?.IsTraining = training;
        }
    }

    /// <summary>Computes the logits of a batch.</summary>
    /// <param name="input">N × 64 pixels.</param>
    /// <returns>N × 10 logits.</returns>
    public Matrix<T> Forward(Matrix<T> input)
    {
        Matrix<T> h = input;
        for (int k = 0; k < 2; k++)
        {
            h = _linear[k].Forward(h);
            if (_norms[k] is { } norm)
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                h = h is Matrix<float> single ? (Matrix<T>)(object)norm.Forward(single) : (Matrix<T>)(object)norm.Forward((Matrix<double>)(object)h);
                Network.AddNormalizationTicks(System.Diagnostics.Stopwatch.GetTimestamp() - start);
            }

            _reluMasks[k] = h.Map(v => v > T.Zero ? T.One : T.Zero);
            h = h.PointwiseMaximum(T.Zero);
        }

        return _linear[2].Forward(h);
    }

    /// <summary>Back-propagates dL/dlogits through every layer, filling all gradients.</summary>
    /// <param name="logitsGradient">N × 10.</param>
    public void Backward(Matrix<T> logitsGradient)
    {
        Matrix<T> g = _linear[2].Backward(logitsGradient);
        for (int k = 1; k >= 0; k--)
        {
            g = g.PointwiseMultiply(_reluMasks[k]!);
            if (_norms[k] is { } norm)
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                g = g is Matrix<float> single ? (Matrix<T>)(object)norm.Backward(single) : (Matrix<T>)(object)norm.Backward((Matrix<double>)(object)g);
                Network.AddNormalizationTicks(System.Diagnostics.Stopwatch.GetTimestamp() - start);
            }

            g = _linear[k].Backward(g);
        }
    }

    /// <summary>One plain SGD step on every parameter: p ← p − rate·dL/dp.</summary>
    /// <param name="rate">The learning rate.</param>
    public void Step(double rate)
    {
        T r = T.CreateChecked(rate);
        foreach (Linear<T> layer in _linear)
        {
            layer.Weights.Subtract(layer.WeightsGradient * r, layer.Weights);
            layer.Bias.Subtract(layer.BiasGradient * r, layer.Bias);
        }

        foreach (INormalizationLayer? norm in _norms)
        {
            foreach (LayerParameter p in norm?.Parameters ?? [])
            {
                p.Value.Subtract(p.Gradient * rate, p.Value);
            }
        }
    }
}

/// <summary>The network in double precision, and what both precisions share: the loss and the time spent in normalization.</summary>
public sealed class Network : Network<double>
{
    private static long _normalizationTicks;

    /// <inheritdoc cref="Network{T}(ValueTuple{int, int}, Func{int, INormalizationLayer}?, int)"/>
    public Network((int First, int Second) hidden, Func<int, INormalizationLayer>? normalization, int seed)
        : base(hidden, normalization, seed)
    {
    }

    /// <summary>Gets the Stopwatch ticks spent in the normalization layers' Forward and Backward, over all networks of this process.</summary>
    public static long NormalizationTicks => _normalizationTicks;

    /// <summary>The mean softmax cross-entropy of a batch and its gradient with respect to the logits.</summary>
    /// <param name="logits">N × 10.</param>
    /// <param name="labels">N labels.</param>
    /// <returns>The mean loss, dL/dlogits (N × 10), and how many rows the arg-max classifies correctly.</returns>
    public static (double Loss, Matrix<double> Gradient, int Correct) SoftmaxCrossEntropy(Matrix<double> logits, IReadOnlyList<int> labels)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(labels);
        int n = logits.RowCount;
        Matrix<double> gradient = Matrix<double>.Build.Dense(n, logits.ColumnCount);
        double loss = 0;
        int correct = 0;
        for (int i = 0; i < n; i++)
        {
            Vector<double> row = logits.Row(i);
            double max = row.Maximum();
            Vector<double> exp = (row - max).PointwiseExp();
            double sum = exp.Sum();
            loss -= row[labels[i]] - max - Math.Log(sum);
            correct += double.IsFinite(sum) && double.IsFinite(max) && row.MaximumIndex() == labels[i] ? 1 : 0;
            gradient.SetRow(i, exp / sum);
            gradient[i, labels[i]] -= 1;
        }

        return (loss / n, gradient / n, correct);
    }

    /// <summary>
    /// <see cref="SoftmaxCrossEntropy(Matrix{double}, IReadOnlyList{int})"/> of logits in either precision: computed in
    /// double (the logits widened exactly), the gradient rounded to <typeparamref name="T"/>.
    /// </summary>
    /// <typeparam name="T">The network's precision.</typeparam>
    /// <param name="logits">N × 10.</param>
    /// <param name="labels">N labels.</param>
    /// <returns>The mean loss, dL/dlogits (N × 10), and how many rows the arg-max classifies correctly.</returns>
    public static (double Loss, Matrix<T> Gradient, int Correct) SoftmaxCrossEntropy<T>(Matrix<T> logits, IReadOnlyList<int> labels)
        where T : struct, System.Numerics.IFloatingPointIeee754<T>, IFormattable
    {
        ArgumentNullException.ThrowIfNull(logits);
        if (logits is Matrix<double> wide)
        {
            (double loss, Matrix<double> gradient, int correct) = SoftmaxCrossEntropy(wide, labels);
            return (loss, (Matrix<T>)(object)gradient, correct);
        }

        (double l, Matrix<double> g, int c) = SoftmaxCrossEntropy(logits.Map(double.CreateChecked), labels);
        return (l, g.Map(T.CreateChecked), c);
    }

    /// <summary>Adds time spent in a normalization layer.</summary>
    /// <param name="ticks">Stopwatch ticks.</param>
    internal static void AddNormalizationTicks(long ticks) => _normalizationTicks += ticks;
}
