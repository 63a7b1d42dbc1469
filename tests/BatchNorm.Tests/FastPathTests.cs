using System;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Double;

namespace BatchNorm.Tests;

/// <summary>
/// The fused, threaded and streaming paths against the staged teaching path and the general path,
/// on batches large enough to take them (see ColumnRunner.MinElementsPerThread and ColumnKernels.StreamingThreshold).
/// </summary>
[Collection(SerialAllocationTests.Name)]
public class FastPathTests
{
    public static TheoryData<int, int> LargeShapes => new()
    {
        { 1031, 70 },     // two threads, odd row count (scalar tails)
        { 4099, 130 },    // threads and streaming stores, columns not 32-byte aligned
        { 2, 40000 },     // two rows, many features, threads
    };

    [Theory]
    [MemberData(nameof(LargeShapes))]
    public void Threaded_closed_form_agrees_with_the_staged_path(int rows, int features)
    {
        (Matrix<double> x, Matrix<double> dy) = Inputs(rows, features, seed: rows);
        var fast = new BatchNormLayer(features);
        var staged = new BatchNormLayer(features, backward: BackwardStrategy.Staged) { MaxDegreeOfParallelism = 1 };
        Matrix<double> yFast = fast.Forward(x), yStaged = staged.Forward(x);
        Assert.True((yFast - yStaged).InfinityNorm() == 0, "Forward is the same code on one thread and on several");
        Matrix<double> dxFast = fast.Backward(dy), dxStaged = staged.Backward(dy);
        for (int j = 0; j < features; j++)
        {
            double scale = Math.Abs(fast.Gamma[j]) * fast.Cache!.InverseStandardDeviation[j] * (dy.Column(j).AbsoluteMaximum() * 4);
            double worst = (dxFast.Column(j) - dxStaged.Column(j)).AbsoluteMaximum();
            Assert.True(rows == 2 ? worst <= 1e-6 * scale : worst <= 1e-12 * scale, $"column {j}: {worst:E2} against terms of {scale:E2}");
        }

        Assert.True((fast.GammaGradient - staged.GammaGradient).AbsoluteMaximum() <= 1e-11 * rows);
        Assert.True((fast.BetaGradient - staged.BetaGradient).AbsoluteMaximum() <= 1e-11 * rows);
        Assert.Equal(fast.RunningMean, staged.RunningMean);
        Assert.Equal(fast.RunningVariance, staged.RunningVariance);
    }

    [Theory]
    [MemberData(nameof(LargeShapes))]
    public void One_thread_and_many_give_identical_results(int rows, int features)
    {
        (Matrix<double> x, Matrix<double> dy) = Inputs(rows, features, seed: 7);
        var one = new BatchNormLayer(features) { MaxDegreeOfParallelism = 1 };
        var many = new BatchNormLayer(features) { MaxDegreeOfParallelism = 8 };
        Assert.Equal(one.Forward(x), many.Forward(x));
        Assert.Equal(one.Backward(dy), many.Backward(dy));
        Assert.Equal(one.GammaGradient, many.GammaGradient);
        one.IsTraining = many.IsTraining = false;
        Assert.Equal(one.Forward(x), many.Forward(x));
        Assert.Equal(one.Backward(dy), many.Backward(dy));
    }

    [Fact]
    public void The_general_path_agrees_with_the_fast_path_on_a_large_sparse_batch()
    {
        (Matrix<double> dense, Matrix<double> dy) = Inputs(1500, 60, seed: 3);
        dense = dense.PointwiseMultiply(Matrix<double>.Build.Dense(1500, 60, (i, j) => (i + j) % 3 == 0 ? 1 : 0));
        var fast = new BatchNormLayer(60);
        var general = new BatchNormLayer(60);
        Assert.Equal(fast.Forward(dense), general.Forward(SparseMatrix.OfMatrix(dense)));
        Assert.Equal(fast.Backward(dy), general.Backward(SparseMatrix.OfMatrix(dy)));
        Assert.Equal(fast.GammaGradient, general.GammaGradient);
    }

