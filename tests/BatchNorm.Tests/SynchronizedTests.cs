using System;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Statistics synchronized across K in-process workers, against one layer on the concatenated batch.</summary>
public class SynchronizedTests
{
    public static TheoryData<string> Strategies => new() { "staged", "closed", "textbook" };

    private static BackwardStrategy Strategy(string name) => ContractTests.Strategy(name);

    [BatchNormProperty(CasesFactor = 3)]
    public void K_workers_on_threads_match_one_layer_on_the_concatenated_batch(ShardedCase t, BackwardStrategy strategy)
    {
        // Cuts may coincide or sit at either end: workers with no rows take part too.
        BatchCase c = t.Case;
        int[] bounds = t.Bounds;
        BatchNormLayer whole = c.Layer(strategy);
        using Workers workers = new(bounds.Length - 1, r => c.Layer(strategy));
        for (int step = 0; step < 2; step++)
        {
            Matrix<double> x = c.Input.Multiply(step + 1), dy = c.Dy;
            Matrix<double> y = whole.Forward(x), dx = whole.Backward(dy);
            (Matrix<double> Y, Matrix<double> Dx)[] results = workers.Each<(Matrix<double> Y, Matrix<double> Dx)>(r => (layer, rows) =>
            {
                Matrix<double> yr = layer.Forward(rows(x));
                return (yr, layer.Backward(rows(dy)));
            }, bounds);

            for (int r = 0; r < workers.Count; r++)
            {
                BatchNormLayer layer = workers.Layers[r];
                int rows = bounds[r + 1] - bounds[r];
                AssertClose(y.SubMatrix(bounds[r], rows, 0, c.Features), results[r].Y);
                AssertClose(dx.SubMatrix(bounds[r], rows, 0, c.Features), results[r].Dx);
                AssertClose(whole.GammaGradient.ToColumnMatrix(), layer.GammaGradient.ToColumnMatrix());
                AssertClose(whole.BetaGradient.ToColumnMatrix(), layer.BetaGradient.ToColumnMatrix());
                AssertClose(whole.RunningMean.ToColumnMatrix(), layer.RunningMean.ToColumnMatrix());
                AssertClose(whole.RunningVariance.ToColumnMatrix(), layer.RunningVariance.ToColumnMatrix());
                Assert.Equal(whole.BatchesTracked, layer.BatchesTracked);

                // Every worker merges the same gathered values in the same order: the shared results are bit-identical.
                Assert.Equal(workers.Layers[0].GammaGradient, layer.GammaGradient);
                Assert.Equal(workers.Layers[0].RunningVariance, layer.RunningVariance);
            }
        }
    }

