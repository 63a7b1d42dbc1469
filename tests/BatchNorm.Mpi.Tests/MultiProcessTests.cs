using System;
using System.Globalization;
using System.Linq;
using BatchNorm.Mpi.Worker;

namespace BatchNorm.Mpi.Tests;

/// <summary>
/// Synchronized batch norm across real processes: the worker program under <c>mpirun -n 3</c> and <c>-n 2</c>, each rank
/// training a layer on its own rows through <see cref="MpiStatisticsExchange"/>, against one unsynchronized layer on the
/// concatenated batch and against the same workers on threads.
/// </summary>
[Collection("mpirun")]
public class MultiProcessTests
{
    private const int Steps = 3, Seed = 1;

    /// <summary>Ranks and row bounds: uneven shards of 1, 4 and 8 rows; a rank with no rows; 7 and 13 rows on two ranks.</summary>
    public static TheoryData<int, string, string> Training => new()
    {
        { 3, "0,1,5,13", "closed" }, { 3, "0,1,5,13", "staged" },
        { 3, "0,6,6,13", "closed" }, { 3, "0,6,6,13", "staged" },
        { 2, "0,7,20", "closed" }, { 2, "0,7,20", "staged" },
    };

    public static TheoryData<string, string> TwoRowSplits => new()
    {
        { "0,1,2", "closed" }, { "0,1,2", "staged" },
        { "0,2,2", "closed" }, { "0,2,2", "staged" },
        { "0,0,2", "closed" }, { "0,0,2", "staged" },
    };

