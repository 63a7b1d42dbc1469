using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>The staged and closed-form strategies agree on the same cache.</summary>
public class StrategyAgreementTests
{
    [BatchNormProperty(CasesFactor = 2)]
    public void Staged_and_closed_form_agree_to_1e_12(TallBatch tall, bool training)
    {
        BatchCase c = tall.Case;
        BatchNormLayer layer = c.Layer(BackwardStrategy.ClosedForm);
        layer.Forward(c.Input);
        layer.IsTraining = training;
        layer.Forward(c.Input);
        NormalizationCache cache = layer.Cache!;

        var (closedDx, closedGamma, closedBeta) = Run(BackwardStrategy.ClosedForm, cache, layer.Gamma, c.Dy);
        var (stagedDx, stagedGamma, stagedBeta) = Run(BackwardStrategy.Staged, cache, layer.Gamma, c.Dy);

        for (int j = 0; j < c.Features; j++)
        {
            // The size of the terms that the closed form adds up: the tolerance is relative to them,
            // since dx itself can be far smaller when they cancel.
            double meanDy = c.Dy.Column(j).Sum() / c.Rows;
            double meanDyXHat = closedGamma[j] / c.Rows;
            double terms = Math.Abs(layer.Gamma[j]) * cache.InverseStandardDeviation[j]
                * (c.Dy.Column(j).AbsoluteMaximum() + Math.Abs(meanDy) + (Math.Abs(meanDyXHat) * MaxAbs(cache.NormalizedColumn(j))));
            for (int i = 0; i < c.Rows; i++)
            {
                Assert.True(
                    Math.Abs(closedDx[i, j] - stagedDx[i, j]) <= 1e-12 * terms,
                    string.Create(CultureInfo.InvariantCulture, $"dx[{i},{j}]: closed {closedDx[i, j]:R}, staged {stagedDx[i, j]:R}, term size {terms:E2}"));
            }

            double dySize = c.Dy.Column(j).L1Norm() * Math.Max(1, MaxAbs(cache.NormalizedColumn(j)));
            Assert.True(Math.Abs(closedGamma[j] - stagedGamma[j]) <= 1e-12 * dySize);
            Assert.True(Math.Abs(closedBeta[j] - stagedBeta[j]) <= 1e-12 * dySize);
        }
    }

    private static (Matrix<double> Dx, Vector<double> DGamma, Vector<double> DBeta) Run(BackwardStrategy strategy, NormalizationCache cache, Vector<double> gamma, Matrix<double> dy)
    {
        var dx = Matrix<double>.Build.Dense(cache.BatchSize, cache.Features);
        var dGamma = Vector<double>.Build.Dense(cache.Features);
        var dBeta = Vector<double>.Build.Dense(cache.Features);
        strategy.Backward(cache, gamma, dy, dx, dGamma, dBeta);
        return (dx, dGamma, dBeta);
    }

    private static double MaxAbs(ReadOnlySpan<double> values)
    {
        double max = 0;
        foreach (double v in values)
        {
            max = Math.Max(max, Math.Abs(v));
        }

        return max;
    }
}