    [Theory]
    [InlineData("closed")]
    [InlineData("staged")]
    public void Workers_over_channels_of_positions_match_one_layer_on_the_concatenated_batch(string strategyName)
    {
        // Spatial batch norm: each worker's channel is its rows × S positions; the merged statistics count rows·S values.
        const int c = 3, s = 4;
        var random = new Random(17);
        Matrix<double> x = Matrix<double>.Build.Dense(7, c * s, (_, j) => (j / s) - 1 + random.NextDouble()), dy = Matrix<double>.Build.Dense(7, c * s, (_, _) => random.NextDouble() - 0.5);
        int[] bounds = [0, 3, 3, 7];
        BatchNormLayer whole = BatchNormLayer.Spatial(c, s, backward: Strategy(strategyName));
        using Workers workers = new(3, _ => BatchNormLayer.Spatial(c, s, backward: Strategy(strategyName)));
        Matrix<double> y = whole.Forward(x), dx = whole.Backward(dy);
        (Matrix<double> Y, Matrix<double> Dx)[] results = workers.Each<(Matrix<double> Y, Matrix<double> Dx)>(r => (layer, rows) =>
        {
            Matrix<double> yr = layer.Forward(rows(x));
            return (yr, layer.Backward(rows(dy)));
        }, bounds);
        for (int r = 0; r < 3; r++)
        {
            int rows = bounds[r + 1] - bounds[r];
            AssertClose(y.SubMatrix(bounds[r], rows, 0, c * s), results[r].Y);
            AssertClose(dx.SubMatrix(bounds[r], rows, 0, c * s), results[r].Dx);
            AssertClose(whole.GammaGradient.ToColumnMatrix(), workers.Layers[r].GammaGradient.ToColumnMatrix());
            AssertClose(whole.RunningVariance.ToColumnMatrix(), workers.Layers[r].RunningVariance.ToColumnMatrix());
        }

        // A NaN in one worker's channel: that worker names its own channel, the other names the worker and the channel.
        using Workers pair = new(2, _ => BatchNormLayer.Spatial(c, s, backward: Strategy(strategyName)));
        Matrix<double> bad = x.SubMatrix(0, 2, 0, c * s);
        bad[1, 5] = double.NaN;
        Exception?[] errors = pair.Each<Exception?>(r => (layer, _) => Record.Exception(() => layer.Forward(r == 0 ? bad : x.SubMatrix(2, 2, 0, c * s))));
        Assert.Contains("Channel 1 (columns 4–7) of input", errors[0]!.Message, StringComparison.Ordinal);
        Assert.StartsWith("Channel 1 (columns 4–7) of worker 0's batch cannot be normalized", errors[1]!.Message, StringComparison.Ordinal);

        // One row of 4 positions in all is enough; the merged count is values, not rows.
        using Workers one = new(2, _ => BatchNormLayer.Spatial(c, s, backward: Strategy(strategyName)));
        one.Run(r => (layer, rows) => layer.Forward(x.SubMatrix(0, r, 0, c * s)));
        Assert.All(one.Layers, l => Assert.Equal(1, l.BatchesTracked));
    }

    public static TheoryData<string, int> TwoRowSplits => new()
    {
        { "closed", 0 }, { "closed", 1 }, { "closed", 2 },
        { "staged", 0 }, { "staged", 1 }, { "staged", 2 },
    };

    [Theory]
    [MemberData(nameof(TwoRowSplits))]
    public void A_two_row_global_batch_is_as_exact_as_the_unsynchronized_layer(string strategyName, int rowsOnFirst)
    {
        // Columns of the hard two-row case: a spread far below ε, a huge offset, a tiny spread, a constant column.
        double[][] columns = [[3.25, -1.5], [1e8 + 0.5, 1e8 - 0.25], [1e-3, 2e-3], [5, 5]];
        double[][] dy = [[0.75, -0.5], [0.125, 0.375], [-1, 0.25], [0.5, -0.875]];
        double[] gamma = [1.5, -0.75, 2, 1], beta = [0.25, 0, -1, 0.5];
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnArrays(columns), g = Matrix<double>.Build.DenseOfColumnArrays(dy);
        int[] bounds = [0, rowsOnFirst, 2];
        using Workers workers = new(2, r =>
        {
            var layer = new BatchNormLayer(4, momentum: 1, backward: Strategy(strategyName));
            Vector<double>.Build.DenseOfArray(gamma).CopyTo(layer.Gamma);
            Vector<double>.Build.DenseOfArray(beta).CopyTo(layer.Beta);
            return layer;
        });
        (Matrix<double> Y, Matrix<double> Dx)[] results = workers.Each<(Matrix<double> Y, Matrix<double> Dx)>(r => (layer, rows) =>
        {
            Matrix<double> yr = layer.Forward(rows(x));
            return (yr, layer.Backward(rows(g)));
        }, bounds);

        Matrix<double> y = Stack(results.Select(t => t.Y)), dx = Stack(results.Select(t => t.Dx));
        for (int j = 0; j < columns.Length; j++)
        {
            var exact = new ExactColumn(columns[j], gamma[j], beta[j], 1e-5, dy[j]);
            foreach (BatchNormLayer layer in workers.Layers)
            {
                Ulps.AssertClose("μ", [exact.Mean], [layer.Cache!.Mean[j]]);
                Ulps.AssertClose("σ²", [exact.Variance], [layer.Cache.Variance[j]]);
                Ulps.AssertClose("running variance (momentum 1)", [exact.UnbiasedVariance], [layer.RunningVariance[j]]);
                Ulps.AssertClose("dγ", [exact.GammaGradient], [layer.GammaGradient[j]], unitOf: exact.SumAbsDyXHat);
            }

            Ulps.AssertClose("y", exact.Y, y.Column(j).ToArray());

            // As unsynchronized: the closed form is exact for two rows, the staged strategy follows the graph literally.
            if (strategyName == "closed")
            {
                Ulps.AssertClose("dx", exact.Dx, dx.Column(j).ToArray());
            }
        }
    }

