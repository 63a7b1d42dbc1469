using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
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

    /// <summary>Batches of N samples of C channels × S positions ("NxCxS"): a small CNN's feature maps, flattened channel-major.</summary>
    private static readonly string[] SpatialShapeNames = ["32x16x64", "64x32x256"];

    /// <summary>Measures every shape with one and two threads and returns a markdown report.</summary>
    /// <param name="rounds">Rounds per operation; the median ratio over them is reported.</param>
    /// <param name="shapes">The shapes to measure ("NxD", or "NxCxS" for the channels × positions table), or none for every shape of both tables.</param>
    /// <returns>The report.</returns>
    public static string Run(int rounds = 101, string[]? shapes = null)
    {
        var report = new StringBuilder();
        report.AppendLine(Invariant($"Median over {rounds} rounds of (operation time ÷ time of copying the same input), copy and operation timed back to back in each round."));
        report.AppendLine(Invariant($"Shapes of up to 65,536 elements take ten times as many rounds: each of their rounds lasts microseconds."));
        report.AppendLine(Invariant(
            $"{Environment.ProcessorCount} cores, .NET {Environment.Version}, Vector<double> of {System.Numerics.Vector<double>.Count}, AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}, AVX-512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}, Vector512 accelerated {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}."));
        report.AppendLine();
        string[] chosen = shapes is { Length: > 0 } ? shapes : [.. ShapeNames, .. SpatialShapeNames];
        string[] plain = [.. chosen.Where(s => s.Count(c => c == 'x') == 1)], spatial = [.. chosen.Where(s => s.Count(c => c == 'x') == 2)];
        if (plain.Length > 0)
        {
            report.AppendLine("| shape | threads | training forward | inference forward | closed-form backward | staged backward | training step | naive step | step time (median) | renorm step | layer norm step | group norm step (G = 8) | RMS norm step |");
            report.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            foreach (string shape in plain)
            {
                foreach (int threads in new[] { 1, 2 })
                {
                    report.AppendLine(Row(shape, threads, rounds));
                }
            }

            report.AppendLine();
        }

        if (spatial.Length > 0)
        {
            report.AppendLine("Channels × positions: N samples of C channels of S positions each, N×(C·S) matrices flattened channel-major; every step is training Forward plus closed-form Backward.");
            report.AppendLine();
            report.AppendLine("| N×C×S | threads | spatial batch norm step | its inference forward | per-feature batch norm step, same matrix | spatial group norm step (G = 4) | instance norm step (affine) | step time (median) |");
            report.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
            foreach (string shape in spatial)
            {
                foreach (int threads in new[] { 1, 2 })
                {
                    report.AppendLine(SpatialRow(shape, threads, rounds));
                }
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
        var rmsNorm = new RMSNormLayer(d) { MaxDegreeOfParallelism = threads };
        inference.Forward(x, y);
        inference.IsTraining = false;
        staged.Forward(x, y);

        (double Ratio, double Micros) Measure(Action operation, int count) => MeasureAgainstCopy(x, copy, operation, count);

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
        var rmsNormStep = Measure(
            () =>
            {
                rmsNorm.Forward(x, y);
                rmsNorm.Backward(dy, dx);
            },
            rounds);
        return Invariant($"| {shape} | {threads} | {forward.Ratio:F2} | {inferenceForward.Ratio:F2} | {backward.Ratio:F2} | {stagedBackward.Ratio:F1} | **{step.Ratio:F2}** | {naiveStep.Ratio:F0} | {step.Micros:F0} µs | {renormStep.Ratio:F2} | {layerNormStep.Ratio:F2} | {groupNormStep.Ratio:F2} | {rmsNormStep.Ratio:F2} |");
    }

    /// <summary>Per round, a copy of x and then the operation, timed back to back; the medians of their ratio and of the operation's time.</summary>
    private static (double Ratio, double Micros) MeasureAgainstCopy(Matrix<double> x, Matrix<double> copy, Action operation, int count)
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

    private static string SpatialRow(string shape, int threads, int rounds)
    {
        string[] parts = shape.Split('x');
        int n = int.Parse(parts[0], CultureInfo.InvariantCulture), c = int.Parse(parts[1], CultureInfo.InvariantCulture), s = int.Parse(parts[2], CultureInfo.InvariantCulture);
        int d = c * s;
        rounds = n * d <= 65_536 ? (10 * rounds) + 1 : rounds;
        Matrix<double> x = Shapes.Random(n, d, 1, offset: 3), dy = Shapes.Random(n, d, 2, offset: 0);
        Matrix<double> y = Matrix<double>.Build.Dense(n, d), dx = Matrix<double>.Build.Dense(n, d), copy = Matrix<double>.Build.Dense(n, d);
        BatchNormLayer spatial = BatchNormLayer.Spatial(c, s), inference = BatchNormLayer.Spatial(c, s);
        var perFeature = new BatchNormLayer(d);
        GroupNormLayer group = GroupNormLayer.Spatial(c, 4, s);
        var instance = new InstanceNormLayer(c, s, affine: true);
        foreach (NormalizationLayer layer in new NormalizationLayer[] { spatial, inference, perFeature, group, instance })
        {
            layer.MaxDegreeOfParallelism = threads;
        }

        inference.Forward(x, y);
        inference.IsTraining = false;
        (double Ratio, double Micros) Step(NormalizationLayer layer) => MeasureAgainstCopy(
            x,
            copy,
            () =>
            {
                layer.Forward(x, y);
                layer.Backward(dy, dx);
            },
            rounds);

        var step = Step(spatial);
        var inferenceForward = MeasureAgainstCopy(x, copy, () => inference.Forward(x, y), rounds);
        var perFeatureStep = Step(perFeature);
        var groupStep = Step(group);
        var instanceStep = Step(instance);
        return Invariant($"| {n}×{c}×{s} | {threads} | **{step.Ratio:F2}** | {inferenceForward.Ratio:F2} | {perFeatureStep.Ratio:F2} | {groupStep.Ratio:F2} | {instanceStep.Ratio:F2} | {step.Micros:F0} µs |");
    }

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
