using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using BatchNorm;
using DigitsMlp;
using MathNet.Numerics.LinearAlgebra;

// The main demo: the same hand-written MLP trained on the UCI digits with and without batch norm,
// each at a normal and at a high learning rate. See README.md for what it shows.
Options options;
try
{
    options = Options.Parse(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(Options.Usage);
    return 2;
}

if (options.Help)
{
    Console.WriteLine(Options.Usage);
    return 0;
}

if (options.Check)
{
    return GradientReport.Run(options.Seed) ? 0 : 1;
}

DigitsData data;
try
{
    data = DigitsData.Load(options.DataPath);
}
catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"Cannot read the digits data: {e.Message}");
    return 1;
}

(int[] train, int[] test) = data.StratifiedSplit(testFraction: 0.2, options.Seed);
Console.WriteLine(Invariant($"UCI digits: {data.Count} images, {train.Length} for training and {test.Length} for testing (stratified, seed {options.Seed})."));
Console.WriteLine(Invariant($"Network: 64 → 128 → 64 → 10, ReLU, softmax cross-entropy, SGD with batches of 32; BatchNorm backward: {options.Strategy}."));

RunSettings[] runs =
[
    new("BatchNorm, rate 0.05", BatchNorm: true, LearningRate: 0.05),
    new("plain, rate 0.05", BatchNorm: false, LearningRate: 0.05),
    new("BatchNorm, rate 1.5", BatchNorm: true, LearningRate: 1.5),
    new("plain, rate 1.5", BatchNorm: false, LearningRate: 1.5),
];

var trainer = new Trainer(data, train, test);
var results = new List<IReadOnlyList<EpochResult>>();
bool live = !Console.IsOutputRedirected;
foreach (RunSettings run in runs)
{
    Console.WriteLine();
    Console.WriteLine(run.Name);
    Console.WriteLine("  epoch      loss   train acc   test acc");
    var epochs = new List<EpochResult>();
    results.Add(trainer.Train(run, options.Epochs, options.Strategy, options.Seed, (epoch, batch, batches) =>
    {
        if (live)
        {
            Console.Write(Invariant($"\r  epoch {epoch}/{options.Epochs}, batch {batch}/{batches}   "));
        }
    }, epoch =>
    {
        if (live)
        {
            Console.Write("\r" + new string(' ', 40) + "\r");
        }

        Console.WriteLine(Invariant($"  {epoch.Epoch,5} {epoch.Loss,9:F4} {epoch.TrainAccuracy,10:P1} {epoch.TestAccuracy,10:P1}"));
    }));
}

Console.WriteLine();
Console.WriteLine(SummaryTable(runs, results));

Directory.CreateDirectory(options.OutputDirectory);
string svgPath = Path.GetFullPath(Path.Combine(options.OutputDirectory, "learning-curves.svg"));
string csvPath = Path.GetFullPath(Path.Combine(options.OutputDirectory, "learning-curves.csv"));
IReadOnlyList<ChartSeries> series = runs.Select((r, k) => new ChartSeries(r.Name, results[k].Select(e => ((double)e.Epoch, e.TestAccuracy)).ToList())).ToList();
File.WriteAllText(svgPath, SvgChart.Render("Test accuracy on UCI digits", "epoch", "test accuracy", series, 0, 1));
File.WriteAllText(csvPath, Csv(runs, results));
Console.WriteLine($"Learning curves: {svgPath}");
Console.WriteLine($"Same data as CSV: {csvPath}");
return 0;

static string SummaryTable(IReadOnlyList<RunSettings> runs, IReadOnlyList<IReadOnlyList<EpochResult>> results)
{
    static string Epochs(int? e) => e?.ToString(CultureInfo.InvariantCulture) ?? "never";
    var table = new StringBuilder();
    table.AppendLine("| run | final test accuracy | epochs to 90% | epochs to 95% |");
    table.AppendLine("|---|---:|---:|---:|");
    for (int k = 0; k < runs.Count; k++)
    {
        EpochResult last = results[k][^1];
        string final = double.IsNaN(last.Loss) ? Invariant($"{last.TestAccuracy:P1} (diverged)") : Invariant($"{last.TestAccuracy:P1}");
        table.AppendLine($"| {runs[k].Name} | {final} | {Epochs(Trainer.EpochsTo(results[k], 0.90))} | {Epochs(Trainer.EpochsTo(results[k], 0.95))} |");
    }

    return table.ToString();
}

static string Csv(IReadOnlyList<RunSettings> runs, IReadOnlyList<IReadOnlyList<EpochResult>> results)
{
    var csv = new StringBuilder("run,epoch,loss,train_accuracy,test_accuracy\n");
    for (int k = 0; k < runs.Count; k++)
    {
        foreach (EpochResult e in results[k])
        {
            csv.Append(Invariant($"\"{runs[k].Name}\",{e.Epoch},{e.Loss:R},{e.TrainAccuracy:R},{e.TestAccuracy:R}\n"));
        }
    }

    return csv.ToString();
}

static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
