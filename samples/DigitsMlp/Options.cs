using System;
using System.Collections.Generic;
using System.CommandLine;
using System.Linq;
using BatchNorm;

namespace DigitsMlp;

/// <summary>The demo's settings, read from its command line by <see cref="Command"/>.</summary>
public sealed record Options
{
    /// <summary>Gets the number of epochs per run.</summary>
    public int Epochs { get; init; } = 30;

    /// <summary>Gets the seed of the split, the weights and the batch order.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Gets the backward strategy of the normalization layers.</summary>
    public BackwardStrategy Strategy { get; init; } = BackwardStrategy.ClosedForm;

    /// <summary>Gets the normalizations to compare; each is trained at both learning rates.</summary>
    public IReadOnlyList<Normalization> Norms { get; init; } = [Normalization.Parse("batch"), Normalization.Parse("none")];

    /// <summary>Gets the folder for the charts and the CSV.</summary>
    public string OutputDirectory { get; init; } = "out";

    /// <summary>Gets the data file.</summary>
    public string DataPath { get; init; } = DigitsData.DefaultPath;

    /// <summary>Gets whether to run the gradient check only.</summary>
    public bool Check { get; init; }

    /// <summary>Gets the precisions to train in, each run of each: false for double, true for float.</summary>
    public IReadOnlyList<bool> SinglePrecision { get; init; } = [false];

    /// <summary>Gets whether to print the staged pass's intermediate gradients for a small batch only.</summary>
    public bool Trace { get; init; }

    /// <summary>Parses a command line, for tests and tools: the settings, or the first error.</summary>
    /// <param name="args">The arguments.</param>
    /// <returns>The settings.</returns>
    /// <exception cref="ArgumentException">An option is unknown, lacks its value or has a bad one; the message says which.</exception>
    public static Options Parse(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        Options? options = null;
        RootCommand command = Command(o =>
        {
            options = o;
            return 0;
        });
        ParseResult result = command.Parse(args);
        if (result.Errors.Count > 0)
        {
            throw new ArgumentException(result.Errors[0].Message);
        }

        result.Invoke();
        return options ?? throw new ArgumentException("no settings were read");
    }

    /// <summary>The command line of the demo, with <paramref name="run"/> as what it does with the settings it reads.</summary>
    /// <param name="run">Runs the demo and returns its exit code.</param>
    /// <returns>The root command.</returns>
    public static RootCommand Command(Func<Options, int> run)
    {
        var epochs = new Option<int>("--epochs") { Description = "Epochs per run.", DefaultValueFactory = _ => 30 };
        epochs.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() < 1)
            {
                r.AddError("--epochs must be at least 1.");
            }
        });
        var seed = new Option<int>("--seed") { Description = "Seed of the split, the weights and the batch order.", DefaultValueFactory = _ => 1 };
        var strategy = new Option<string>("--strategy") { Description = "Backward strategy of the normalization layers.", DefaultValueFactory = _ => "closed" };
        strategy.AcceptOnlyFromAmong("closed", "staged");
        var norm = new Option<string[]>("--norm")
        {
            Description = "Normalizations to compare, one or several (--norm batch layer none), each at learning rates 0.05 and 1.5.",
            AllowMultipleArgumentsPerToken = true,
            DefaultValueFactory = _ => ["batch", "none"],
        };
        norm.AcceptOnlyFromAmong([.. Normalization.All.Select(n => n.Key)]);
        var precision = new Option<string[]>("--precision")
        {
            Description = "Precisions to train in, one or both (--precision double single): the network's weights and activations, and the normalization layers' data.",
            AllowMultipleArgumentsPerToken = true,
            DefaultValueFactory = _ => ["double"],
        };
        precision.AcceptOnlyFromAmong("double", "single");
        var output = new Option<string>("--out") { Description = "Folder for learning-curves.png, .svg and .csv.", DefaultValueFactory = _ => "out" };
        var data = new Option<string>("--data") { Description = "The digits file, .csv or .csv.gz [default: the copy next to the program]." };
        var check = new Option<bool>("--check") { Description = "Check each --norm's gradients against central differences, with both strategies, and exit." };
        var trace = new Option<bool>("--trace") { Description = "Print the staged backward pass node by node for a 4×3 batch, as the CS231n notebook does, and exit." };
        var command = new RootCommand(
            "Trains a hand-written MLP on the UCI digits with each chosen normalization and without, at a normal and a high learning rate, "
            + "and writes learning curves (PNG, SVG, CSV).")
        {
            epochs, seed, strategy, norm, precision, output, data, check, trace,
        };
        command.SetAction(parsed => run(new Options
        {
            Epochs = parsed.GetValue(epochs),
            Seed = parsed.GetValue(seed),
            Strategy = parsed.GetValue(strategy) == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm,
            Norms = [.. parsed.GetValue(norm)!.Distinct().Select(Normalization.Parse)],
            OutputDirectory = parsed.GetValue(output)!,
            DataPath = parsed.GetValue(data) ?? DigitsData.DefaultPath,
            Check = parsed.GetValue(check),
            SinglePrecision = [.. parsed.GetValue(precision)!.Distinct().Select(p => p == "single")],
            Trace = parsed.GetValue(trace),
        }));
        return command;
    }
}
