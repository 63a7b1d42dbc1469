using System;
using System.Linq;
using BatchNorm.Mpi.Worker;

namespace BatchNorm.Mpi.Tests;

/// <summary>Comparisons of what ranks recorded: close to a reference (as the library's synchronization tests judge it), or bit for bit.</summary>
internal static class Compare
{
    /// <summary>Within 1e-12 of the reference's scale (1 + its largest magnitude), element by element.</summary>
    public static void Close(double[] expected, double[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        double scale = 1 + expected.Select(Math.Abs).DefaultIfEmpty().Max();
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-12 * scale, $"{what}[{i}]: {actual[i]:R}, expected {expected[i]:R} (scale {scale:E2})");
        }
    }

    /// <summary>Row by row, as <see cref="Close(double[], double[], string)"/>, with the scale of the whole matrix.</summary>
    public static void Close(double[][] expected, double[][] actual, string what)
        => Close(expected.SelectMany(row => row).ToArray(), actual.SelectMany(row => row).ToArray(), what);

    /// <summary>Every field bit for bit.</summary>
    public static void Identical(StepRecord expected, StepRecord actual, string what)
    {
        Shared(expected, actual, what);
        Identical(expected.Output.SelectMany(r => r).ToArray(), actual.Output.SelectMany(r => r).ToArray(), $"y, {what}");
        Identical(expected.InputGradient.SelectMany(r => r).ToArray(), actual.InputGradient.SelectMany(r => r).ToArray(), $"dx, {what}");
    }

    /// <summary>What every rank shares, bit for bit: γ's and β's gradients, the batch statistics and the running statistics.</summary>
    public static void Shared(StepRecord expected, StepRecord actual, string what)
    {
        Identical(expected.GammaGradient, actual.GammaGradient, $"dγ, {what}");
        Identical(expected.BetaGradient, actual.BetaGradient, $"dβ, {what}");
        Identical(expected.Mean, actual.Mean, $"μ, {what}");
        Identical(expected.Variance, actual.Variance, $"σ², {what}");
        Identical(expected.RunningMean, actual.RunningMean, $"running mean, {what}");
        Identical(expected.RunningVariance, actual.RunningVariance, $"running variance, {what}");
        Assert.Equal(expected.BatchesTracked, actual.BatchesTracked);
    }

    private static void Identical(double[] expected, double[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(BitConverter.DoubleToInt64Bits(expected[i]) == BitConverter.DoubleToInt64Bits(actual[i]), $"{what}[{i}]: {actual[i]:R}, expected bit for bit {expected[i]:R}");
        }
    }
}
