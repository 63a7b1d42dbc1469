using System;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Text;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Benchmarks;

/// <summary>
/// Single against double precision, in one process. First the training step (Forward and closed-form Backward) of batch
/// norm and of layer norm over <c>Matrix&lt;float&gt;</c> against the same layer over <c>Matrix&lt;double&gt;</c>, each
/// round timing the double step and then the float step back to back, with the bytes the float steps allocate. Then the
/// column kernels over float data against the same kernels over double data: each round times the
/// four passes of a training step (the moments, the normalize writing x̂ and y, the backward sums, the closed-form dx)
/// over every column of a double matrix and then of the same values as floats, and the table gives the median over the
/// rounds of float time ÷ double time per pass and for the four together. One thread, no layer around the kernels: this
/// measures what the element type changes (the memory traffic and the conversions), not the layer's overheads.
/// </summary>
public static class PrecisionRatios
{
    private static readonly string[] ShapeNames = ["32x128", "4096x512", "32768x64"];

    /// <summary>Measures the shapes and returns a markdown report.</summary>
    /// <param name="rounds">Rounds per shape (ten times as many for shapes of up to 65,536 elements).</param>
    /// <param name="shapes">The shapes ("NxD"), or none for 32x128, 4096x512 and 32768x64.</param>
    /// <returns>The report.</returns>
    public static string Run(int rounds = 41, string[]? shapes = null)
    {
        var report = new StringBuilder();
        report.AppendLine("Median over the rounds of (double step time ÷ float step time), both timed back to back in each round; a step is Forward then closed-form Backward into preallocated matrices.");
        report.AppendLine();
        report.AppendLine("| shape | threads | batch norm: float step speed-up | float step time (median) | bytes per float step | layer norm: float step speed-up |");
        report.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (string shape in shapes is { Length: > 0 } ? shapes : ShapeNames)
        {
            foreach (int threads in new[] { 1, 2 })
            {
                report.AppendLine(StepRow(shape, threads, rounds));
            }
        }

        report.AppendLine();
        report.AppendLine(Invariant($"Median over the rounds of (float time ÷ double time), both timed back to back in each round; one thread, Vector<double> of {System.Numerics.Vector<double>.Count}."));
        report.AppendLine();
        report.AppendLine("| shape | moments | normalize (x̂, y) | backward sums | closed-form dx | the four passes | double time of the four (median) |");
        report.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (string shape in shapes is { Length: > 0 } ? shapes : ShapeNames)
        {
            report.AppendLine(Row(shape, rounds));
        }

        return report.ToString();
    }

    private static string StepRow(string shape, int threads, int rounds)
    {
        (int n, int d) = Shapes.Parse(shape);
        rounds = n * d <= 65_536 ? (10 * rounds) + 1 : rounds;
        Matrix<double> x = Shapes.Random(n, d, 1, offset: 3), dy = Shapes.Random(n, d, 2, offset: 0);
        Matrix<float> xf = x.Map(v => (float)v), dyf = dy.Map(v => (float)v);
        Matrix<double> y = Matrix<double>.Build.Dense(n, d), dx = Matrix<double>.Build.Dense(n, d);
        Matrix<float> yf = Matrix<float>.Build.Dense(n, d), dxf = Matrix<float>.Build.Dense(n, d);
        var batch = new BatchNormLayer(d) { MaxDegreeOfParallelism = threads };
        var batchSingle = new BatchNormLayer(d) { MaxDegreeOfParallelism = threads };
        var layer = new LayerNormLayer(d) { MaxDegreeOfParallelism = threads };
        var layerSingle = new LayerNormLayer(d) { MaxDegreeOfParallelism = threads };
        (double ratio, double micros) = Ratio(() => Step(batch, x, y, dy, dx), () => Step(batchSingle, xf, yf, dyf, dxf), rounds);
        (double layerRatio, _) = Ratio(() => Step(layer, x, y, dy, dx), () => Step(layerSingle, xf, yf, dyf, dxf), rounds);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int k = 0; k < 10; k++)
        {
            Step(batchSingle, xf, yf, dyf, dxf);
        }