    [Fact]
    public void A_worker_with_no_rows_takes_part_and_the_others_get_the_whole_batch()
    {
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(8, 3, seed: 2);
        var whole = new BatchNormLayer(3);
        Matrix<double> y = whole.Forward(x), dx = whole.Backward(dy);
        int[] bounds = [0, 0, 5, 8];
        using Workers workers = new(3, r => new BatchNormLayer(3));
        (Matrix<double> Y, Matrix<double> Dx)[] results = workers.Each<(Matrix<double> Y, Matrix<double> Dx)>(r => (layer, rows) =>
        {
            Matrix<double> yr = layer.Forward(rows(x));
            return (yr, layer.Backward(rows(dy)));
        }, bounds);

        Assert.Equal(0, results[0].Y.RowCount);
        Assert.Equal(0, results[0].Dx.RowCount);
        AssertClose(y, Stack(results.Select(t => t.Y)));
        AssertClose(dx, Stack(results.Select(t => t.Dx)));
        Assert.All(workers.Layers, l => Assert.Equal(whole.RunningVariance, l.RunningVariance));
        Assert.All(workers.Layers, l => AssertClose(whole.GammaGradient.ToColumnMatrix(), l.GammaGradient.ToColumnMatrix()));

        // A strategy run on its own cannot stand in for the exchange of a synchronized Backward.
        Assert.Throws<InvalidOperationException>(() => BackwardStrategy.ClosedForm.Backward(
            workers.Layers[1].Cache!, workers.Layers[1].Gamma, results[1].Dx, results[1].Dx.Clone(), workers.Layers[1].Gamma.Clone(), workers.Layers[1].Gamma.Clone()));
    }

    [Fact]
    public void A_bad_batch_on_one_worker_is_rejected_by_every_worker_and_changes_nothing()
    {
        using Workers workers = new(3, r => new BatchNormLayer(2));
        Matrix<double> Part(int r) => Matrix<double>.Build.Dense(3, 2, (i, j) => (r * 3) + i + (j * i * i));
        workers.Run(r => (layer, _) => layer.Forward(Part(r)));
        LayerSnapshot[] snapshots = workers.Layers.Select(l => new LayerSnapshot(l)).ToArray();

        Exception?[] errors = workers.Each<Exception?>(r => (layer, _) =>
        {
            Matrix<double> x = Part(r);
            if (r == 1)
            {
                x[2, 1] = double.NaN;
            }

            return Record.Exception(() => layer.Forward(x));
        });

        // The worker whose batch holds NaN names its column; the others name that worker, not their own input.
        Assert.Contains("Column 1 of input", Assert.IsType<ArgumentException>(errors[1]).Message);
        foreach (int r in new[] { 0, 2 })
        {
            string message = Assert.IsType<InvalidOperationException>(errors[r]).Message;
            Assert.Contains("Column 1 of worker 1's batch", message);
        }

        Assert.All(snapshots, s => s.AssertUnchanged());
    }

    [Fact]
    public void A_bad_output_gradient_on_one_worker_is_rejected_by_every_worker()
    {
        using Workers workers = new(2, r => new BatchNormLayer(2));
        Matrix<double> Part(int r) => Matrix<double>.Build.Dense(3, 2, (i, j) => (r * 3) + i + (j * i * i));
        workers.Run(r => (layer, _) => layer.Forward(Part(r)));
        LayerSnapshot[] snapshots = workers.Layers.Select(l => new LayerSnapshot(l)).ToArray();
        Exception?[] errors = workers.Each<Exception?>(r => (layer, _) =>
        {
            Matrix<double> dy = Matrix<double>.Build.Dense(3, 2, 0.5);
            dy[1, 0] = r == 0 ? double.PositiveInfinity : 0.25;
            return Record.Exception(() => layer.Backward(dy));
        });

        Assert.Contains("Column 0 of outputGradient", Assert.IsType<ArgumentException>(errors[0]).Message);
        Assert.Contains("Column 0 of worker 0's output gradient", Assert.IsType<InvalidOperationException>(errors[1]).Message);
        Assert.All(snapshots, s => s.AssertUnchanged());
    }

