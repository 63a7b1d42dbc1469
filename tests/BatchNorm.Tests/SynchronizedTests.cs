using System;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using FsCheck.Fluent;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Statistics synchronized across K in-process workers, against one layer on the concatenated batch.</summary>
public class SynchronizedTests
{
    /// <summary>A real all-gather between threads: each worker posts its values, then all wait at a barrier.</summary>
    private sealed class BarrierExchange(int rank, double[][] slots, Barrier barrier) : IStatisticsExchange
    {
        public int WorkerCount => slots.Length;

        public int Rank => rank;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
        {
            slots[rank] = local.ToArray();
            barrier.SignalAndWait();
            for (int r = 0; r < slots.Length; r++)
            {
                slots[r].CopyTo(gathered.Slice(r * local.Length, local.Length));
            }

            barrier.SignalAndWait();   // nobody posts the next call's values before everyone has read these
        }
    }

    public static TheoryData<string> Strategies => new() { "staged", "closed" };

    [Theory]
    [MemberData(nameof(Strategies))]
    public void K_workers_on_threads_match_one_layer_on_the_concatenated_batch(string strategyName)
    {
        BackwardStrategy strategy = strategyName == "staged" ? BackwardStrategy.Staged : BackwardStrategy.ClosedForm;
        var cases = Arb.From(
            from workers in Gen.Choose(2, 4)
            from c in BatchCase.Arbitrary(minRows: 8, maxRows: 24, maxFeatures: 4).Generator
            from cuts in Gen.Choose(1, c.Rows - 1).ArrayOf(workers - 1)
            select (c, cuts.Distinct().Order().ToArray()));
        Properties.Check(cases, t =>
        {
            (BatchCase c, int[] cuts) = t;
            int[] bounds = [0, .. cuts, c.Rows];
            int workers = bounds.Length - 1;
            BatchNormLayer whole = c.Layer(strategy);
            var slots = new double[workers][];
            using var barrier = new Barrier(workers);
            BatchNormLayer[] layers = Enumerable.Range(0, workers).Select(r =>
            {
                BatchNormLayer layer = c.Layer(strategy);
                layer.StatisticsExchange = new BarrierExchange(r, slots, barrier);
                return layer;
            }).ToArray();

            for (int step = 0; step < 2; step++)
            {
                Matrix<double> x = c.Input.Multiply(step + 1), dy = c.Dy;
                Matrix<double> y = whole.Forward(x), dx = whole.Backward(dy);
                var results = new (Matrix<double> Y, Matrix<double> Dx)[workers];
                Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, r =>
                {
                    int rows = bounds[r + 1] - bounds[r];
                    Matrix<double> yr = layers[r].Forward(x.SubMatrix(bounds[r], rows, 0, c.Features));
                    results[r] = (yr, layers[r].Backward(dy.SubMatrix(bounds[r], rows, 0, c.Features)));
                });

                for (int r = 0; r < workers; r++)
                {
                    int rows = bounds[r + 1] - bounds[r];
                    AssertClose(y.SubMatrix(bounds[r], rows, 0, c.Features), results[r].Y);
                    AssertClose(dx.SubMatrix(bounds[r], rows, 0, c.Features), results[r].Dx);
                    AssertClose(whole.GammaGradient.ToColumnMatrix(), layers[r].GammaGradient.ToColumnMatrix());
                    AssertClose(whole.BetaGradient.ToColumnMatrix(), layers[r].BetaGradient.ToColumnMatrix());
                    AssertClose(whole.RunningMean.ToColumnMatrix(), layers[r].RunningMean.ToColumnMatrix());
                    AssertClose(whole.RunningVariance.ToColumnMatrix(), layers[r].RunningVariance.ToColumnMatrix());
                    Assert.Equal(whole.BatchesTracked, layers[r].BatchesTracked);
                }
            }
        });
    }

    [Fact]
    public void A_bad_batch_on_one_worker_is_rejected_by_every_worker_and_changes_nothing()
    {
        const int workers = 3;
        var slots = new double[workers][];
        using var barrier = new Barrier(workers);
        BatchNormLayer[] layers = Enumerable.Range(0, workers).Select(r => new BatchNormLayer(2) { StatisticsExchange = new BarrierExchange(r, slots, barrier) }).ToArray();
        Matrix<double> Part(int r) => Matrix<double>.Build.Dense(3, 2, (i, j) => (r * 3) + i + (j * i * i));
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, r => layers[r].Forward(Part(r)));
        LayerSnapshot[] snapshots = layers.Select(l => new LayerSnapshot(l)).ToArray();

        var errors = new Exception?[workers];
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, r =>
        {
            Matrix<double> x = Part(r);
            if (r == 1)
            {
                x[2, 1] = double.NaN;
            }

            errors[r] = Record.Exception(() => layers[r].Forward(x));
        });

        Assert.All(errors, e => Assert.Contains("Column 1", Assert.IsType<ArgumentException>(e).Message));
        Assert.All(snapshots, s => s.AssertUnchanged());
    }

    [Fact]
    public void Ghost_batches_and_synchronization_do_not_combine()
    {
        var layer = new BatchNormLayer(2) { VirtualBatchSize = 2 };
        Assert.Throws<InvalidOperationException>(() => layer.StatisticsExchange = new BarrierExchange(0, new double[1][], new Barrier(1)));
    }

    private static void AssertClose(Matrix<double> expected, Matrix<double> actual)
    {
        double scale = 1 + expected.Enumerate().Max(Math.Abs);
        Assert.True((expected - actual).InfinityNorm() <= 1e-12 * scale, $"differ by {(expected - actual).InfinityNorm():E2} at scale {scale:E2}");
    }
}