    [SkippableTheory]
    [MemberData(nameof(Training))]
    public void Every_rank_gets_its_rows_of_one_layer_on_the_concatenated_batch(int ranks, string bounds, string strategy)
    {
        RankReport[] reports = Jobs.Of(ranks);
        int[] b = Bounds(bounds);
        CaseRecord whole = Cases.Train(strategy, null, [0, b[^1]], 0, Steps, Seed);
        foreach (RankReport report in reports)
        {
            CaseRecord rank = Case(report, $"train {strategy} {bounds}");
            Assert.Equal(b[report.Rank + 1] - b[report.Rank], rank.Rows);
            Assert.Equal(Steps, rank.Steps.Count);
            for (int s = 0; s < Steps; s++)
            {
                StepRecord expected = whole.Steps[s], actual = rank.Steps[s];
                string at = $"rank {report.Rank}, step {s}";
                Compare.Close(expected.Output[b[report.Rank]..b[report.Rank + 1]], actual.Output, $"y, {at}");
                Compare.Close(expected.InputGradient[b[report.Rank]..b[report.Rank + 1]], actual.InputGradient, $"dx, {at}");
                Compare.Close(expected.GammaGradient, actual.GammaGradient, $"dγ, {at}");
                Compare.Close(expected.BetaGradient, actual.BetaGradient, $"dβ, {at}");
                Compare.Close(expected.Mean, actual.Mean, $"μ, {at}");
                Compare.Close(expected.Variance, actual.Variance, $"σ², {at}");
                Compare.Close(expected.RunningMean, actual.RunningMean, $"running mean, {at}");
                Compare.Close(expected.RunningVariance, actual.RunningVariance, $"running variance, {at}");
                Assert.Equal(expected.BatchesTracked, actual.BatchesTracked);
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Training))]
    public void Mpi_ranks_compute_bit_for_bit_what_workers_on_threads_compute(int ranks, string bounds, string strategy)
    {
        RankReport[] reports = Jobs.Of(ranks);
        int[] b = Bounds(bounds);
        CaseRecord[] threads = InProcess.Run(ranks, (exchange, r) => Cases.Train(strategy, exchange, b, r, Steps, Seed));
        foreach (RankReport report in reports)
        {
            CaseRecord rank = Case(report, $"train {strategy} {bounds}");
            for (int s = 0; s < Steps; s++)
            {
                Compare.Identical(threads[report.Rank].Steps[s], rank.Steps[s], $"rank {report.Rank}, step {s}");

                // What the README says is shared, every rank holds bit for bit.
                Compare.Shared(Case(reports[0], rank.Name).Steps[s], rank.Steps[s], $"rank {report.Rank} against rank 0, step {s}");
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(TwoRowSplits))]
    public void A_two_row_global_batch_split_over_two_ranks_matches_the_unsynchronized_layer(string bounds, string strategy)
    {
        RankReport[] reports = Jobs.Of(2);
        int[] b = Bounds(bounds);
        StepRecord whole = Cases.TwoRows(strategy, null, [0, 2], 0).Steps[0];
        CaseRecord[] threads = InProcess.Run(2, (exchange, r) => Cases.TwoRows(strategy, exchange, b, r));
        foreach (RankReport report in reports)
        {
            StepRecord rank = Case(report, $"two rows {strategy} {bounds}").Steps.Single();
            string at = $"rank {report.Rank}";
            Compare.Identical(threads[report.Rank].Steps[0], rank, at);
            Compare.Close(whole.Output[b[report.Rank]..b[report.Rank + 1]], rank.Output, $"y, {at}");
            Compare.Close(whole.InputGradient[b[report.Rank]..b[report.Rank + 1]], rank.InputGradient, $"dx, {at}");
            Compare.Close(whole.GammaGradient, rank.GammaGradient, $"dγ, {at}");
            Compare.Close(whole.BetaGradient, rank.BetaGradient, $"dβ, {at}");
            Compare.Close(whole.RunningVariance, rank.RunningVariance, $"running variance, {at}");
        }
    }

    [SkippableTheory]
    [InlineData(3, 1, "0,1,5,13")]
    [InlineData(2, 0, "0,7,20")]
    public void Bad_data_on_one_rank_is_rejected_by_every_rank_and_no_rank_is_left_waiting(int ranks, int badRank, string bounds)
    {
        // A rank left waiting would keep mpirun from ending, and the job's timeout would fail this test.
        RankReport[] reports = Jobs.Of(ranks);
        CaseRecord[] threads = InProcess.Run(ranks, (exchange, r) => Cases.BadData(exchange, Bounds(bounds), r, badRank));
        foreach (RankReport report in reports)
        {
            CaseRecord rank = Case(report, $"bad data on rank {badRank}");
            string[] expected = report.Rank == badRank
                ? ["ArgumentException: Column 3 of input cannot be normalized", "state unchanged", "ArgumentException: Column 2 of outputGradient cannot be back-propagated", "state unchanged"]
                : [$"InvalidOperationException: Column 3 of worker {badRank}'s batch cannot be normalized", "state unchanged", $"InvalidOperationException: Column 2 of worker {badRank}'s output gradient cannot be back-propagated", "state unchanged"];
            Assert.Equal(expected.Length, rank.Errors.Count);
            for (int k = 0; k < expected.Length; k++)
            {
                Assert.StartsWith(expected[k], rank.Errors[k], StringComparison.Ordinal);
            }

            // The good step after the failures is taken by every rank together, as on threads.
            Assert.Equal(threads[report.Rank].Errors, rank.Errors);
            Assert.Equal(2, rank.Steps.Count);
            Compare.Identical(threads[report.Rank].Steps[1], rank.Steps[1], $"rank {report.Rank}, the step after the failures");
        }
    }

    [SkippableFact]
    public void A_communicator_the_program_made_synchronizes_only_its_own_ranks()
    {
        // The worker splits the world of 3 into ranks {0, 1}, which train together on rows 0–2 and 3–8, and {2}, alone on 4 rows.
        RankReport[] reports = Jobs.Of(3);
        CaseRecord[] pair = InProcess.Run(2, (exchange, r) => Cases.Train("closed", exchange, [0, 3, 9], r, 2, 3));
        CaseRecord[] single = InProcess.Run(1, (exchange, r) => Cases.Train("closed", exchange, [0, 4], r, 2, 4));
        CaseRecord[] expected = [pair[0], pair[1], single[0]];
        foreach (RankReport report in reports)
        {
            CaseRecord rank = report.Cases.Single(c => c.Name.StartsWith("split", StringComparison.Ordinal));
            Assert.Equal(report.Rank < 2 ? 2 : 1, rank.Workers);
            Assert.Equal(expected[report.Rank].Rank, rank.Rank);
            for (int s = 0; s < 2; s++)
            {
                Compare.Identical(expected[report.Rank].Steps[s], rank.Steps[s], $"world rank {report.Rank}, step {s}");
            }
        }
    }

    [SkippableFact]
    public void The_session_initializes_and_finalizes_MPI_unless_the_program_already_did()
    {
        // Three ranks: MpiSession.Start initialized MPI, so disposing it finalized MPI, and the exchange then refuses.
        Assert.All(Jobs.Of(3), report =>
        {
            Assert.Equal(3, report.Size);
            Assert.StartsWith("Open MPI v", report.Library, StringComparison.Ordinal);
            Assert.StartsWith("MPI is not initialized: call MpiSession.Start()", report.NotInitialized, StringComparison.Ordinal);
            Assert.True(report.OwnsInitialization);
            Assert.True(report.ThreadLevel >= 2, $"thread level {report.ThreadLevel}, serialized (2) asked for");
            Assert.True(report.FinalizedAfterDispose);
            Assert.StartsWith("MPI has been finalized in this process", report.UsableAfterDispose, StringComparison.Ordinal);
        });

        // Two ranks: the program called MPI_Init itself; the session joined it and left it to the program to finalize.
        Assert.All(Jobs.Of(2), report =>
        {
            Assert.Equal(2, report.Size);
            Assert.False(report.OwnsInitialization);
            Assert.False(report.FinalizedAfterDispose);
            Assert.Equal("no exception", report.UsableAfterDispose);
        });
    }

    private static int[] Bounds(string text) => [.. text.Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture))];

    private static CaseRecord Case(RankReport report, string name)
        => report.Cases.SingleOrDefault(c => c.Name == name) ?? throw new InvalidOperationException($"rank {report.Rank} has no case '{name}'");

    /// <summary>The two worker jobs, each run once for all the tests that read it.</summary>
    private static class Jobs
    {
        private static readonly Lazy<RankReport[]> Three = new(() => MpiJob.RunWorker(3, "train:0,1,5,13", "train:0,6,6,13", "bad:1:0,1,5,13", "split"));

        private static readonly Lazy<RankReport[]> Two = new(() => MpiJob.RunWorker(2, "preinit", "train:0,7,20", "tworows:0,1,2", "tworows:0,2,2", "tworows:0,0,2", "bad:0:0,7,20"));

        public static RankReport[] Of(int ranks)
        {
            MpiJob.RequireMpirun();
            return ranks == 3 ? Three.Value : Two.Value;
        }
    }
}