        long bytes = (GC.GetAllocatedBytesForCurrentThread() - before) / 10;
        return Invariant($"| {shape} | {threads} | **{ratio:F2}** | {micros:F0} µs | {bytes} | {layerRatio:F2} |");
    }

    private static void Step(NormalizationLayer layer, Matrix<double> x, Matrix<double> y, Matrix<double> dy, Matrix<double> dx)
    {
        layer.Forward(x, y);
        layer.Backward(dy, dx);
    }

    private static void Step(NormalizationLayer layer, Matrix<float> x, Matrix<float> y, Matrix<float> dy, Matrix<float> dx)
    {
        layer.Forward(x, y);
        layer.Backward(dy, dx);
    }

    /// <summary>The median of (time of <paramref name="wide"/> ÷ time of <paramref name="single"/>), and of the latter's time in µs.</summary>
    private static (double Ratio, double Micros) Ratio(Action wide, Action single, int rounds)
    {
        // Half a second of both first, so that the JIT has compiled their final code (tiered compilation starts with
        // unoptimized code and swaps it in the background).
        var warmUp = Stopwatch.StartNew();
        while (warmUp.ElapsedMilliseconds < 500)
        {
            wide();
            single();
        }

        double[] ratios = new double[rounds], micros = new double[rounds];
        for (int k = 0; k < rounds; k++)
        {
            long start = Stopwatch.GetTimestamp();
            wide();
            long middle = Stopwatch.GetTimestamp();
            single();
            long end = Stopwatch.GetTimestamp();
            ratios[k] = (double)(middle - start) / (end - middle);
            micros[k] = (end - middle) * 1e6 / Stopwatch.Frequency;
        }

        return (Median(ratios), Median(micros));
    }

    private static string Row(string shape, int rounds)
    {
        (int n, int d) = Shapes.Parse(shape);
        rounds = n * d <= 65_536 ? (10 * rounds) + 1 : rounds;
        var random = new Random(1);
        double[] x = [.. Enumerable.Range(0, n * d).Select(_ => 3 + random.NextDouble())], dy = [.. Enumerable.Range(0, n * d).Select(_ => random.NextDouble() - 0.5)];
        float[] xf = [.. x.Select(v => (float)v)], dyf = [.. dy.Select(v => (float)v)];
        var ratios = new double[5][];
        double[] doubleTimes = new double[rounds];
        for (int p = 0; p < 5; p++)
        {
            ratios[p] = new double[rounds];
        }

        var doubles = new Buffers<double>(x, dy, d);
        var floats = new Buffers<float>(xf, dyf, d);
        var warmUp = Stopwatch.StartNew();
        while (warmUp.ElapsedMilliseconds < 500)
        {
            Passes(doubles, n, d);
            Passes(floats, n, d);
        }

        for (int k = 0; k < rounds; k++)
        {
            double[] td = Passes(doubles, n, d), tf = Passes(floats, n, d);
            for (int p = 0; p < 4; p++)
            {
                ratios[p][k] = tf[p] / td[p];
            }

            ratios[4][k] = tf.Sum() / td.Sum();
            doubleTimes[k] = td.Sum();
        }

        string cells = string.Join(" | ", ratios.Select(r => Invariant($"{Median(r):F2}")));
        return Invariant($"| {shape} | {cells} | {Median(doubleTimes) * 1e3:F3} ms |");
    }

    /// <summary>The seconds each of the four passes takes over every column.</summary>
    private static double[] Passes<T>(Buffers<T> b, int n, int d)
        where T : unmanaged
    {
        bool stream = (long)n * d >= ColumnKernels.StreamingThreshold;
        var times = new double[4];
        long start = Stopwatch.GetTimestamp();
        for (int j = 0; j < d; j++)
        {
            ColumnKernels.Moments(b.X.AsSpan(j * n, n), out b.Mean[j], out b.Correction[j], out double variance);
            b.InverseStd[j] = ElementFormulas.InverseStandardDeviation(variance, 1e-5);
        }

        times[0] = Lap(ref start);
        for (int j = 0; j < d; j++)
        {
            ColumnKernels.Normalize(b.X.AsSpan(j * n, n), b.Mean[j], b.Correction[j], b.InverseStd[j], 1.5, 0.25, b.XHat.AsSpan(j * n, n), b.Y.AsSpan(j * n, n), stream);
        }

        times[1] = Lap(ref start);
        for (int j = 0; j < d; j++)
        {
            (b.SumDy[j], b.SumDyXHat[j]) = ColumnKernels.SumAndDot<T>(b.Dy.AsSpan(j * n, n), b.XHat.AsSpan(j * n, n));
        }

        times[2] = Lap(ref start);
        for (int j = 0; j < d; j++)
        {
            ColumnKernels.ClosedFormInputGradient<T>(b.Dy.AsSpan(j * n, n), b.XHat.AsSpan(j * n, n), b.SumDy[j] / n, b.SumDyXHat[j] / n, 1.5 * b.InverseStd[j], b.Dx.AsSpan(j * n, n), stream);
        }

        times[3] = Lap(ref start);
        return times;
    }

    private static double Lap(ref long start)
    {
        long now = Stopwatch.GetTimestamp();
        double seconds = (now - start) / (double)Stopwatch.Frequency;
        start = now;
        return seconds;
    }

    private static double Median(double[] values)
    {
        double[] sorted = [.. values.Order()];
        return sorted[sorted.Length / 2];
    }

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    /// <summary>A step's arrays in one element type, and its per-column scalars.</summary>
    private sealed class Buffers<T>(T[] x, T[] dy, int columns)
        where T : unmanaged
    {
        public T[] X { get; } = x;

        public T[] Dy { get; } = dy;

        public T[] XHat { get; } = new T[x.Length];

        public T[] Y { get; } = new T[x.Length];

        public T[] Dx { get; } = new T[x.Length];

        public double[] Mean { get; } = new double[columns];

        public double[] Correction { get; } = new double[columns];

        public double[] InverseStd { get; } = new double[columns];

        public double[] SumDy { get; } = new double[columns];

        public double[] SumDyXHat { get; } = new double[columns];
    }
}
