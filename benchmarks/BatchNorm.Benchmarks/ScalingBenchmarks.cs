using BenchmarkDotNet.Attributes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Benchmarks;

/// <summary>A training step (Forward and closed-form Backward, destination overloads) on one thread and on two.</summary>
[MemoryDiagnoser]
public class ScalingBenchmarks
{
    private BatchNormLayer _layer = null!;
    private Matrix<double> _x = null!, _y = null!, _dy = null!, _dx = null!;

    /// <summary>Gets or sets the batch shape, N×D.</summary>
    [Params("64x128", "256x1024", "4096x512", "32768x64")]
    public string Shape { get; set; } = "4096x512";

    /// <summary>Gets or sets the layer's MaxDegreeOfParallelism.</summary>
    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    /// <summary>Builds the layer and matrices and runs one step.</summary>
    [GlobalSetup]
    public void Setup()
    {
        (_x, _dy, _y, _dx) = Shapes.Inputs(Shape);
        int d = _x.ColumnCount;
        _layer = new BatchNormLayer(d) { MaxDegreeOfParallelism = Threads };
        TrainingStep();
    }

    /// <summary>Training Forward and closed-form Backward with the destination overloads.</summary>
    [Benchmark]
    public void TrainingStep()
    {
        _layer.Forward(_x, _y);
        _layer.Backward(_dy, _dx);
    }
}
