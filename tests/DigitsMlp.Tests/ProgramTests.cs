using System;
using System.IO;

namespace DigitsMlp.Tests;

/// <summary>The program's exit codes and messages; these redirect the console, so they run alone.</summary>
[Collection(ConsoleTests.Name)]
public class ProgramTests
{
    [Fact]
    public void A_missing_data_file_gives_a_clear_message_and_exit_code_1()
    {
        (int code, _, string error) = Run("--data", "/nonexistent/digits.csv.gz", "--epochs", "1");
        Assert.Equal(1, code);
        Assert.Contains("Cannot read the digits data", error);
        Assert.Contains("/nonexistent/digits.csv.gz", error);
    }

    [Fact]
    public void A_malformed_data_file_gives_its_line_and_exit_code_1()
    {
        string path = DataTests.Gzip(DataTests.GoodLine(3) + "\n1,2\n");
        (int code, _, string error) = Run("--data", path);
        Assert.Equal(1, code);
        Assert.Contains("line 2", error);
    }

    [Theory]
    [InlineData("--strategy", "fast")]
    [InlineData("--epochs", "0")]
    [InlineData("--epochs")]
    [InlineData("--bogus")]
    public void Bad_options_give_usage_and_exit_code_2(params string[] args)
    {
        (int code, _, string error) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains("Usage:", error);
    }

    [Fact]
    public void Check_prints_small_relative_errors_for_both_strategies()
    {
        (int code, string output, _) = Run("--check");
        Assert.Equal(0, code);
        Assert.Contains("staged", output);
        Assert.Contains("closed", output);
        Assert.Contains("All below", output);
    }

    [Fact]
    public void A_one_epoch_run_writes_the_svg_and_csv_where_it_says()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"digits-out-{Guid.NewGuid():N}");
        (int code, string output, _) = Run("--epochs", "1", "--out", dir, "--strategy", "staged");
        Assert.Equal(0, code);
        string svg = Path.Combine(dir, "learning-curves.svg"), csv = Path.Combine(dir, "learning-curves.csv");
        Assert.Contains(svg, output);
        Assert.Contains(csv, output);
        Assert.StartsWith("run,epoch,loss,train_accuracy,test_accuracy", File.ReadAllText(csv));
        Assert.Equal(5, File.ReadAllLines(csv).Length);
        Assert.Contains("| run | final test accuracy | epochs to 90% | epochs to 95% |", output);
    }

    private static (int Code, string Output, string Error) Run(params string[] args)
    {
        TextWriter oldOut = Console.Out, oldError = Console.Error;
        using var output = new StringWriter();
        using var error = new StringWriter();
        Console.SetOut(output);
        Console.SetError(error);
        try
        {
            object? result = typeof(Options).Assembly.EntryPoint!.Invoke(null, [args]);
            return ((int)result!, output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldError);
        }
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConsoleTests
{
    public const string Name = "Console redirection";
}
