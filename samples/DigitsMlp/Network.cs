using System;
using System.Collections.Generic;
using BatchNorm;
using MathNet.Numerics.Distributions;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>A fully connected layer y = x·W + b, with W initialized for ReLU (He et al., 2015).</summary>
public sealed class Linear
{
    private Matrix<double>? _input;

    /// <summary>Creates a layer from <paramref name="inputs"/> to <paramref name="outputs"/> features.</summary>
    /// <param name="inputs">Input features.</param>
    /// <param name="outputs">Output features.</param>
    /// <param name="random">The source of the initial weights.</param>
    public Linear(int inputs, int outputs, Random random)
    {
        var normal = new Normal(0, Math.Sqrt(2.0 / inputs), random);
        Weights = Matrix<double>.Build.Random(inputs, outputs, normal);
        Bias = Vector<double>.Build.Dense(outputs);
        WeightsGradient = Matrix<double>.Build.Dense(inputs, outputs);
        BiasGradient = Vector<double>.Build.Dense(outputs);
    }

    /// <summary>Gets W, inputs × outputs.</summary>
    public Matrix<double> Weights { get; }

    /// <summary>Gets b.</summary>
    public Vector<double> Bias { get; }

    /// <summary>Gets dL/dW from the last Backward.</summary>
    public Matrix<double> WeightsGradient { get; }

    /// <summary>Gets dL/db from the last Backward.</summary>
    public Vector<double> BiasGradient { get; }

    /// <summary>y = x·W + b.</summary>
    /// <param name="input">N × inputs.</param>
    /// <returns>N × outputs.</returns>
    public Matrix<double> Forward(Matrix<double> input)
    {
        _input = input;
        Matrix<double> output = input * Weights;
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
    public Matrix<double> Backward(Matrix<double> outputGradient)
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
public sealed class Network
{
    private readonly Linear[] _linear;
    private readonly INormalizationLayer?[] _norms;
    private readonly Matrix<double>?[] _reluMasks = new Matrix<double>?[2];

    /// <summary>Creates the network with whatever normalization <paramref name="normalization"/> makes for each slot.</summary>
    /// <param name="hidden">The widths of the two hidden layers.</param>
    /// <param name="normalization">Makes the layer for a slot of the given width; null for a network without normalization.</param>
    /// <param name="seed">The seed of the initial weights.</param>
    public Network((int First, int Second) hidden, Func<int, INormalizationLayer>? normalization, int seed)
    {
        var random = new Random(seed);
        _linear =
        [
            new Linear(DigitsData.Pixels, hidden.First, random),
            new Linear(hidden.First, hidden.Second, random),
            new Linear(hidden.Second, DigitsData.Classes, random),
        ];
        _norms = [normalization?.Invoke(hidden.First), normalization?.Invoke(hidden.Second)];
    }

    /// <summary>Gets the three Linear layers, in order, for code that combines their gradients across processes.</summary>
    public IReadOnlyList<Linear> LinearLayers => _linear;

    /// <summary>Switches the normalization layers between training and inference.</summary>
    /// <param name="training">True while training.</param>
    public void SetTraining(bool training)
    {
        foreach (INormalizationLayer? norm in _norms)
        {
            norm?.IsTraining = training;
        }
    }

    /// <summary>Gets the Stopwatch ticks spent in the normalization layers' Forward and Backward, over all networks of this process.</summary>
    public static long NormalizationTicks { get; private set; }

    /// <summary>Computes the logits of a batch.</summary>
    /// <param name="input">N × 64 pixels.</param>
    /// <returns>N × 10 logits.</returns>
    public Matrix<double> Forward(Matrix<double> input)
    {
        Matrix<double> h = input;
        for (int k = 0; k < 2; k++)
        {
            h = _linear[k].Forward(h);
            if (_norms[k] is { } norm)
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                h = norm.Forward(h);
                NormalizationTicks += System.Diagnostics.Stopwatch.GetTimestamp() - start;
            }

            _reluMasks[k] = h.Map(v => v > 0 ? 1.0 : 0.0);
            h = h.PointwiseMaximum(0);
        }

        return _linear[2].Forward(h);
    }

    /// <summary>Back-propagates dL/dlogits through every layer, filling all gradients.</summary>
    /// <param name="logitsGradient">N × 10.</param>
    public void Backward(Matrix<double> logitsGradient)
    {
        Matrix<double> g = _linear[2].Backward(logitsGradient);
        for (int k = 1; k >= 0; k--)
        {
            g = g.PointwiseMultiply(_reluMasks[k]!);
            if (_norms[k] is { } norm)
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                g = norm.Backward(g);
                NormalizationTicks += System.Diagnostics.Stopwatch.GetTimestamp() - start;
            }

            g = _linear[k].Backward(g);
        }
    }

    /// <summary>One plain SGD step on every parameter: p ← p − rate·dL/dp.</summary>
    /// <param name="rate">The learning rate.</param>
    public void Step(double rate)
    {
        foreach (Linear layer in _linear)
        {
            layer.Weights.Subtract(layer.WeightsGradient * rate, layer.Weights);
            layer.Bias.Subtract(layer.BiasGradient * rate, layer.Bias);
        }

        foreach (INormalizationLayer? norm in _norms)
        {
            foreach (LayerParameter p in norm?.Parameters ?? [])
            {
                p.Value.Subtract(p.Gradient * rate, p.Value);
            }
        }
    }

    /// <summary>The mean softmax cross-entropy of a batch and its gradient with respect to the logits.</summary>
    /// <param name="logits">N × 10.</param>
    /// <param name="labels">N labels.</param>
    /// <returns>The loss, the gradient (softmax − one-hot)/N, and how many rows were classified correctly.</returns>
    public static (double Loss, Matrix<double> Gradient, int Correct) SoftmaxCrossEntropy(Matrix<double> logits, IReadOnlyList<int> labels)
    {
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
}
