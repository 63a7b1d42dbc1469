using System;
using System.Collections.Generic;
using System.CommandLine;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using DigitsMlp;

// The main demo: the same hand-written MLP trained on the UCI digits with each chosen normalization and without,
// each at a normal and at a high learning rate. See README.md for what it shows.
RootCommand command = Options.Command(Run);
ParseResult parsed = command.Parse(args);
if (parsed.Errors.Count > 0)
{
    foreach (var error in parsed.Errors)
    {
        Console.Error.WriteLine($"error: {error.Message}");
    }

    Console.Error.WriteLine("Run with --help to see the options.");
    return 2;
}

return parsed.Invoke();

static int Run(Options options)
{
    if (options.Check)
    {
        return GradientReport.Run(options.Seed, options.Norms) ? 0 : 1;
    }

    if (options.Trace)
    {
        return TraceReport.Print(options.Seed) < 1e-12 ? 0 : 1;
    }

    // Everything that can fail for want of a file or a folder fails here, before any training.
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

    string outputDirectory = Path.GetFullPath(options.OutputDirectory);
    if (WritableFolder(outputDirectory) is string problem)
    {
        Console.Error.WriteLine($"Cannot write to the output folder '{outputDirectory}': {problem}");
        return 1;
    }

    (int[] train, int[] test) = data.StratifiedSplit(testFraction: 0.2, options.Seed);
    Console.WriteLine(Invariant($"UCI digits: {data.Count} images, {train.Length} for training and {test.Length} for testing (stratified, seed {options.Seed})."));
    Console.WriteLine(Invariant($"Network: 64 → 128 → 64 → 10, ReLU, softmax cross-entropy, SGD with batches of 32; backward strategy: {options.Strategy}."));

    double[] rates = [0.05, 1.5];
    RunSettings[] runs = [.. rates.SelectMany(rate => options.Norms.SelectMany(norm => options.SinglePrecision.Select(single => new RunSettings(norm, rate, single))))];
    var trainer = new Trainer(data, train, test);
    var results = new List<RunResult>();
    bool live = !Console.IsOutputRedirected;
    foreach (RunSettings run in runs)
    {
        Console.WriteLine();
        Console.WriteLine(run.Name);
        Console.WriteLine("  epoch      loss   train acc   test acc");
        long runStart = System.Diagnostics.Stopwatch.GetTimestamp(), normalizationBefore = Network.NormalizationTicks;
        results.Add(new RunResult(run, trainer.Train(run, options.Epochs, options.Strategy, options.Seed, (epoch, batch, batches) =>
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
        })));
        double runSeconds = System.Diagnostics.Stopwatch.GetElapsedTime(runStart).TotalSeconds;
        double normalizationSeconds = (Network.NormalizationTicks - normalizationBefore) / (double)System.Diagnostics.Stopwatch.Frequency;
        Console.WriteLine(Invariant($"  training took {runSeconds:F2} s, of which {normalizationSeconds * 1000:F0} ms in the normalization layers' Forward and Backward"));
    }

    Console.WriteLine();
    Console.WriteLine(SummaryTable(results));

    string png = Path.Combine(outputDirectory, "learning-curves.png"), svg = Path.ChangeExtension(png, ".svg"), csv = Path.ChangeExtension(png, ".csv");
    try
    {
        var chart = LearningCurveChart.Build(results);
        LearningCurveChart.SavePng(chart, png);
        LearningCurveChart.SaveSvg(chart, svg);
        File.WriteAllText(csv, Csv(results));
    }
    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
    {
        Console.Error.WriteLine($"Cannot write the learning curves to '{outputDirectory}': {e.Message}");
        return 1;
    }

    Console.WriteLine($"Learning curves: {png} (and {Path.GetFileName(svg)} beside it)");
    Console.WriteLine($"Same data as CSV: {csv}");
    return 0;
}

// Creates the folder and proves it writable by writing and deleting a file in it; says why not, or null.
static string? WritableFolder(string folder)
{
    try
    {
        if (File.Exists(folder))
        {
            return "it is a file, not a folder.";
        }

        Directory.CreateDirectory(folder);
        string probe = Path.Combine(folder, $".write-test-{Environment.ProcessId}");
        File.WriteAllText(probe, string.Empty);
        File.Delete(probe);
        return null;
    }
    catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
    {
        return e.Message;
    }
}

static string SummaryTable(IReadOnlyList<RunResult> results)
{
    static string Epochs(int? e) => e?.ToString(CultureInfo.InvariantCulture) ?? "never";
    var table = new StringBuilder();
    table.AppendLine("| run | final test accuracy | epochs to 90% | epochs to 95% |");
    table.AppendLine("|---|---:|---:|---:|");
    foreach (RunResult result in results)
    {
        EpochResult last = result.Epochs[^1];
        string final = double.IsNaN(last.Loss) ? Invariant($"{last.TestAccuracy:P1} (diverged)") : Invariant($"{last.TestAccuracy:P1}");
        table.AppendLine($"| {result.Settings.Name} | {final} | {Epochs(Trainer.EpochsTo(result.Epochs, 0.90))} | {Epochs(Trainer.EpochsTo(result.Epochs, 0.95))} |");
    }

    return table.ToString();
}

static string Csv(IReadOnlyList<RunResult> results)
{
    var csv = new StringBuilder("run,epoch,loss,train_accuracy,test_accuracy\n");
    foreach (RunResult result in results)
    {
        foreach (EpochResult e in result.Epochs)
        {
            csv.Append(Invariant($"\"{result.Settings.Name}\",{e.Epoch},{e.Loss:R},{e.TrainAccuracy:R},{e.TestAccuracy:R}\n"));
        }
    }

    return csv.ToString();
}

static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
