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
    [InlineData("--norm", "instance")]
    [InlineData("--precision", "half")]
    [InlineData("--bogus")]
    public void Bad_options_give_a_one_line_error_and_exit_code_2(params string[] args)
    {
        (int code, string output, string error) = Run(args);
        Assert.Equal(2, code);
        Assert.StartsWith("error: ", error);
        Assert.Contains("--help", error);
        Assert.DoesNotContain("   at ", error);
        Assert.Empty(output);
    }

    [Fact]
    public void Both_precisions_train_one_after_the_other_and_the_float_runs_are_named()
    {
        string folder = Path.Combine(Path.GetTempPath(), "digits-precision-" + Guid.NewGuid().ToString("N"));
        (int code, string output, _) = Run("--epochs", "1", "--norm", "batch", "--precision", "double", "single", "--out", folder);
        Assert.Equal(0, code);
        Assert.Contains("BatchNorm, rate 0.05, float", output);
        Assert.Contains("BatchNorm, rate 1.5, float", output);
        Assert.Contains(output.Split('\n'), line => line.TrimEnd('\r') == "BatchNorm, rate 0.05");
        Assert.True(File.Exists(Path.Combine(folder, "learning-curves.png")));
    }

    [Fact]
    public void Help_lists_every_option_and_exits_with_0()
    {
        (int code, string output, _) = Run("--help");
        Assert.Equal(0, code);
        foreach (string option in new[] { "--epochs", "--seed", "--strategy", "--norm", "--precision", "--out", "--data", "--check", "--trace" })
        {
            Assert.Contains(option, output);
        }
    }

    [Fact]
    public void A_data_path_that_is_a_folder_is_named_before_any_training()
    {
        (int code, string output, string error) = Run("--data", Path.GetTempPath());
        Assert.Equal(1, code);
        Assert.Contains("is a folder", error);
        Assert.DoesNotContain("epoch", output);
    }

    [Fact]
    public void An_output_folder_that_cannot_be_written_is_named_before_any_training()
    {
        // A folder cannot be made under a file, whatever the user's rights.
        string file = Path.GetTempFileName();
        (int code, string output, string error) = Run("--out", Path.Combine(file, "charts"));
        Assert.Equal(1, code);
        Assert.StartsWith("Cannot write to the output folder", error);
        Assert.DoesNotContain("   at ", error);
        Assert.DoesNotContain("epoch", output);
        (code, _, error) = Run("--out", file);
        Assert.Equal(1, code);
        Assert.Contains("is a file", error);
    }

    [Fact]
    public void Check_prints_small_relative_errors_for_each_normalization_and_both_strategies()
    {
        (int code, string output, _) = Run("--check", "--norm", "batch", "layer");
        Assert.Equal(0, code);
        Assert.Contains("BatchNorm", output);
        Assert.Contains("LayerNorm", output);
        Assert.Contains("staged", output);
        Assert.Contains("closed", output);
        Assert.Contains("All below", output);
    }

    [Fact]
    public void Trace_prints_every_node_of_the_staged_pass_and_agrees_with_the_closed_form()
    {
        (int code, string output, _) = Run("--trace");
        Assert.Equal(0, code);
        foreach (string node in new[] { "dx̂ = γ·dy", "dσ²", "dμ, through x̂", "dμ, through σ²", "dμ\n", "dx\n", "dγ", "dβ", "differs from the staged dx by at most" })
        {
            Assert.Contains(node, output);
        }
    }

    [Fact]
    public void A_one_epoch_run_writes_the_png_svg_and_csv_where_it_says()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"digits-out-{Guid.NewGuid():N}");
        (int code, string output, _) = Run("--epochs", "1", "--out", dir, "--strategy", "staged");
        Assert.Equal(0, code);
        string png = Path.Combine(dir, "learning-curves.png"), svg = Path.Combine(dir, "learning-curves.svg"), csv = Path.Combine(dir, "learning-curves.csv");
        Assert.Contains(png, output);
        Assert.Contains(csv, output);
        Assert.True(File.Exists(png) && File.Exists(svg));
        Assert.StartsWith("run,epoch,loss,train_accuracy,test_accuracy", File.ReadAllText(csv));
        Assert.Equal(5, File.ReadAllLines(csv).Length);
        Assert.Contains("| run | final test accuracy | epochs to 90% | epochs to 95% |", output);
    }

    [Fact]
    public void Each_chosen_normalization_gets_its_runs_and_rows()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"digits-out-{Guid.NewGuid():N}");
        (int code, string output, _) = Run("--epochs", "1", "--out", dir, "--norm", "layer", "group", "rms", "renorm", "none");
        Assert.Equal(0, code);
        foreach (string run in new[] { "LayerNorm, rate 0.05", "GroupNorm (8 groups), rate 1.5", "RMSNorm, rate 0.05", "BatchRenorm, rate 0.05", "plain, rate 1.5" })
        {
            Assert.Contains($"| {run} |", output);
        }

        Assert.Equal(11, File.ReadAllLines(Path.Combine(dir, "learning-curves.csv")).Length);
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
