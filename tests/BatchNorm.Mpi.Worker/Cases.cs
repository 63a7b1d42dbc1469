using System;
using System.Collections.Generic;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Mpi.Worker;

/// <summary>What one rank's layer held after one training step.</summary>
public sealed record StepRecord(
    double[][] Output,
    double[][] InputGradient,
    double[] GammaGradient,
    double[] BetaGradient,
    double[] Mean,
    double[] Variance,
    double[] RunningMean,
    double[] RunningVariance,
    long BatchesTracked);

/// <summary>One case as one rank ran it: the steps that succeeded and, in order, what each failed step threw.</summary>
public sealed record CaseRecord(string Name, int Rank, int Workers, int Rows, List<StepRecord> Steps, List<string> Errors);

/// <summary>What a rank reports: its place, the library, how the session met MPI, and its cases.</summary>
public sealed record RankReport(
    int Rank,
    int Size,
    string Library,
    string NotInitialized,
    bool OwnsInitialization,
    int ThreadLevel,
    bool FinalizedAfterDispose,
    string UsableAfterDispose,
    List<CaseRecord> Cases);

/// <summary>
/// The cases the tests run, each on one rank's share of a global batch: under mpirun with an MPI exchange, and in-process
/// as the reference (one unsynchronized layer on the whole batch, or K layers on threads). The data and the steps are
/// defined here only.
/// </summary>
public static class Cases
{
    /// <summary>Features of the training cases.</summary>
    public const int Features = 5;

    /// <summary>The learning rate of the γ and β updates between steps, so that later steps depend on earlier gradients.</summary>
    private const double Rate = 0.1;

    /// <summary>
    /// A few training steps on rows [bounds[rank], bounds[rank + 1]) of each step's global batch: Forward, Backward, then
    /// SGD on γ and β. Columns differ in offset and spread, one sits at 1e6 with a spread of 2.
    /// </summary>
    /// <param name="strategy">"closed" or "staged".</param>
    /// <param name="exchange">The exchange, or null for one unsynchronized layer (then bounds is [0, N] and rank 0).</param>
    /// <param name="bounds">K + 1 row boundaries of the global batch.</param>
    /// <param name="rank">This worker's rank.</param>
    /// <param name="steps">Number of steps.</param>
    /// <param name="seed">The seed of the data.</param>
    /// <returns>What the layer held after each step.</returns>
    public static CaseRecord Train(string strategy, IStatisticsExchange? exchange, int[] bounds, int rank, int steps, int seed)
    {
        var layer = new BatchNormLayer(Features, backward: Strategy(strategy)) { StatisticsExchange = exchange };
        var record = new CaseRecord($"train {strategy} {string.Join(',', bounds)}", rank, bounds.Length - 1, bounds[rank + 1] - bounds[rank], [], []);
        for (int step = 0; step < steps; step++)
        {
            (Matrix<double> x, Matrix<double> dy) = GlobalBatch(bounds[^1], step, seed);
            record.Steps.Add(Step(layer, Rows(x, bounds, rank), Rows(dy, bounds, rank)));
            layer.Gamma.Subtract(layer.GammaGradient * Rate, layer.Gamma);
            layer.Beta.Subtract(layer.BetaGradient * Rate, layer.Beta);
        }

        return record;
    }

    /// <summary>
    /// A global batch of two rows, split over the workers by <paramref name="bounds"/>, with the hard columns of the
    /// library's two-row tests: a spread far below ε, a huge offset, a tiny spread, a constant column. Momentum 1, so the
    /// running variance is the batch's unbiased one.
    /// </summary>
    /// <param name="strategy">"closed" or "staged".</param>
    /// <param name="exchange">The exchange, or null for one unsynchronized layer.</param>
    /// <param name="bounds">K + 1 row boundaries, the last 2.</param>
    /// <param name="rank">This worker's rank.</param>
    /// <returns>The one step.</returns>
    public static CaseRecord TwoRows(string strategy, IStatisticsExchange? exchange, int[] bounds, int rank)
    {
        double[][] columns = [[3.25, -1.5], [1e8 + 0.5, 1e8 - 0.25], [1e-3, 2e-3], [5, 5]];
        double[][] gradients = [[0.75, -0.5], [0.125, 0.375], [-1, 0.25], [0.5, -0.875]];
        var layer = new BatchNormLayer(4, momentum: 1, backward: Strategy(strategy)) { StatisticsExchange = exchange };
        Vector<double>.Build.DenseOfArray([1.5, -0.75, 2, 1]).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray([0.25, 0, -1, 0.5]).CopyTo(layer.Beta);
        Matrix<double> x = Matrix<double>.Build.DenseOfColumnArrays(columns), dy = Matrix<double>.Build.DenseOfColumnArrays(gradients);
        var record = new CaseRecord($"two rows {strategy} {string.Join(',', bounds)}", rank, bounds.Length - 1, bounds[rank + 1] - bounds[rank], [], []);
        record.Steps.Add(Step(layer, Rows(x, bounds, rank), Rows(dy, bounds, rank)));
        return record;
    }

