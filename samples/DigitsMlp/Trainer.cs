using System;
using System.Collections.Generic;
using System.Linq;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>One training configuration.</summary>
/// <param name="Normalization">What the network's two normalization slots hold.</param>
/// <param name="LearningRate">The SGD learning rate.</param>
/// <param name="SinglePrecision">Train the network in float (<c>Matrix&lt;float&gt;</c>) rather than double.</param>
public sealed record RunSettings(Normalization Normalization, double LearningRate, bool SinglePrecision = false)
{
    /// <summary>Gets a label for tables and the legend, such as "BatchNorm, rate 0.05".</summary>
    public string Name => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Normalization.Title}, rate {LearningRate}{(SinglePrecision ? ", float" : "")}");
}

/// <summary>What one epoch measured.</summary>
/// <param name="Epoch">1-based.</param>
/// <param name="Loss">Mean training loss over the epoch's batches (NaN once the run has diverged).</param>
/// <param name="TrainAccuracy">Accuracy on the training batches during the epoch.</param>
/// <param name="TestAccuracy">Accuracy on the test part after the epoch, in inference mode.</param>
public sealed record EpochResult(int Epoch, double Loss, double TrainAccuracy, double TestAccuracy);

/// <summary>Trains one network on the training part and evaluates it on the test part after each epoch.</summary>
public sealed class Trainer(DigitsData data, int[] train, int[] test, int batchSize = 32)
{
    private readonly Matrix<double> _testX = data.Features(test);
    private readonly int[] _testY = data.LabelsOf(test);

    /// <summary>Trains a fresh network for <paramref name="epochs"/> epochs.</summary>
    /// <param name="settings">The configuration.</param>
    /// <param name="epochs">Number of passes over the training part.</param>
    /// <param name="strategy">The backward strategy of the normalization layers.</param>
    /// <param name="seed">The seed for the weights and the batch order.</param>
    /// <param name="progress">Called after every batch with (epoch, batch, batches).</param>
    /// <param name="epochDone">Called after every epoch with its result.</param>
    /// <param name="parallel">For data-parallel training: this process's share of each batch and how gradients are
    /// combined across processes; null to train on whole batches in this process alone.</param>
    /// <returns>One result per epoch.</returns>
    public IReadOnlyList<EpochResult> Train(RunSettings settings, int epochs, BackwardStrategy strategy, int seed, Action<int, int, int>? progress = null, Action<EpochResult>? epochDone = null, IDataParallel? parallel = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        Func<int, INormalizationLayer>? normalization = settings.Normalization.Create is { } create ? features => create(features, strategy) : null;
        if (!settings.SinglePrecision)
        {
            var network = new Network((128, 64), normalization, seed);
            return Train(network, _testX, settings, epochs, seed, progress, epochDone, parallel, () => parallel?.CombineGradients(network));
        }

        if (parallel is not null)
        {
            throw new NotSupportedException("Data-parallel training combines the gradients of a double-precision network.");
        }

        return Train(new Network<float>((128, 64), normalization, seed), _testX.Map(v => (float)v), settings, epochs, seed, progress, epochDone, null, () => { });
    }

    private List<EpochResult> Train<T>(
        Network<T> network, Matrix<T> testX, RunSettings settings, int epochs, int seed, Action<int, int, int>? progress, Action<EpochResult>? epochDone, IDataParallel? parallel, Action combineGradients)
        where T : struct, System.Numerics.IFloatingPointIeee754<T>, IFormattable
    {
        var random = new Random(seed);
        int[] order = (int[])train.Clone();
        int batches = order.Length / batchSize;   // the ragged last batch is dropped, so every batch has 32 rows
        var results = new List<EpochResult>();
        bool diverged = false;
        for (int epoch = 1; epoch <= epochs; epoch++)
        {
            random.Shuffle(order);
            network.SetTraining(true);
            double lossSum = 0;
            int correct = 0;
            for (int b = 0; b < batches && !diverged; b++)
            {
                ArraySegment<int> indices = new(order, b * batchSize, batchSize);
                (int start, int count) = parallel?.Shard(batchSize) ?? (0, batchSize);
                (double loss, Matrix<T> gradient, int right) = TrainingLoss(network, indices.Slice(start, count));
                if (parallel is not null)
                {
                    // This process's rows' share of the whole batch's mean loss; the shares of all processes add up to it.
                    double share = (double)count / batchSize;
                    gradient = gradient.Multiply(T.CreateChecked(share));
                    Span<double> totals = [loss * share, right];
                    parallel.Sum(totals);
                    (loss, right) = (totals[0], (int)totals[1]);
                }

                lossSum += loss;
                correct += right;
                diverged = !double.IsFinite(loss);
                if (!diverged)
                {
                    network.Backward(gradient);
                    combineGradients();
                    network.Step(settings.LearningRate);
                }

                progress?.Invoke(epoch, b + 1, batches);
            }

            if (diverged)
            {
                lossSum = double.NaN;
            }

            network.SetTraining(false);
            (_, _, int testCorrect) = Network.SoftmaxCrossEntropy(network.Forward(testX), _testY);
            var result = new EpochResult(epoch, lossSum / batches, (double)correct / (batches * batchSize), (double)testCorrect / _testY.Length);
            results.Add(result);
            epochDone?.Invoke(result);
        }

        return results;
    }

    /// <summary>The loss of one training batch; NaN when the weights have blown up (a normalization layer then rejects its input).</summary>
    private (double Loss, Matrix<T> Gradient, int Correct) TrainingLoss<T>(Network<T> network, IReadOnlyList<int> indices)
        where T : struct, System.Numerics.IFloatingPointIeee754<T>, IFormattable
    {
        try
        {
            Matrix<double> features = data.Features(indices);
            Matrix<T> x = features is Matrix<T> same ? same : features.Map(T.CreateChecked);
            return Network.SoftmaxCrossEntropy(network.Forward(x), data.LabelsOf(indices));
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            // A normalization layer refuses non-finite activations or parameters by name; here that means the run diverged.
            return (double.NaN, Matrix<T>.Build.Dense(1, 1), 0);
        }
    }

    /// <summary>The first epoch whose test accuracy reaches <paramref name="threshold"/>, or null.</summary>
    /// <param name="results">A run's epochs.</param>
    /// <param name="threshold">An accuracy in [0, 1].</param>
    /// <returns>The epoch number, or null if never reached.</returns>
    public static int? EpochsTo(IReadOnlyList<EpochResult> results, double threshold)
        => results.FirstOrDefault(r => r.TestAccuracy >= threshold)?.Epoch;
}