    [Fact]
    public void A_bad_column_handled_by_another_thread_is_reported_and_changes_nothing()
    {
        (Matrix<double> x, _) = Inputs(2000, 64, seed: 5);
        var layer = new BatchNormLayer(64);
        layer.Forward(x);
        var snapshot = new LayerSnapshot(layer);
        Matrix<double> bad = x.Clone();
        bad[10, 60] = double.NaN;
        bad[3, 45] = double.PositiveInfinity;
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(bad));
        Assert.Contains("Column 45", e.Message);
        snapshot.AssertUnchanged();
    }

    [Theory]
    [InlineData(64, 128, 1)]
    [InlineData(4099, 130, 1)]
    [InlineData(4099, 130, 2)]
    [InlineData(2, 40000, 2)]
    public void Steady_state_steps_allocate_nothing(int rows, int features, int threads)
    {
        (Matrix<double> x, Matrix<double> dy) = Inputs(rows, features, seed: 9);
        Matrix<double> y = Matrix<double>.Build.Dense(rows, features), dx = Matrix<double>.Build.Dense(rows, features);
        var layer = new BatchNormLayer(features) { MaxDegreeOfParallelism = threads };
        AssertStepsInBothModesAllocateNothing(layer, () =>
        {
            layer.Forward(x, y);
            layer.Backward(dy, dx);
        });
    }

    [Theory]
    [InlineData("batch norm", "closed", 64, 1)]
    [InlineData("batch norm", "closed", 4099, 2)]
    [InlineData("layer norm", "closed", 64, 1)]
    [InlineData("ghost batches", "closed", 64, 1)]
    [InlineData("batch norm", "staged", 64, 1)]
    [InlineData("group norm", "staged", 64, 1)]
    public void Steady_state_float_steps_allocate_nothing(string kind, string strategyName, int rows, int threads)
    {
        // The closed form reads floats in place; the staged strategy gets the step widened into scratch kept for it.
        BackwardStrategy strategy = strategyName == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;
        var layer = (NormalizationLayer)ContractTests.Create(kind, strategy, features: 132);
        layer.MaxDegreeOfParallelism = threads;
        (Matrix<double> x0, Matrix<double> dy0) = Inputs(rows, 132, seed: 4);
        Matrix<float> x = x0.Map(v => (float)v), dy = dy0.Map(v => (float)v);
        Matrix<float> y = Matrix<float>.Build.Dense(rows, 132), dx = Matrix<float>.Build.Dense(rows, 132);
        AssertStepsInBothModesAllocateNothing(layer, () =>
        {
            layer.Forward(x, y);
            layer.Backward(dy, dx);
        });
    }

    public static TheoryData<string, string> OtherLayers => new()
    {
        { "ghost batches", "staged" },
        { "ghost batches", "closed" },
        { "layer norm", "staged" },
        { "layer norm", "closed" },
        { "group norm", "staged" },
        { "group norm", "closed" },
        { "batch renorm", "staged" },
        { "batch renorm", "closed" },
        { "spatial ghost batches", "staged" },
        { "spatial ghost batches", "closed" },
        { "spatial group norm", "closed" },
        { "instance norm", "staged" },
        { "instance norm", "closed" },
        { "rms norm", "staged" },
        { "rms norm", "closed" },
        { "bare batch norm", "closed" },
    };

    [Theory]
    [MemberData(nameof(OtherLayers))]
    public void Steady_state_steps_of_the_other_layers_allocate_nothing(string kind, string strategyName)
    {
        BackwardStrategy strategy = strategyName == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;
        (Matrix<double> x, Matrix<double> dy) = Inputs(256, 24, seed: 5);
        Matrix<double> y = Matrix<double>.Build.Dense(256, 24), dx = Matrix<double>.Build.Dense(256, 24);
        Action step = kind switch
        {
            "ghost batches" => TrainAndInfer(new BatchNormLayer(24, backward: strategy) { VirtualBatchSize = 32 }, (l, t) => l.IsTraining = t, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "layer norm" => TrainAndInfer(new LayerNormLayer(24, backward: strategy), (_, _) => { }, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "group norm" => TrainAndInfer(new GroupNormLayer(24, 4, backward: strategy), (_, _) => { }, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "batch renorm" => TrainAndInfer(new BatchRenormLayer(24, backward: strategy), (l, t) => l.IsTraining = t, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "spatial ghost batches" => TrainAndInfer(Ghost(BatchNormLayer.Spatial(6, 4, backward: strategy)), (l, t) => l.IsTraining = t, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "spatial group norm" => TrainAndInfer(GroupNormLayer.Spatial(6, 2, 4, backward: strategy), (_, _) => { }, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "instance norm" => TrainAndInfer(new InstanceNormLayer(6, 4, backward: strategy, affine: true, trackRunningStatistics: true), (l, t) => l.IsTraining = t, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            "rms norm" => TrainAndInfer(new RMSNormLayer(24, groups: 3, backward: strategy), (_, _) => { }, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
            _ => TrainAndInfer(new BatchNormLayer(24, backward: strategy, affine: false, trackRunningStatistics: false), (l, t) => l.IsTraining = t, (l, a, b) => l.Forward(a, b), (l, a, b) => l.Backward(a, b)),
        };
        AssertSteadyStateAllocatesNothing(step);

        static BatchNormLayer Ghost(BatchNormLayer layer)
        {
            layer.VirtualBatchSize = 32;
            return layer;
        }

        Action TrainAndInfer<TLayer>(TLayer layer, Action<TLayer, bool> setTraining, Action<TLayer, Matrix<double>, Matrix<double>> forward, Action<TLayer, Matrix<double>, Matrix<double>> backward)
            => () =>
            {
                setTraining(layer, true);
                forward(layer, x, y);
                backward(layer, dy, dx);
                setTraining(layer, false);
                forward(layer, x, y);
                backward(layer, dy, dx);
            };
    }

    /// <summary>A training step and then an inference step of <paramref name="layer"/>, in steady state, allocate nothing.</summary>
    private static void AssertStepsInBothModesAllocateNothing(INormalizationLayer layer, Action step)
        => AssertSteadyStateAllocatesNothing(() =>
        {
            layer.IsTraining = true;
            step();
            layer.IsTraining = false;
            step();
        });

    /// <summary>
    /// Warms up with a few steps (the first steps of a shape allocate the caches), then runs a fixed number of steps and
    /// asserts that neither the calling thread nor the runner's worker threads, inside the work they run for the layer,
    /// allocated a byte. Process-wide claims are left to BenchmarkDotNet's MemoryDiagnoser (see benchmarks/): other
    /// threads of the test host allocate at will, so counting them here would make the test depend on them.
    /// </summary>
    /// <remarks>
    /// A garbage collection, which the other tests running beside this one can set off at any time, resets the thread's
    /// allocation context, and the runtime's count of the thread's bytes can then move by a few kilobytes with nothing
    /// allocated (dotnet/coreclr#10207; seen here as 1,768 bytes in one of three runs of the suite). So a window of steps
    /// during which a collection ran is measured again, up to ten times; a step that allocates shows in every window.
    /// What this cannot see is an allocation that only a collection brings about, such as re-renting an array that a
    /// collection trimmed from <c>ArrayPool</c>.
    /// </remarks>
    internal static void AssertSteadyStateAllocatesNothing(Action step)
    {
        for (int i = 0; i < 3; i++)
        {
            step();
        }

        long byMe = 0, byWorkers = 0;
        for (int attempt = 0; attempt < 10; attempt++)
        {
            int collections = GC.CollectionCount(0);
            long mine = GC.GetAllocatedBytesForCurrentThread(), workers = ColumnWorkers.AllocatedBytes;
            for (int i = 0; i < 50; i++)
            {
                step();
            }

            byMe = GC.GetAllocatedBytesForCurrentThread() - mine;
            byWorkers = ColumnWorkers.AllocatedBytes - workers;
            if (GC.CollectionCount(0) == collections)
            {
                break;
            }
        }

        Assert.True(byMe == 0 && byWorkers == 0, $"50 steady steps allocated {byMe} bytes on the calling thread and {byWorkers} in the runner's work items");
    }

    private static (Matrix<double> X, Matrix<double> Dy) Inputs(int rows, int features, int seed)
    {
        var random = new Random(seed);
        Matrix<double> x = Matrix<double>.Build.Dense(rows, features, (_, j) => (j * 10.0) + (random.NextDouble() * (1 + (j % 5))));
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, features, (_, _) => random.NextDouble() - 0.5);
        return (x, dy);
    }
}

/// <summary>Tests that count the allocations of the runner's worker threads, which other tests' layers share.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialAllocationTests
{
    public const string Name = "Allocation counting on the shared worker threads";
}
