using System;
using System.Globalization;
using BatchNorm;

namespace DigitsMlp;

/// <summary>The command line of the sample.</summary>
public sealed record Options
{
    /// <summary>The usage text.</summary>
    public const string Usage = """
        Usage: DigitsMlp [options]
          --epochs N               epochs per run (default 30)
          --seed N                 seed for the split, the weights and the batch order (default 1)
          --strategy staged|closed BatchNorm backward strategy used in training (default closed)
          --out DIR                where to write learning-curves.svg and learning-curves.csv (default ./out)
          --data FILE              the digits .csv.gz file (default: the copy next to the program)
          --check                  run GradientCheck on BatchNormLayer with both strategies and exit
          --help                   show this text
        """;

    /// <summary>Gets the number of epochs per run.</summary>
    public int Epochs { get; init; } = 30;

    /// <summary>Gets the seed.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Gets the backward strategy.</summary>
    public BackwardStrategy Strategy { get; init; } = BackwardStrategy.ClosedForm;

    /// <summary>Gets the output directory.</summary>
    public string OutputDirectory { get; init; } = "out";

    /// <summary>Gets the data file.</summary>
    public string DataPath { get; init; } = DigitsData.DefaultPath;

    /// <summary>Gets a value indicating whether to run the gradient check only.</summary>
    public bool Check { get; init; }

    /// <summary>Gets a value indicating whether to print the usage only.</summary>
    public bool Help { get; init; }

    /// <summary>Parses the arguments.</summary>
    /// <param name="args">The command line.</param>
    /// <returns>The options.</returns>
    /// <exception cref="ArgumentException">An option is unknown, lacks its value or has a bad one.</exception>
    public static Options Parse(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var options = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            options = args[i] switch
            {
                "--epochs" => options with { Epochs = PositiveInt("--epochs", Value()) },
                "--seed" => options with { Seed = Int("--seed", Value()) },
                "--strategy" => options with { Strategy = ParseStrategy(Value()) },
                "--out" => options with { OutputDirectory = Value() },
                "--data" => options with { DataPath = Value() },
                "--check" => options with { Check = true },
                "--help" or "-h" => options with { Help = true },
                _ => throw new ArgumentException($"Unknown option '{args[i]}'."),
            };
        }

        return options;
    }

    private static BackwardStrategy ParseStrategy(string name) => name switch
    {
        "staged" => BackwardStrategy.Staged,
        "closed" => BackwardStrategy.ClosedForm,
        _ => throw new ArgumentException($"--strategy must be 'staged' or 'closed', not '{name}'."),
    };

    private static int Int(string option, string text)
        => int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value)
            ? value
            : throw new ArgumentException($"{option} needs an integer, not '{text}'.");

    private static int PositiveInt(string option, string text)
        => Int(option, text) is > 0 and var value ? value : throw new ArgumentException($"{option} must be at least 1, not '{text}'.");
}