    /// <summary>
    /// Bad data on one rank, which every rank must reject without waiting: a good step; a Forward whose batch holds NaN
    /// on rank <paramref name="badRank"/>; a good Forward whose Backward gets +∞ there; then a good step, which every rank
    /// must take together again. After each failure the worker notes whether its layer's state is unchanged.
    /// </summary>
    /// <param name="exchange">The exchange.</param>
    /// <param name="bounds">K + 1 row boundaries; the bad rank holds at least one row.</param>
    /// <param name="rank">This worker's rank.</param>
    /// <param name="badRank">The rank whose data is bad.</param>
    /// <returns>The two good steps and, per failure, the exception and whether the state is unchanged.</returns>
    public static CaseRecord BadData(IStatisticsExchange exchange, int[] bounds, int rank, int badRank)
    {
        var layer = new BatchNormLayer(Features) { StatisticsExchange = exchange };
        var record = new CaseRecord($"bad data on rank {badRank}", rank, bounds.Length - 1, bounds[rank + 1] - bounds[rank], [], []);
        (Matrix<double> x, Matrix<double> dy) = GlobalBatch(bounds[^1], 0, seed: 7);
        Matrix<double> ownX = Rows(x, bounds, rank), ownDy = Rows(dy, bounds, rank);
        record.Steps.Add(Step(layer, ownX, ownDy));

        Matrix<double> badX = ownX.Clone(), badDy = ownDy.Clone();
        if (rank == badRank)
        {
            badX[0, 3] = double.NaN;
            badDy[0, 2] = double.PositiveInfinity;
        }

        string before = State(layer);
        record.Errors.Add(Failure(() => layer.Forward(badX)));
        record.Errors.Add(State(layer) == before ? "state unchanged" : "state changed");

        layer.Forward(ownX);
        before = State(layer);
        record.Errors.Add(Failure(() => layer.Backward(badDy)));
        record.Errors.Add(State(layer) == before ? "state unchanged" : "state changed");

        record.Steps.Add(Step(layer, ownX, ownDy));
        return record;
    }

    /// <summary>Rows [bounds[rank], bounds[rank + 1]) of <paramref name="m"/>.</summary>
    /// <param name="m">The global matrix.</param>
    /// <param name="bounds">The boundaries.</param>
    /// <param name="rank">The rank.</param>
    /// <returns>A copy of the rows.</returns>
    public static Matrix<double> Rows(Matrix<double> m, int[] bounds, int rank)
        => m.SubMatrix(bounds[rank], bounds[rank + 1] - bounds[rank], 0, m.ColumnCount);

    /// <summary>The input and the output gradient of one step's global batch, the same in every process.</summary>
    /// <param name="rows">N, the global row count.</param>
    /// <param name="step">The step.</param>
    /// <param name="seed">The seed.</param>
    /// <returns>x and dy, N × <see cref="Features"/>.</returns>
    public static (Matrix<double> X, Matrix<double> Dy) GlobalBatch(int rows, int step, int seed)
    {
        double[] offset = [0, 1e6, -50, 3, 0.5], spread = [1, 2, 1e-2, 10, 1e-4];
        var random = new Random((seed * 1000) + step);
        Matrix<double> x = Matrix<double>.Build.Dense(rows, Features, (i, j) => offset[j] + (spread[j] * ((2 * random.NextDouble()) - 1)));
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, Features, (i, j) => (2 * random.NextDouble()) - 1);
        return (x, dy);
    }

    /// <summary>The strategy of the given name.</summary>
    /// <param name="name">"closed" or "staged".</param>
    /// <returns>The strategy.</returns>
    public static BackwardStrategy Strategy(string name) => name switch
    {
        "closed" => BackwardStrategy.ClosedForm,
        "staged" => BackwardStrategy.Staged,
        _ => throw new ArgumentException($"unknown strategy '{name}'", nameof(name)),
    };

    private static StepRecord Step(BatchNormLayer layer, Matrix<double> x, Matrix<double> dy)
    {
        Matrix<double> y = layer.Forward(x), dx = layer.Backward(dy);
        NormalizationCache cache = layer.Cache!;
        return new StepRecord(
            y.ToRowArrays(), dx.ToRowArrays(), layer.GammaGradient.ToArray(), layer.BetaGradient.ToArray(), cache.Mean.ToArray(),
            cache.Variance.ToArray(), layer.RunningMean.ToArray(), layer.RunningVariance.ToArray(), layer.BatchesTracked);
    }

    private static string Failure(Action step)
    {
        try
        {
            step();
            return "no exception";
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            return $"{e.GetType().Name}: {e.Message}";
        }
    }

    private static string State(BatchNormLayer layer)
        => string.Join(' ', layer.RunningMean.Concat(layer.RunningVariance).Concat(layer.GammaGradient).Concat(layer.Gamma).Select(v => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture)))
            + $" {layer.BatchesTracked}";
}
