using BenchmarkDotNet.Attributes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Benchmarks;

/// <summary>
/// Every pass of the layer on one thread, against copying the input (the memory floor) and a naive
/// MathNet-operator implementation. Ratios are to <see cref="Copy"/> of the same shape.
/// </summary>
[MemoryDiagnoser]
public class LayerBenchmarks
{
    private BatchNormLayer _training = null!, _inference = null!, _staged = null!;
    private NaiveBatchNorm _naive = null!;
    private Matrix<double> _x = null!, _y = null!, _dy = null!, _dx = null!, _copy = null!;

    /// <summary>Gets or sets the batch shape, N×D.</summary>
    [Params("32x128", "64x128", "128x256", "256x1024", "4096x512", "32768x64")]
    public string Shape { get; set; } = "64x128";

    /// <summary>Builds the layers and matrices and runs one step of each so caches exist.</summary>
    [GlobalSetup]
    public void Setup()
    {
        (_x, _dy, _y, _dx) = Shapes.Inputs(Shape);
        int d = _x.ColumnCount;
        _copy = _x.Clone();
        _training = new BatchNormLayer(d) { MaxDegreeOfParallelism = 1 };
        _staged = new BatchNormLayer(d, backward: BackwardStrategy.Staged) { MaxDegreeOfParallelism = 1 };
        _inference = new BatchNormLayer(d) { MaxDegreeOfParallelism = 1 };
        _inference.Forward(_x, _y);
        _inference.IsTraining = false;
        _training.Forward(_x, _y);
        _staged.Forward(_x, _y);
        _naive = new NaiveBatchNorm(d);
        _naive.Forward(_x);
    }

    /// <summary>Copies x into another matrix of its shape: two N×D streams, the floor.</summary>
    [Benchmark(Baseline = true)]
    public void Copy() => _x.CopyTo(_copy);

    /// <summary>Training Forward into a caller-owned matrix.</summary>
    [Benchmark]
    public void TrainingForward() => _training.Forward(_x, _y);

    /// <summary>Training Forward returning a new matrix.</summary>
    [Benchmark]
    public Matrix<double> TrainingForwardAllocating() => _training.Forward(_x);

    /// <summary>Inference Forward into a caller-owned matrix.</summary>
    [Benchmark]
    public void InferenceForward() => _inference.Forward(_x, _y);

    /// <summary>Inference Forward returning a new matrix.</summary>
    [Benchmark]
    public Matrix<double> InferenceForwardAllocating() => _inference.Forward(_x);

    /// <summary>Closed-form Backward into a caller-owned matrix.</summary>
    [Benchmark]
    public void ClosedFormBackward() => _training.Backward(_dy, _dx);

    /// <summary>Closed-form Backward returning a new matrix.</summary>
    [Benchmark]
    public Matrix<double> ClosedFormBackwardAllocating() => _training.Backward(_dy);

    /// <summary>Staged Backward into a caller-owned matrix.</summary>
    [Benchmark]
    public void StagedBackward() => _staged.Backward(_dy, _dx);

    /// <summary>Staged Backward returning a new matrix.</summary>
    [Benchmark]
    public Matrix<double> StagedBackwardAllocating() => _staged.Backward(_dy);

    /// <summary>Training Forward and closed-form Backward with the destination overloads: the target metric.</summary>
    [Benchmark]
    public void TrainingStep()
    {
        _training.Forward(_x, _y);
        _training.Backward(_dy, _dx);
    }

    /// <summary>The same step built from MathNet operators.</summary>
    [Benchmark]
    public Matrix<double> NaiveTrainingStep()
    {
        _naive.Forward(_x);
        return _naive.Backward(_dy);
    }
}
