using System;
using System.Collections.Generic;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using BatchNorm;
using BatchNorm.Mpi;
using DigitsMlp;
using DigitsMpi;

// The digits MLP of samples/DigitsMlp trained data-parallel: run it under mpirun, one process per rank,
//   mpirun -n 2 dotnet samples/DigitsMpi/bin/Release/net10.0/DigitsMpi.dll
// Every rank builds the same network from the same seed and trains it on its own rows of every batch of 32; batch norm
// is synchronized across the ranks, and the Linear layers' gradients are added up with MPI_Allreduce, so every rank
// takes the step one process would take on the whole batch. Rank 0 prints.
var epochs = new Option<int>("--epochs") { Description = "Epochs per run.", DefaultValueFactory = _ => 30 };
var seed = new Option<int>("--seed") { Description = "Seed of the split, the weights and the batch order.", DefaultValueFactory = _ => 1 };
var rates = new Option<double[]>("--rate") { Description = "Learning rates, one run each.", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [0.05, 1.5] };
var strategy = new Option<string>("--strategy") { Description = "Backward strategy of the batch norm layers.", DefaultValueFactory = _ => "closed" };
strategy.AcceptOnlyFromAmong("closed", "staged");
var data = new Option<string>("--data") { Description = "The digits file, .csv or .csv.gz [default: the copy next to DigitsMlp]." };
var csv = new Option<string?>("--csv") { Description = "Also write every epoch (rank 0) to this CSV file." };
var command = new RootCommand("Trains the digits MLP with synchronized batch norm across MPI ranks; run it under mpirun.")
{
    epochs, seed, rates, strategy, data, csv,
};
command.SetAction(parsed => Run(
    parsed.GetValue(epochs),
    parsed.GetValue(seed),
    parsed.GetValue(rates)!,
    parsed.GetValue(strategy) == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm,
    parsed.GetValue(data) ?? DigitsData.DefaultPath,
    parsed.GetValue(csv)));
ParseResult parsedArgs = command.Parse(args);
if (parsedArgs.Errors.Count > 0)
{
    foreach (var error in parsedArgs.Errors)
    {
        Console.Error.WriteLine($"error: {error.Message}");
    }

    return 2;
}

return parsedArgs.Invoke();

static int Run(int epochs, int seed, double[] rates, BackwardStrategy strategy, string dataPath, string? csvPath)
{
    const int BatchSize = 32;
    DigitsData data;
    try
    {
        data = DigitsData.Load(dataPath);
    }
    catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
    {
        Console.Error.WriteLine($"Cannot read the digits data: {e.Message}");
        return 1;
    }

    // One thread per rank: with a rank per core, MathNet's own worker threads would only compete with the other ranks.
    MathNet.Numerics.Control.UseSingleThread();
    using MpiSession session = MpiSession.Start();
    var exchange = new MpiStatisticsExchange();
    bool lead = exchange.Rank == 0;
    if (exchange.WorkerCount > BatchSize)
    {
        Console.Error.WriteLine(Invariant($"{exchange.WorkerCount} ranks cannot share batches of {BatchSize} rows: use at most {BatchSize}."));
        return 1;
    }

    var parallel = new MpiDataParallel(exchange);
    (int start, int count) = parallel.Shard(BatchSize);
    (int[] train, int[] test) = data.StratifiedSplit(testFraction: 0.2, seed);
    var counted = new CountingExchange(exchange);
    var synchronized = new Normalization("batch", "BatchNorm", (features, s) => new BatchNormLayer(features, backward: s) { StatisticsExchange = counted });
    if (lead)
    {
        Console.WriteLine(Invariant($"{MpiSession.LibraryVersion.Split(',')[0]}, {exchange.WorkerCount} ranks; rank 0 trains on rows {start}–{start + count - 1} of every batch of {BatchSize}."));
        Console.WriteLine(Invariant($"UCI digits: {train.Length} images for training, {test.Length} for testing (stratified, seed {seed}); 64 → 128 → 64 → 10, synchronized batch norm, strategy {strategy.Name}."));
    }

    var trainer = new Trainer(data, train, test, BatchSize);
    var rows = new List<string>();
    foreach (double rate in rates)
    {
        var settings = new RunSettings(synchronized, rate);
        if (lead)
        {
            Console.WriteLine();
            Console.WriteLine(settings.Name);
            Console.WriteLine("  epoch      loss   train acc   test acc");
        }

        (long gatherCalls, long gatherSent, long reduceCalls, long reduceSent) = (counted.Calls, counted.Sent, parallel.Calls, parallel.Sent);
        var clock = Stopwatch.StartNew();
        IReadOnlyList<EpochResult> results = trainer.Train(settings, epochs, strategy, seed, epochDone: epoch =>
        {
            if (lead)
            {
                Console.WriteLine(Invariant($"  {epoch.Epoch,5} {epoch.Loss,9:F4} {epoch.TrainAccuracy,10:P1} {epoch.TestAccuracy,10:P1}"));
                rows.Add(Invariant($"\"{settings.Name}\",{epoch.Epoch},{epoch.Loss:R},{epoch.TrainAccuracy:R},{epoch.TestAccuracy:R}"));
            }
        }, parallel: parallel);
        double seconds = clock.Elapsed.TotalSeconds;

        // Every rank must hold the same model: gather each rank's final test accuracy and loss, and compare with rank 0's.
        EpochResult last = results[^1];
        double[] gathered = new double[2 * exchange.WorkerCount];
        exchange.AllGather([last.TestAccuracy, last.Loss], gathered);
        bool agree = Enumerable.Range(0, exchange.WorkerCount).All(r => gathered[2 * r].Equals(gathered[0]) && gathered[(2 * r) + 1].Equals(gathered[1]));
        if (lead)
        {
            string epochsTo(double threshold) => Trainer.EpochsTo(results, threshold)?.ToString(CultureInfo.InvariantCulture) ?? "never";
            long steps = epochs * (train.Length / BatchSize);
            double PerStep(long now, long before, int bytes) => bytes * (now - before) / (double)steps;
            Console.WriteLine(Invariant($"  per step, each rank: batch norm {PerStep(counted.Calls, gatherCalls, 1):F0} MPI_Allgather calls sending {PerStep(counted.Sent, gatherSent, 8):F0} bytes, the rest {PerStep(parallel.Calls, reduceCalls, 1):F0} MPI_Allreduce calls sending {PerStep(parallel.Sent, reduceSent, 8):F0} bytes ({steps} steps)"));
            Console.WriteLine(Invariant($"  final test accuracy {last.TestAccuracy:P1}, epochs to 90% {epochsTo(0.90)}, to 95% {epochsTo(0.95)}; {epochs} epochs in {seconds:F1} s; every rank ends with the same loss and accuracy: {(agree ? "yes" : "NO")}"));
        }

        if (!agree)
        {
            return 1;
        }
    }

    if (lead && csvPath is not null)
    {
        File.WriteAllText(csvPath, "run,epoch,loss,train_accuracy,test_accuracy\n" + string.Join('\n', rows) + "\n");
    }

    return 0;
}

static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
