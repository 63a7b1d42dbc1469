using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using Perfolizer.Horology;

// dotnet run -c Release --project benchmarks/BatchNorm.Benchmarks -- --filter '*'
// Results land in BenchmarkDotNet.Artifacts/results; the committed copies are in benchmarks/results.
// With the argument "ratios" it prints the same-process ratio table instead (see SameRunRatios), of every shape or of
// the shapes that follow, as in "ratios 32x128 64x128".
// With "precision" it prints single against double precision: the layers' training steps and the column kernels (see
// PrecisionRatios), of 32x128, 4096x512 and 32768x64 or of the shapes that follow.
if (args is ["precision", ..])
{
    System.Console.WriteLine(BatchNorm.Benchmarks.PrecisionRatios.Run(shapes: args[1..]));
    return;
}

if (args is ["ratios", ..])
{
    System.Console.WriteLine(BatchNorm.Benchmarks.SameRunRatios.Run(shapes: args[1..]));
    return;
}

IConfig config = DefaultConfig.Instance
    .AddJob(Job.Default
        .WithLaunchCount(1)
        .WithWarmupCount(3)
        .WithIterationCount(15)
        .WithIterationTime(TimeInterval.FromMilliseconds(100))
        .WithId("Median of 15"))
    .AddColumn(StatisticColumn.Median)
    .AddExporter(MarkdownExporter.GitHub)
    .WithOptions(ConfigOptions.JoinSummary);
BenchmarkSwitcher.FromAssembly(typeof(BatchNorm.Benchmarks.Shapes).Assembly).Run(args, config);
