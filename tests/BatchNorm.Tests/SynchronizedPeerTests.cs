using System;
using System.Collections.Generic;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// One synchronized worker, on the calling thread, against peers whose gathered values are scripted: the merge of
/// their moments and sums worked out by hand, what the worker sends, and every way a peer or the exchange can fail.
/// </summary>
public class SynchronizedPeerTests
{
    private const double Epsilon = 0.0625;

    private static readonly int[] Buffer = [0];
    private static readonly int Past = Buffer.Length;

    [Fact]
    public void The_moments_of_every_worker_merge_into_the_statistics_of_the_whole_batch()
    {
        // Worker 0 has no rows. This worker (rank 1) has feature 0 = {1, 3} and feature 1 = {−4, 0}; worker 2 has
        // {10, 11} (mean 10.5, sum of squared deviations 0.5) and {−2, −2}. Over the four rows: feature 0 has
        // μ = 6.25 and M = 2 + 0.5 + 2·4.25² + 2·4.25² = 74.75, so σ² = 18.6875; feature 1 has μ = −2 and σ² = 8/4 = 2.
        var exchange = new ScriptedExchange(3, rank: 1)
        {
            Peers = (call, r) => r == 0 ? Payload(0, 0, 0, 0, 0, 0, 0, 0) : Payload(2, 10, 0.5, 0.5, 2, -2, 0, 0),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 0.5, features: 2);
        Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -4 }, { 3, 0 } }));

        double s0 = Math.Sqrt(18.6875 + Epsilon), s1 = Math.Sqrt(2 + Epsilon);
        Assert.Equal((1 - 6.25) / s0, y[0, 0], 1e-15);
        Assert.Equal((3 - 6.25) / s0, y[1, 0], 1e-15);
        Assert.Equal(-2 / s1, y[0, 1], 1e-15);
        Assert.Equal(2 / s1, y[1, 1], 1e-15);
        Assert.Equal([6.25, -2], layer.Cache!.Mean.ToArray());
        Assert.Equal(18.6875, layer.Cache.Variance[0], 1e-14);
        Assert.Equal(2, layer.Cache.Variance[1], 1e-15);
        Assert.Equal([0.5 * 6.25, 0.5 * -2], layer.RunningMean.ToArray());
        Assert.Equal(0.5 + (0.5 * 18.6875 * 4 / 3), layer.RunningVariance[0], 1e-14);
        Assert.Equal(0.5 + (0.5 * 2 * 4 / 3), layer.RunningVariance[1], 1e-14);
        Assert.Equal(1, layer.BatchesTracked);

        // What this worker sent: per feature its count, its mean in two parts and its sum of squared deviations, then
        // its status (accepted).
        double[] sent = exchange.Sent.Single();
        Assert.Equal(9, sent.Length);
        Assert.Equal([2.0, 2, 2, 8], new[] { sent[0], sent[1] + sent[2], sent[3], sent[7] });
        Assert.Equal(-2, sent[5] + sent[6]);
        Assert.Equal(2, sent[4]);
        Assert.Equal(0, sent[8]);
    }

    [Fact]
    public void The_backward_sums_of_every_worker_add_up_before_dx()
    {
        // Feature 0 over four rows {1, 3 | 10, 11}: this worker holds the first two, with dy = (0.5, −1); the peer's
        // rows have dy = (0.25, 1). The closed form's sums are Σdy·x̂, Σdy and (for two values only) dy₁ − dy₂.
        double mean = 6.25, inverseStd = 1 / Math.Sqrt(18.6875 + Epsilon);
        double[] rows = [1, 3, 10, 11], dy = [0.5, -1, 0.25, 1];
        double[] xHat = rows.Select(v => (v - mean) * inverseStd).ToArray();
        double peerDyXHat = (0.25 * xHat[2]) + (1 * xHat[3]);
        var exchange = new ScriptedExchange(2, rank: 0)
        {
            Peers = (call, r) => call == 0 ? Payload(2, 10, 0.5, 0.5) : Payload(peerDyXHat, 1.25, 0),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1);
        layer.Gamma[0] = 1.5;
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 3 }));
        Matrix<double> dx = Matrix<double>.Build.Dense(2, 1);
        layer.Backward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 0.5, -1 }), dx);

        double sumDyXHat = dy.Zip(xHat, (a, b) => a * b).Sum(), sumDy = dy.Sum();
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(1.5 * inverseStd * (dy[i] - (sumDy / 4) - (xHat[i] * sumDyXHat / 4)), dx[i, 0], 1e-15);
        }

        Assert.Equal(sumDyXHat, layer.GammaGradient[0], 1e-15);
        Assert.Equal(sumDy, layer.BetaGradient[0]);

        double[] sent = exchange.Sent[1];
        Assert.Equal(4, sent.Length);
        Assert.Equal((0.5 * xHat[0]) - xHat[1], sent[0], 1e-15);
        Assert.Equal(-0.5, sent[1]);
        Assert.Equal(0, sent[2]);
        Assert.Equal(0, sent[3]);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void With_one_row_on_each_of_two_workers_each_knows_its_place_in_the_pair(int rank)
    {
        // Two values: dx₁ = −dx₂ = γ·ε·(σ² + ε)^(−3/2)·(dy₁ − dy₂)/2. Rows {1, 3}: σ² = 1; dy = (0.75, −0.5).
        double[] rows = [1, 3], dy = [0.75, -0.5];
        double xHat = 1 / Math.Sqrt(1 + Epsilon);
        var exchange = new ScriptedExchange(2, rank)
        {
            Peers = (call, r) => call == 0
                ? Payload(1, rows[r], 0, 0)
                : Payload((r == 0 ? -xHat : xHat) * dy[r], dy[r], r == 0 ? dy[0] : -dy[1]),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 1);
        layer.Gamma[0] = 2;
        layer.Forward(Matrix<double>.Build.Dense(1, 1, rows[rank]));
        Assert.Equal(rank == 0 ? -xHat : xHat, layer.Cache!.NormalizedInput[0], 1e-15);
        Assert.Equal(2, layer.RunningVariance[0]);
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.Dense(1, 1, dy[rank]));

        double first = 2 * (Epsilon / Math.Pow(1 + Epsilon, 1.5)) * ((dy[0] - dy[1]) / 2);
        Assert.Equal(rank == 0 ? first : -first, dx[0, 0], 1e-15);
        Assert.Equal(xHat * (dy[1] - dy[0]), layer.GammaGradient[0], 1e-15);
        Assert.Equal(dy[0] + dy[1], layer.BetaGradient[0]);

        // This worker's third sum is its dy signed by its place: + for the first row of the pair, − for the second.
        Assert.Equal(rank == 0 ? dy[0] : -dy[1], exchange.Sent[1][2]);
    }

    [Fact]
    public void A_strategy_sees_the_whole_count_and_where_this_worker_s_rows_start()
    {
        // Workers 0 and 1 hold 3 and 2 rows, this one (rank 2) holds 2 and worker 3 holds 4: 11 rows, these from index 5.
        int[] rows = [3, 2, 2, 4];
        var exchange = new ScriptedExchange(4, rank: 2)
        {
            Peers = (call, r) => call == 0 ? Payload(rows[r], 1, 0, rows[r]) : Payload(0.5, 0.25, 1, 2, 4),
        };
        var recording = new RecordingStrategy();
        BatchNormLayer layer = Layer(exchange, momentum: 0.1);
        layer.BackwardStrategy = recording;
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 3 }));
        layer.Backward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, -1 }));
        Assert.Equal([(11, 5, 2), (11, 5, 2)], recording.Seen);

        // Every slot is added up over the workers, the strategy's own as the first two: this worker sent Σdy·x̂, Σdy = 0
        // and zeros, each of the three peers 0.5, 0.25, 1, 2 and 4.
        Assert.Equal(0, recording.Local[1]);
        Assert.Equal([(3 * 0.5) + recording.Local[0], 3 * 0.25, 3, 6, 12], recording.Sums);
    }

    [Fact]
    public void A_bad_first_column_on_this_worker_is_its_own_fault_forward_and_backward()
    {
        var exchange = new ScriptedExchange(2, rank: 1)
        {
            Peers = (call, _) => call < 2 ? Payload(2, 1, 0, 0.5, 2, 1, 0, 0.5) : Payload(0.5, 1, 0, 0.5, 1, 0),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1, features: 2);
        var forward = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { double.NaN, 2 }, { 3, 5 } })));
        Assert.StartsWith("Column 0 of input cannot be normalized", forward.Message, StringComparison.Ordinal);

        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 5 } }));
        var backward = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { double.PositiveInfinity, 2 }, { 3, 5 } })));
        Assert.Equal("outputGradient", backward.ParamName);
        Assert.StartsWith("Column 0 of outputGradient cannot be back-propagated", backward.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_merge_centres_on_the_first_worker_with_rows_so_a_large_offset_keeps_its_digits()
    {
        // Around 1e8 the doubles are 1.5e-8 apart, and the mean, 1e8 + 0.225, is not one of them: a merge centred on 0
        // would round it and lose about eight digits of x − μ. Worker 0 has no rows; worker 2 sends the exact two-part
        // mean of its rows a, b: centre a, correction (b − a)/2, and squared deviations (b − a)²/2.
        double a = 1e8 + 0.3, b = 1e8 - 0.2;
        double[] local = [1e8 + 0.1, 1e8 + 0.7];
        double[] dy = [0.25, -0.5, 1, 0.125];
        var exchange = new ScriptedExchange(3, rank: 1)
        {
            Peers = (call, r) => r == 0 ? Payload(0, 0, 0, 0) : Payload(2, a, (b - a) / 2, (b - a) * (b - a) / 2),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 1);
        Matrix<double> y = layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(local));
        var exact = new ExactColumn([.. local, a, b], 1, 0, Epsilon, dy);
        Ulps.AssertClose("μ", [exact.Mean], [layer.Cache!.Mean[0]]);
        Ulps.AssertClose("σ²", [exact.Variance], [layer.Cache.Variance[0]]);
        Ulps.AssertClose("running variance", [exact.UnbiasedVariance], [layer.RunningVariance[0]]);
        Ulps.AssertClose("y", exact.Y[..2], y.Column(0).ToArray(), unitOf: exact.Y.Max(Math.Abs));
    }

    [Fact]
    public void Exactly_two_rows_across_the_workers_are_enough_and_one_is_not()
    {
        BatchNormLayer two = Layer(new ScriptedExchange(2, rank: 1) { Peers = (_, _) => Payload(1, 5, 0, 0) }, momentum: 0.1);
        Assert.Equal(-Math.Sqrt(4 / (4 + Epsilon)), two.Forward(Matrix<double>.Build.Dense(1, 1, 1.0))[0, 0], 1e-15);

        BatchNormLayer one = Layer(new ScriptedExchange(2, rank: 1) { Peers = (_, _) => Payload(0, 0, 0, 0) }, momentum: 0.1);
        var e = Assert.Throws<ArgumentException>(() => one.Forward(Matrix<double>.Build.Dense(1, 1, 1.0)));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith("Training needs at least 2 rows across all workers, but there are 1.", e.Message, StringComparison.Ordinal);
        Assert.Null(one.Cache);
        Assert.Equal(0, one.BatchesTracked);
    }

    [Fact]
    public void A_merged_variance_that_overflows_is_rejected_although_every_worker_is_finite()
    {
        // Each worker's rows are constant, so its own moments are finite; the squared distance between the workers'
        // means, 4e600, is not.
        var exchange = new ScriptedExchange(2, rank: 0) { Peers = (_, _) => Payload(2, 1e300, 0, 0) };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 1, -1e300)));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith("Column 0 of input cannot be normalized", e.Message, StringComparison.Ordinal);
        Assert.Null(layer.Cache);
        Assert.Equal([1.0], layer.RunningVariance.ToArray());
    }

    [Theory]
    [InlineData(0, 0)]
    [InlineData(1, 1)]
    [InlineData(2, 3)]
    public void A_peer_whose_moments_are_not_finite_is_named_by_rank_and_column(int feature, int slot)
    {
        // Every slot of the moments counts, in any column.
        double[] values = [2, 1, 0, 0.5, 2, 1, 0, 0.5, 2, 1, 0, 0.5];
        values[(4 * feature) + slot] = double.NaN;
        var exchange = new ScriptedExchange(3, rank: 0) { Peers = (_, r) => r == 2 ? Payload(values) : Payload(2, 1, 0, 0.5, 2, 1, 0, 0.5, 2, 1, 0, 0.5) };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1, features: 3);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 3, (i, j) => i + j)));
        Assert.Equal($"Column {feature} of worker 2's batch cannot be normalized: it holds NaN or infinity, or values so large that its sums overflow. The synchronized step fails on every worker.", e.Message);
        Assert.Null(layer.Cache);
    }

    [Fact]
    public void A_peer_whose_parameter_sums_are_not_finite_is_named_but_a_strategy_sum_is_the_strategy_s_business()
    {
        double[] forward = [2, 10, 0.5, 0.5, 2, 10, 0.5, 0.5];
        var exchange = new ScriptedExchange(2, rank: 1)
        {
            Peers = (call, _) => call == 0 ? Payload(forward) : call == 1 ? Payload(0.5, 1, 0, 0.25, double.PositiveInfinity, 0) : Payload(0.5, 1, double.NaN, 0.25, -1, double.NaN),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1, features: 2);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 5 } }));
        double[] gammaGradient = layer.GammaGradient.ToArray();
        var e = Assert.Throws<InvalidOperationException>(() => layer.Backward(Matrix<double>.Build.Dense(2, 2, 0.5)));
        Assert.Equal("Column 1 of worker 0's output gradient cannot be back-propagated: it holds NaN or infinity, or values so large that its sums overflow. The synchronized step fails on every worker.", e.Message);
        Assert.Equal(gammaGradient, layer.GammaGradient.ToArray());

        // The closed form reads its third sum for two-value segments only; with four rows a NaN there is never used.
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.Dense(2, 2, 0.5));
        Assert.All(dx.Enumerate(), v => Assert.True(double.IsFinite(v)));
    }

    [Fact]
    public void A_peer_that_rejected_its_step_fails_this_one_and_a_worker_that_rejected_its_own_reports_its_own_reason()
    {
        var exchange = new ScriptedExchange(3, rank: 0) { Peers = (_, r) => r == 1 ? Payload(2, 1, 0, 0.5) : Rejected(4) };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 1, (i, _) => i)));
        Assert.Equal("Worker 2 rejected its input in this synchronized step, so the step fails on every worker; the exception on worker 2 says why.", e.Message);
        Assert.Null(layer.Cache);
        Assert.Equal(0, layer.BatchesTracked);

        // Rejecting its own input, this worker sends its status with zeros in place of moments, and throws its own reason
        // even though its peers rejected theirs too.
        var wrong = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 3)));
        Assert.Equal("input", wrong.ParamName);
        Assert.Equal([0.0, 0, 0, 0, 1], exchange.Sent[^1]);
        Assert.Equal(2, exchange.Sent.Count);

        // In inference nothing is exchanged, so nothing is sent for a rejected input either.
        layer.IsTraining = false;
        Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 3)));
        Assert.Equal(2, exchange.Sent.Count);
    }

    [Theory]
    [InlineData("closed", 3)]
    [InlineData("staged", 5)]
    public void A_worker_that_rejects_its_output_gradient_sends_its_status_with_one_slot_per_sum(string strategy, int sums)
    {
        var exchange = new ScriptedExchange(2, rank: 1)
        {
            Peers = (call, _) => call == 0 ? Payload(2, 1, 0, 0.5, 2, 1, 0, 0.5) : Rejected(2 * sums),
        };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1, features: 2);
        layer.BackwardStrategy = ContractTests.Strategy(strategy);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 5 } }));
        Assert.Equal("outputGradient", Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(3, 2))).ParamName);
        Assert.Equal([.. Enumerable.Repeat(0.0, 2 * sums), 1.0], exchange.Sent[^1]);

        // With a good output gradient, a peer that rejected its own fails this worker, naming it.
        var e = Assert.Throws<InvalidOperationException>(() => layer.Backward(Matrix<double>.Build.Dense(2, 2, 1.0)));
        Assert.Equal("Worker 0 rejected its output gradient in this synchronized step, so the step fails on every worker; the exception on worker 0 says why.", e.Message);

        // An unsynchronized cache needs no exchange: inference steps of the same layer send nothing.
        layer.IsTraining = false;
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 5 } }));
        int sent = exchange.Sent.Count;
        Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(3, 2)));
        layer.Backward(Matrix<double>.Build.Dense(2, 2, 1.0));
        Assert.Equal(sent, exchange.Sent.Count);
    }

    public static TheoryData<string> WrappedFailures => ["index", "argument", "overflow", "cast", "null"];

    [Theory]
    [MemberData(nameof(WrappedFailures))]
    public void An_exchange_that_fails_while_gathering_is_named_with_what_it_was_asked(string kind)
    {
        // The kinds of failure a faulty all-gather raises by itself: an index past its buffer, a missing buffer, bad lengths.
        Action failure = kind switch
        {
            "index" => () => _ = Buffer[Past],
            "argument" => () => throw new ArgumentException("boom"),
            "overflow" => () => throw new OverflowException("boom"),
            "cast" => () => throw new InvalidCastException("boom"),
            _ => () => _ = Nothing()!.Length,
        };
        BatchNormLayer layer = Layer(new ScriptedExchange(2, rank: 0) { Failure = failure }, momentum: 0.1, features: 2);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 2, (i, j) => i + j)));
        Assert.NotNull(e.InnerException);
        Assert.Equal("The statistics exchange ScriptedExchange failed to gather 9 values from each of the 2 workers it reports (into 18): " + e.InnerException.Message, e.Message);
        Assert.Null(layer.Cache);
    }

    [Fact]
    public void Any_other_failure_of_the_exchange_passes_through_as_it_is()
    {
        var failure = new TimeoutException("the peers did not answer");
        BatchNormLayer layer = Layer(new ScriptedExchange(2, rank: 0) { Failure = () => throw failure }, momentum: 0.1);
        Assert.Same(failure, Assert.Throws<TimeoutException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 1, (i, _) => i))));
        Assert.Null(layer.Cache);
    }

    [Theory]
    [InlineData(1, 0, true)]
    [InlineData(3, 2, true)]
    [InlineData(0, 0, false)]
    [InlineData(-1, 0, false)]
    [InlineData(3, 3, false)]
    [InlineData(3, -1, false)]
    public void The_worker_count_and_rank_are_taken_only_when_they_make_sense(int workers, int rank, bool valid)
    {
        var exchange = new ScriptedExchange(workers, rank) { Peers = (_, _) => Payload(2, 1, 0, 0.5) };
        BatchNormLayer layer = Layer(exchange, momentum: 0.1);
        Matrix<double> x = Matrix<double>.Build.Dense(2, 1, (i, _) => i);
        if (valid)
        {
            layer.Forward(x);
            Assert.Equal(1, layer.BatchesTracked);
            return;
        }

        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(x));
        Assert.Equal($"The statistics exchange ScriptedExchange reports worker count {workers} and rank {rank}; it needs at least 1 worker and a rank in [0, count).", e.Message);
        Assert.Empty(exchange.Sent);
    }

    [Fact]
    public void A_worker_count_whose_gathered_values_do_not_fit_in_an_array_is_refused_before_gathering()
    {
        var exchange = new ScriptedExchange(int.MaxValue / 2, rank: 0);
        BatchNormLayer layer = Layer(exchange, momentum: 0.1, features: 2);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Forward(Matrix<double>.Build.Dense(2, 2)));
        Assert.Equal($"The statistics exchange ScriptedExchange reports {int.MaxValue / 2} workers: {int.MaxValue / 2} × 9 gathered values do not fit in an array.", e.Message);
        Assert.Empty(exchange.Sent);
    }

    [Fact]
    public void Clearing_the_exchange_after_a_synchronized_forward_makes_its_backward_fail_clearly()
    {
        BatchNormLayer layer = Layer(new ScriptedExchange(2, rank: 0) { Peers = (_, _) => Payload(2, 1, 0, 0.5) }, momentum: 0.1);
        layer.Forward(Matrix<double>.Build.Dense(2, 1, (i, _) => i));
        layer.StatisticsExchange = null;
        Assert.Null(layer.StatisticsExchange);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Backward(Matrix<double>.Build.Dense(2, 1, 1.0)));
        Assert.Equal("The last Forward was synchronized across workers, so its Backward needs StatisticsExchange, which has been cleared since.", e.Message);

        // Unsynchronized again, the layer needs two rows of its own.
        Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(1, 1)));
        layer.VirtualBatchSize = 2;
        Assert.Equal(2, layer.VirtualBatchSize);
    }

    private static string? Nothing() => null;

    private static BatchNormLayer Layer(ScriptedExchange exchange, double momentum, int features = 1)
        => new(features, Epsilon, momentum) { StatisticsExchange = exchange };

    /// <summary>A peer's gathered values followed by its status, accepted.</summary>
    private static double[] Payload(params double[] values) => [.. values, 0];

    /// <summary>A peer that rejected its step: zeros and the status 1.</summary>
    private static double[] Rejected(int length) => [.. new double[length], 1];

    /// <summary>The textbook strategy, recording what each segment tells it and the sums it is given.</summary>
    private sealed class RecordingStrategy : BackwardStrategy
    {
        private readonly TextbookBackward _inner = new();

        public override string Name => "recording";

        public override int SumCount => 5;

        public List<(int Count, int Offset, int Length)> Seen { get; } = [];

        public double[] Local { get; } = new double[5];

        public double[] Sums { get; } = new double[5];

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
        {
            Seen.Add((segment.Count, segment.Offset, segment.Length));
            _inner.SegmentSums(segment, sums[..2], inputGradient);
            sums[2] = sums[3] = sums[4] = 0;
            sums.CopyTo(Local);
        }

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
        {
            Seen.Add((segment.Count, segment.Offset, segment.Length));
            sums.CopyTo(Sums);
            _inner.SegmentInputGradient(segment, sums[..2], inputGradient);
        }
    }

    /// <summary>An exchange on the calling thread: this worker's values go to its own slot, each peer's are scripted per call.</summary>
    private sealed class ScriptedExchange(int workers, int rank) : IStatisticsExchange
    {
        public int WorkerCount => workers;

        public int Rank => rank;

        public Func<int, int, double[]> Peers { get; init; } = (_, _) => throw new InvalidOperationException("no peers scripted");

        public Action? Failure { get; init; }

        public List<double[]> Sent { get; } = [];

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
        {
            Sent.Add(local.ToArray());
            Failure?.Invoke();

            Assert.Equal(workers * local.Length, gathered.Length);
            for (int r = 0; r < workers; r++)
            {
                ReadOnlySpan<double> values = r == rank ? local : Peers(Sent.Count - 1, r);
                Assert.Equal(local.Length, values.Length);
                values.CopyTo(gathered.Slice(r * local.Length, local.Length));
            }
        }
    }
}
