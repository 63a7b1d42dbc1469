using System;
using System.Globalization;
using System.IO;
using System.Linq;
using BatchNorm;
using DigitsMlp;
using DigitsMpi;

namespace BatchNorm.Mpi.Tests;

/// <summary>The data-parallel demo under <c>mpirun -n 2</c> trains as one process does on whole batches.</summary>
[Collection("mpirun")]
public class DemoTests
{
    [SkippableFact]
    public void Two_ranks_train_the_digits_MLP_as_one_process_does()
    {
        MpiJob.RequireMpirun();
        const int Epochs = 2, Seed = 2;
        string csv = Path.Combine(Path.GetTempPath(), $"digits-mpi-{Guid.NewGuid():N}.csv");
        try
        {
            string output = MpiJob.Run(2, typeof(MpiDataParallel).Assembly.Location, ["--epochs", $"{Epochs}", "--seed", $"{Seed}", "--rate", "0.05", "--csv", csv], TimeSpan.FromSeconds(180));
            Assert.Contains("every rank ends with the same loss and accuracy: yes", output, StringComparison.Ordinal);
            double[][] ranks = [.. File.ReadAllLines(csv).Skip(1).Select(line => line.Split(',')[^3..].Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray())];

            // One process, whole batches of 32, the same seed: the same network, split and batch order.
            DigitsData data = DigitsData.Load(DigitsData.DefaultPath);
            (int[] train, int[] test) = data.StratifiedSplit(0.2, Seed);
            var one = new Trainer(data, train, test).Train(new RunSettings(Normalization.Parse("batch"), 0.05), Epochs, BackwardStrategy.ClosedForm, Seed);
            Assert.Equal(Epochs, ranks.Length);
            for (int e = 0; e < Epochs; e++)
            {
                // Only the order of additions differs (Chan's merge, the sum over ranks), so the losses agree to rounding.
                Assert.True(Math.Abs(one[e].Loss - ranks[e][0]) <= 1e-9 * one[e].Loss, $"epoch {e + 1}: loss {ranks[e][0]:R} on two ranks, {one[e].Loss:R} in one process");
                Assert.Equal(one[e].TrainAccuracy, ranks[e][1]);
                Assert.Equal(one[e].TestAccuracy, ranks[e][2]);
            }
        }
        finally
        {
            File.Delete(csv);
        }
    }
}
