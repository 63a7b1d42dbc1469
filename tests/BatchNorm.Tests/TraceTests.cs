using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>The staged pass's intermediate gradients, as a student prints them.</summary>
public class TraceTests
{
    [BatchNormProperty]
    public void The_trace_is_the_staged_pass_node_by_node(GhostCase t, bool training, bool ghost)
    {
        (BatchCase c, int size) = t;
        BatchNormLayer layer = c.Layer(BackwardStrategy.Staged);
        layer.VirtualBatchSize = ghost ? size : null;
        layer.Forward(c.Input);
        layer.IsTraining = training;
        layer.Forward(c.Input);
        StagedBackwardTrace trace = StagedBackwardTrace.Of(layer.Cache!, layer.Gamma, c.Dy);
        Matrix<double> dx = layer.Backward(c.Dy);

        // The same node methods as the strategy, so the same bits.
        Assert.Equal(dx, trace.InputGradient);
        Assert.Equal(layer.GammaGradient, trace.GammaGradient);
        Assert.Equal(layer.BetaGradient, trace.BetaGradient);
        Assert.Equal(c.Dy * Matrix<double>.Build.DiagonalOfDiagonalVector(layer.Gamma), trace.NormalizedInputGradient);
        for (int k = 0; k < layer.Cache!.SegmentCount; k++)
        {
            Assert.Equal(trace.MeanGradientDirect[k] + trace.MeanGradientThroughVariance[k], trace.MeanGradient[k]);

            // Σ(x − μ) = 0, so the path through σ² carries rounding only: far below the direct part's terms.
            double terms = Math.Abs(trace.MeanGradientDirect[k]) + (c.Dy.L1Norm() * layer.Gamma.AbsoluteMaximum() * layer.Cache.InverseStandardDeviation[k]);
            Assert.True(Math.Abs(trace.MeanGradientThroughVariance[k]) <= 1e-12 * terms, $"segment {k}: {trace.MeanGradientThroughVariance[k]:E2}");
            if (!training)
            {
                Assert.Equal(0, trace.VarianceGradient[k]);
                Assert.Equal(0, trace.MeanGradient[k]);
            }
        }
    }

    [Fact]
    public void The_trace_of_a_small_batch_prints_every_node_and_refuses_row_layouts()
    {
        var layer = new BatchNormLayer(3, backward: BackwardStrategy.Staged);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 5, 9 }, { 2, 7, 8 }, { 4, 6, 12 }, { 7, 5, 10 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1, 0.25 }, { -0.5, 0.75, 0 }, { 1, 0.5, -0.5 }, { 0.25, -0.25, 1 } });
        layer.Forward(x);
        string text = StagedBackwardTrace.Of(layer.Cache!, layer.Gamma, dy).ToString();
        foreach (string node in new[] { "dx̂ = γ·dy", "dσ²", "dμ, through x̂", "dμ, through σ² (zero but for rounding)", "\ndμ\n", "\ndx\n", "dγ", "dβ" })
        {
            Assert.Contains(node, text);
        }

        // Column 0: μ = 3.5, σ² = 5.25; dσ² = Σ dyᵢ·(xᵢ − μ)·(−½)(σ² + ε)^(−3/2) with γ = 1.
        double dVariance = ((0.5 * -2.5) + (-0.5 * -1.5) + (1 * 0.5) + (0.25 * 3.5)) * -0.5 * Math.Pow(5.25 + 1e-5, -1.5);
        Assert.Equal(dVariance, StagedBackwardTrace.Of(layer.Cache!, layer.Gamma, dy).VarianceGradient[0], 1e-15);

        var rows = new LayerNormLayer(3);
        rows.Forward(x);
        Assert.Throws<ArgumentException>(() => StagedBackwardTrace.Of(rows.Cache!, rows.Gamma, dy));
        Assert.Throws<ArgumentException>(() => StagedBackwardTrace.Of(layer.Cache!, layer.Gamma, dy.SubMatrix(0, 3, 0, 3)));
        Assert.Throws<ArgumentNullException>(() => StagedBackwardTrace.Of(null!, layer.Gamma, dy));
    }
}
