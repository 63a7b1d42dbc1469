using System.Linq;
using BatchNorm;

namespace DigitsMlp.Tests;

public class TrainingTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_short_run_ends_with_a_lower_loss_than_it_started_with(bool batchNorm)
    {
        DigitsData data = DigitsData.Load(DigitsData.DefaultPath);
        (int[] train, int[] test) = data.StratifiedSplit(0.2, seed: 3);
        var trainer = new Trainer(data, train, test);
        var results = trainer.Train(new RunSettings(Normalization.Parse(batchNorm ? "batch" : "none"), 0.05), epochs: 3, BackwardStrategy.ClosedForm, seed: 3);
        Assert.Equal(3, results.Count);
        Assert.True(results[^1].Loss < results[0].Loss, $"loss went from {results[0].Loss} to {results[^1].Loss}");
        Assert.True(results[^1].TestAccuracy > 0.5, $"test accuracy {results[^1].TestAccuracy}");
    }

    [Fact]
    public void Both_strategies_train_the_same_network_to_nearly_the_same_place()
    {
        DigitsData data = DigitsData.Load(DigitsData.DefaultPath);
        (int[] train, int[] test) = data.StratifiedSplit(0.2, seed: 4);
        var trainer = new Trainer(data, train, test);
        var settings = new RunSettings(Normalization.Parse("batch"), 0.05);
        var closed = trainer.Train(settings, 2, BackwardStrategy.ClosedForm, seed: 4);
        var staged = trainer.Train(settings, 2, BackwardStrategy.Staged, seed: 4);
        Assert.Equal(closed[^1].Loss, staged[^1].Loss, 1e-9);
    }

    [Theory]
    [InlineData("batch")]
    [InlineData("layer")]
    [InlineData("none")]
    public void Training_in_single_precision_follows_double_closely(string norm)
    {
        // The same weights (drawn in double, rounded), batches and settings: float rounds every activation and weight
        // update, so the runs drift apart slowly; after two epochs their losses agree to a few parts in a thousand.
        DigitsData data = DigitsData.Load(DigitsData.DefaultPath);
        (int[] train, int[] test) = data.StratifiedSplit(0.2, seed: 6);
        var trainer = new Trainer(data, train, test);
        var wide = trainer.Train(new RunSettings(Normalization.Parse(norm), 0.05), 2, BackwardStrategy.ClosedForm, seed: 6);
        var single = trainer.Train(new RunSettings(Normalization.Parse(norm), 0.05, SinglePrecision: true), 2, BackwardStrategy.ClosedForm, seed: 6);
        Assert.NotEqual(wide[^1].Loss, single[^1].Loss);
        Assert.Equal(wide[^1].Loss, single[^1].Loss, 5e-3 * wide[^1].Loss);
        Assert.True(single[^1].TestAccuracy > 0.8, $"test accuracy {single[^1].TestAccuracy}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void The_network_takes_any_normalization_in_its_slots(bool singlePrecision)
    {
        DigitsData data = DigitsData.Load(DigitsData.DefaultPath);
        int[] rows = Enumerable.Range(0, 64).ToArray();
        var x = data.Features(rows);
        int[] labels = data.LabelsOf(rows);
        foreach (Normalization norm in Normalization.All.Where(n => !n.IsNone))
        {
            INormalizationLayer Slot(int features) => norm.Create!(features, BackwardStrategy.ClosedForm);
            (double first, double last) = singlePrecision
                ? Train(new Network<float>((64, 32), Slot, seed: 5), x.Map(v => (float)v), labels)
                : Train(new Network((64, 32), Slot, seed: 5), x, labels);
            Assert.True(last < first / 4, $"{norm}, single {singlePrecision}: loss went from {first} to {last}");
        }
    }

    /// <summary>60 SGD steps on one batch: the loss before and after.</summary>
    private static (double First, double Last) Train<T>(Network<T> network, MathNet.Numerics.LinearAlgebra.Matrix<T> x, int[] labels)
        where T : struct, System.Numerics.IFloatingPointIeee754<T>, System.IFormattable
    {
        double first = Network.SoftmaxCrossEntropy(network.Forward(x), labels).Loss, last = first;
        for (int step = 0; step < 60; step++)
        {
            (last, var gradient, _) = Network.SoftmaxCrossEntropy(network.Forward(x), labels);
            network.Backward(gradient);
            network.Step(0.1);
        }

        return (first, last);
    }

    [Fact]
    public void Softmax_cross_entropy_matches_its_definition()
    {
        var logits = MathNet.Numerics.LinearAlgebra.Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2, 3, 0, 0, 0, 0, 0, 0, 0 } });
        (double loss, var gradient, int correct) = Network.SoftmaxCrossEntropy(logits, [2]);
        double sum = System.Math.Exp(1) + System.Math.Exp(2) + System.Math.Exp(3) + 7;
        Assert.Equal(-System.Math.Log(System.Math.Exp(3) / sum), loss, 12);
        Assert.Equal(1, correct);
        Assert.Equal((System.Math.Exp(3) / sum) - 1, gradient[0, 2], 12);
        Assert.Equal(0, gradient.Row(0).Sum(), 12);
    }

    [Fact]
    public void Epochs_to_threshold_finds_the_first_epoch_or_none()
    {
        EpochResult[] results = [new(1, 1, 0.5, 0.8), new(2, 1, 0.5, 0.92), new(3, 1, 0.5, 0.91)];
        Assert.Equal(2, Trainer.EpochsTo(results, 0.9));
        Assert.Null(Trainer.EpochsTo(results, 0.95));
        Assert.Equal(1, Trainer.EpochsTo(results, 0.8));
    }
}
