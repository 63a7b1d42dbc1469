using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;

// dotnet run -c Release --project benchmarks/BatchNorm.Benchmarks -- --filter '*'
// Results land in BenchmarkDotNet.Artifacts/results; the committed copies are in benchmarks/results.
IConfig config = DefaultConfig.Instance
    .AddJob(Job.Default.WithWarmupCount(4).WithIterationCount(15).WithId("Median of 15"))
    .AddExporter(MarkdownExporter.GitHub)
    .WithOptions(ConfigOptions.JoinSummary);
BenchmarkSwitcher.FromAssembly(typeof(BatchNorm.Benchmarks.Shapes).Assembly).Run(args, config);