    [Fact]
    public void A_worker_that_rejects_its_arguments_still_takes_part_so_no_peer_waits()
    {
        using Workers workers = new(3, r => new BatchNormLayer(2));
        Matrix<double> Part(int r) => Matrix<double>.Build.Dense(2, 2, (i, j) => r + i - j);

        // Forward: worker 2 passes the wrong number of columns.
        Exception?[] errors = workers.Each<Exception?>(r => (layer, _) => Record.Exception(() => layer.Forward(r == 2 ? Matrix<double>.Build.Dense(2, 3) : Part(r))));
        Assert.Contains("2x3", Assert.IsType<ArgumentException>(errors[2]).Message);
        Assert.All(errors.Take(2), e => Assert.Contains("Worker 2 rejected its input", Assert.IsType<InvalidOperationException>(e).Message));
        Assert.All(workers.Layers, l => Assert.Null(l.Cache));

        // Backward: worker 0 passes an output gradient of the wrong shape after a good synchronized Forward.
        workers.Run(r => (layer, _) => layer.Forward(Part(r)));
        errors = workers.Each<Exception?>(r => (layer, _) => Record.Exception(() => layer.Backward(Matrix<double>.Build.Dense(r == 0 ? 3 : 2, 2, 1.0))));
        Assert.Contains("3x2", Assert.IsType<ArgumentException>(errors[0]).Message);
        Assert.All(errors.Skip(1), e => Assert.Contains("Worker 0 rejected its output gradient", Assert.IsType<InvalidOperationException>(e).Message));

        // And the workers are still in step: the next synchronized step succeeds on all of them.
        workers.Run(r => (layer, _) => layer.Backward(Matrix<double>.Build.Dense(2, 2, r)));
    }

    [Fact]
    public void Fewer_than_two_rows_across_all_workers_is_rejected_by_every_worker()
    {
        using Workers workers = new(2, r => new BatchNormLayer(2));
        Exception?[] errors = workers.Each<Exception?>(r => (layer, _) => Record.Exception(() => layer.Forward(Matrix<double>.Build.Dense(r, 2, 1.0))));
        Assert.All(errors, e => Assert.Contains("at least 2 rows across all workers, but there are 1", Assert.IsType<ArgumentException>(e).Message));
    }

    [Fact]
    public void Ghost_batches_and_synchronization_do_not_combine_in_either_order()
    {
        var ghost = new BatchNormLayer(2) { VirtualBatchSize = 2 };
        Assert.Throws<InvalidOperationException>(() => ghost.StatisticsExchange = new SingleWorker());
        var synchronized = new BatchNormLayer(2) { StatisticsExchange = new SingleWorker() };
        Assert.Throws<InvalidOperationException>(() => synchronized.VirtualBatchSize = 2);
        Assert.Null(synchronized.VirtualBatchSize);
        Assert.Null(ghost.StatisticsExchange);
    }

