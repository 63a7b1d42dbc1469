using System;
using System.Collections.Generic;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Mpi.Tests;

/// <summary>
/// What one synchronized step exchanges, as docs/mpi.md states it: per layer of D features, one all-gather of 4·D + 1
/// doubles in a training Forward, one of SumCount·D + 1 in the Backward after it, and none in inference. No MPI needed:
/// the layer asks the same of any exchange.
/// </summary>
public class CostTests
{
    [Theory]
    [InlineData("closed", 3)]
    [InlineData("staged", 5)]
    public void A_training_step_gathers_4D_plus_1_then_SumCount_D_plus_1_doubles_and_inference_nothing(string strategy, int sumCount)
    {
        const int D = 7;
        var exchange = new CountingExchange();
        var layer = new BatchNormLayer(D, backward: Worker.Cases.Strategy(strategy)) { StatisticsExchange = exchange };
        Matrix<double> x = Matrix<double>.Build.Dense(5, D, (i, j) => Math.Sin((3 * i) + j)), dy = x.Map(Math.Cos);
        layer.Forward(x);
        layer.Backward(dy);
        Assert.Equal([(4 * D) + 1, (sumCount * D) + 1], exchange.Lengths);

        layer.IsTraining = false;
        layer.Forward(x);
        layer.Backward(dy);
        Assert.Equal(2, exchange.Lengths.Count);
    }

    /// <summary>One worker that notes how many values each all-gather carries.</summary>
    private sealed class CountingExchange : IStatisticsExchange
    {
        public List<int> Lengths { get; } = [];

        public int WorkerCount => 1;

        public int Rank => 0;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
        {
            Lengths.Add(local.Length);
            local.CopyTo(gathered);
        }
    }
}
