using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Benchmarks;

/// <summary>
/// Ratios to the copy baseline measured in one process: every round times a copy of the input and then the
/// operation, back to back, and the table gives the median of the per-round ratios. On a shared, noisy
/// machine this is steadier than comparing means from separate BenchmarkDotNet processes.
/// </summary>
public static class SameRunRatios
{
    private static readonly string[] ShapeNames = ["32x128", "64x128", "128x256", "256x1024", "4096x512", "32768x64"];

    /// <summary>Measures every shape with one and two threads and returns a markdown report.</summary>
    /// <param name="rounds">Rounds per operation; the median ratio over them is reported.</param>
    /// <param name="shapes">The shapes to measure ("NxD"), or none for every shape of the table.</param>
    /// <returns>The report.</returns>
    public static string Run(int rounds = 101, string[]? shapes = null)
    {
        var report = new StringBuilder();
        report.AppendLine(Invariant($"Median over {rounds} rounds of (operation time ÷ time of copying the same input), copy and operation timed back to back in each round."));
        report.AppendLine(Invariant($"Shapes of up to 65,536 elements take ten times as many rounds: each of their rounds lasts microseconds."));
        report.AppendLine(Invariant(
            $"{Environment.ProcessorCount} cores, .NET {Environment.Version}, Vector<double> of {System.Numerics.Vector<double>.Count}, AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}, AVX-512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}, Vector512 accelerated {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}."));
        report.AppendLine();
        report.AppendLine("| shape | threads | training forward | inference forward | closed-form backward | staged backward | training step | naive step | step time (median) | renorm step | layer norm step | group norm step (G = 8) |");
        report.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (string shape in shapes is { Length: > 0 } ? shapes : ShapeNames)
        {
            foreach (int threads in new[] { 1, 2 })
            {
                report.AppendLine(Row(shape, threads, rounds));
            }
        }

        return report.ToString();
    }

    private static string Row(string shape, int threads, int rounds)
    {
        (int n, int d) = Shapes.Parse(shape);
        rounds = n * d <= 65_536 ? (10 * rounds) + 1 : rounds;
        Matrix<double> x = Shapes.Random(n, d, 1, offset: 3), dy = Shapes.Random(n, d, 2, offset: 0);
        Matrix<double> y = Matrix<double>.Build.Dense(n, d), dx = Matrix<double>.Build.Dense(n, d), copy = Matrix<double>.Build.Dense(n, d);
        var layer = new BatchNormLayer(d) { MaxDegreeOfParallelism = threads };
        var staged = new BatchNormLayer(d, backward: BackwardStrategy.Staged) { MaxDegreeOfParallelism = threads };
        var inference = new BatchNormLayer(d) { MaxDegreeOfParallelism = threads };
        var naive = new NaiveBatchNorm(d);
        var renorm = new BatchRenormLayer(d) { MaxDegreeOfParallelism = threads, RMax = 3, DMax = 5 };
        var layerNorm = new LayerNormLayer(d) { MaxDegreeOfParallelism = threads };
        var groupNorm = new GroupNormLayer(d, 8) { MaxDegreeOfParallelism = threads };
        inference.Forward(x, y);
        inference.IsTraining = false;
        staged.Forward(x, y);

        (double Ratio, double Micros) Measure(Action operation, int count)
        {
            // Long enough for the tiered JIT to have replaced the code with its optimized version.
            var warmUp = Stopwatch.StartNew();
            for (int k = 0; k < 50 || warmUp.ElapsedMilliseconds < 300; k++)
            {
                x.CopyTo(copy);
                operation();
            }

            var ratios = new List<double>(count);
            var times = new List<double>(count);
            for (int k = 0; k < count; k++)
            {
                long start = Stopwatch.GetTimestamp();
                x.CopyTo(copy);
                long middle = Stopwatch.GetTimestamp();
                operation();
                long end = Stopwatch.GetTimestamp();
                ratios.Add((double)(end - middle) / (middle - start));
                times.Add((end - middle) * 1e6 / Stopwatch.Frequency);
            }

            ratios.Sort();
            times.Sort();
            return (ratios[count / 2], times[count / 2]);
        }

        void Step()
        {
            layer.Forward(x, y);
            layer.Backward(dy, dx);
        }

        var forward = Measure(() => layer.Forward(x, y), rounds);
        var inferenceForward = Measure(() => inference.Forward(x, y), rounds);
        var backward = Measure(() => layer.Backward(dy, dx), rounds);
        var stagedBackward = Measure(() => staged.Backward(dy, dx), Math.Max(11, rounds / 5));
        var step = Measure(Step, rounds);
        var naiveStep = Measure(
            () =>
            {
                naive.Forward(x);
                naive.Backward(dy);
            },
            Math.Max(11, rounds / 10));
        var renormStep = Measure(
            () =>
            {
                renorm.Forward(x, y);
                renorm.Backward(dy, dx);
            },
            rounds);
        var layerNormStep = Measure(
            () =>
            {
                layerNorm.Forward(x, y);
                layerNorm.Backward(dy, dx);
            },
            rounds);
        var groupNormStep = Measure(
            () =>
            {
                groupNorm.Forward(x, y);
                groupNorm.Backward(dy, dx);
            },
            rounds);
        return Invariant($"| {shape} | {threads} | {forward.Ratio:F2} | {inferenceForward.Ratio:F2} | {backward.Ratio:F2} | {stagedBackward.Ratio:F1} | **{step.Ratio:F2}** | {naiveStep.Ratio:F0} | {step.Micros:F0} µs | {renormStep.Ratio:F2} | {layerNormStep.Ratio:F2} | {groupNormStep.Ratio:F2} |");
    }

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