    [Theory]
    [InlineData(0, 0)]
    [InlineData(2, 2)]
    [InlineData(2, -1)]
    public void An_exchange_reporting_an_impossible_worker_count_or_rank_is_named(int workerCount, int rank)
    {
        var layer = new BatchNormLayer(2) { StatisticsExchange = new SingleWorker(workerCount, rank) };
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(3, 2, (i, j) => i * j)));
        Assert.Contains(nameof(SingleWorker), e.Message);
        Assert.Null(layer.Cache);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void Synchronized_steps_allocate_nothing_in_steady_state(string strategyName)
    {
        BackwardStrategy strategy = Strategy(strategyName);
        using Workers workers = new(2, r => new BatchNormLayer(16, backward: strategy));
        Matrix<double>[] x = [.. Enumerable.Range(0, 2).Select(r => Matrix<double>.Build.Dense(8 + r, 16, (i, j) => Math.Sin((i * 16) + j + r)))];
        Matrix<double>[] y = [.. x.Select(m => m.Clone())], dy = [.. x.Select(m => m.Map(Math.Cos))], dx = [.. x.Select(m => m.Clone())];
        long[] allocated = workers.Each<long>(r => (layer, _) =>
        {
            for (int step = 0; step < 3; step++)
            {
                layer.Forward(x[r], y[r]);
                layer.Backward(dy[r], dx[r]);
            }

            var exchange = (BarrierExchange)layer.StatisticsExchange!;
            long before = GC.GetAllocatedBytesForCurrentThread(), inExchange = exchange.AllocatedBytes;
            for (int step = 0; step < 20; step++)
            {
                layer.Forward(x[r], y[r]);
                layer.Backward(dy[r], dx[r]);
            }

            return GC.GetAllocatedBytesForCurrentThread() - before - (exchange.AllocatedBytes - inExchange);
        });

        // The layer's own part: what the exchange allocates is the exchange's.
        Assert.All(allocated, bytes => Assert.Equal(0, bytes));
    }

    /// <summary>
    /// Two workers over floats, each with half the rows, against one float layer over the whole batch: the merged
    /// statistics are the same to double's last digits, so y agrees to within one float unit, and dx and the parameter
    /// gradients (whose sums every worker adds up) to within float's rounding of x̂. Both strategies: the closed form
    /// reads floats, the staged one gets each worker's step widened, with its sums exchanged in double.
    /// </summary>
    [Theory]
    [InlineData("closed")]
    [InlineData("staged")]
    public void Synchronized_workers_over_floats_match_one_float_layer_over_the_whole_batch(string strategy)
    {
        var random = new Random(11);
        Matrix<float> x = Matrix<float>.Build.Dense(10, 3, (_, j) => (float)((100 * j) + random.NextDouble())), dy = Matrix<float>.Build.Dense(10, 3, (_, _) => (float)(random.NextDouble() - 0.5));
        var whole = new BatchNormLayer(3, backward: ContractTests.Strategy(strategy));
        Matrix<float> y = whole.Forward(x), dx = whole.Backward(dy);
        int[] bounds = [0, 4, 10];
        using var workers = new Workers(2, _ => new BatchNormLayer(3, backward: ContractTests.Strategy(strategy)));
        (Matrix<float> Y, Matrix<float> Dx, double[] DGamma)[] parts = workers.Each<(Matrix<float>, Matrix<float>, double[])>(r => (layer, _) =>
        {
            Matrix<float> mine = x.SubMatrix(bounds[r], bounds[r + 1] - bounds[r], 0, 3), myDy = dy.SubMatrix(bounds[r], bounds[r + 1] - bounds[r], 0, 3);
            Matrix<float> myY = layer.Forward(mine);
            Assert.True(layer.Cache!.Synchronized && layer.Cache.SinglePrecision);
            return (myY, layer.Backward(myDy), layer.GammaGradient.ToArray());
        });
        for (int r = 0; r < 2; r++)
        {
            for (int i = bounds[r]; i < bounds[r + 1]; i++)
            {
                for (int j = 0; j < 3; j++)
                {
                    float expected = y[i, j], actual = parts[r].Y[i - bounds[r], j];
                    Assert.True(actual == expected || actual == MathF.BitIncrement(expected) || actual == MathF.BitDecrement(expected), $"y[{i}, {j}]");
                    Assert.Equal(dx[i, j], parts[r].Dx[i - bounds[r], j], 1e-5f);
                }
            }

            Assert.Equal(whole.GammaGradient.ToArray(), parts[r].DGamma, (a, b) => Math.Abs(a - b) < 1e-5);
        }
    }

    private static Matrix<double> Stack(System.Collections.Generic.IEnumerable<Matrix<double>> parts)
        => parts.Where(m => m.RowCount > 0).Aggregate((upper, lower) => upper.Stack(lower));

    private static void AssertClose(Matrix<double> expected, Matrix<double> actual)
    {
        Assert.Equal(expected.RowCount, actual.RowCount);
        if (expected.RowCount == 0)
        {
            return;    // a worker without rows: MathNet's norms are undefined on an empty matrix
        }

        double scale = 1 + expected.Enumerate().DefaultIfEmpty().Max(Math.Abs);
        Assert.True((expected - actual).InfinityNorm() <= 1e-12 * scale, $"differ by {(expected - actual).InfinityNorm():E2} at scale {scale:E2}");
    }

    /// <summary>K layers synchronized through a barrier exchange, each driven by its own thread.</summary>
    private sealed class Workers : IDisposable
    {
        private readonly double[][] _slots;
        private readonly Barrier _barrier;

        public Workers(int count, Func<int, BatchNormLayer> create)
        {
            Count = count;
            _slots = [.. Enumerable.Range(0, count).Select(_ => new double[4096])];
            _barrier = new Barrier(count);
            Layers = [.. Enumerable.Range(0, count).Select(r =>
            {
                BatchNormLayer layer = create(r);
                layer.StatisticsExchange = new BarrierExchange(r, _slots, _barrier);
                return layer;
            })];
        }

        public int Count { get; }

        public BatchNormLayer[] Layers { get; }

        public void Dispose() => _barrier.Dispose();

        /// <summary>Runs one function per worker on threads of its own, each with its layer and a slicer of its rows; fails rather than hang.</summary>
        public T[] Each<T>(Func<int, Func<BatchNormLayer, Func<Matrix<double>, Matrix<double>>, T>> work, int[]? bounds = null)
        {
            var results = new T[Count];
            Task[] tasks = [.. Enumerable.Range(0, Count).Select(r => Task.Factory.StartNew(
                () =>
                {
                    Matrix<double> Rows(Matrix<double> m) => bounds is null ? m : m.SubMatrix(bounds[r], bounds[r + 1] - bounds[r], 0, m.ColumnCount);
                    results[r] = work(r)(Layers[r], Rows);
                },
                TaskCreationOptions.LongRunning))];
            Assert.True(Task.WaitAll(tasks, TimeSpan.FromSeconds(30)), "a worker is still waiting in the exchange");
            return results;
        }

        public void Run(Func<int, Action<BatchNormLayer, Func<Matrix<double>, Matrix<double>>>> work)
            => Each<int>(r => (layer, rows) =>
            {
                work(r)(layer, rows);
                return 0;
            });
    }

    /// <summary>
    /// A real all-gather between threads: each worker posts its values into its own preallocated slot, then all wait at a
    /// barrier; a worker that waits more than 10 s throws rather than hang the test run.
    /// </summary>
    private sealed class BarrierExchange(int rank, double[][] slots, Barrier barrier) : IStatisticsExchange
    {
        public int WorkerCount => slots.Length;

        public int Rank => rank;

        /// <summary>Gets the bytes this worker's thread allocated inside the exchange (the barrier may, when it first blocks).</summary>
        public long AllocatedBytes { get; private set; }

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            local.CopyTo(slots[rank]);
            Wait();
            for (int r = 0; r < slots.Length; r++)
            {
                slots[r].AsSpan(0, local.Length).CopyTo(gathered.Slice(r * local.Length, local.Length));
            }

            Wait();   // nobody posts the next call's values before everyone has read these
            AllocatedBytes += GC.GetAllocatedBytesForCurrentThread() - before;
        }

        private void Wait()
        {
            if (!barrier.SignalAndWait(TimeSpan.FromSeconds(10)))
            {
                throw new TimeoutException($"worker {rank} waited 10 s for its peers");
            }
        }
    }

    /// <summary>An exchange for one worker, which may report a worker count and rank of its own choosing.</summary>
    private sealed class SingleWorker(int workerCount = 1, int rank = 0) : IStatisticsExchange
    {
        public int WorkerCount => workerCount;

        public int Rank => rank;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered) => local.CopyTo(gathered);
    }
}
