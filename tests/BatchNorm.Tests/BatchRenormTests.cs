using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>BatchRenormLayer.</summary>
public class BatchRenormTests
{
    private static BatchRenormLayer Renorm(BatchCase c, BackwardStrategy strategy, double? momentum = 0.1)
    {
        var layer = new BatchRenormLayer(c.Features, c.Epsilon, momentum, strategy);
        Vector<double>.Build.DenseOfArray(c.Gamma).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray(c.Beta).CopyTo(layer.Beta);
        return layer;
    }

    [BatchNormProperty(CasesFactor = 3)]
    public void With_rmax_1_and_dmax_0_it_is_batch_norm(BatchCase c, BackwardStrategy strategy)
    {
        BatchRenormLayer renorm = Renorm(c, strategy);
        BatchNormLayer norm = c.Layer(strategy);
        for (int step = 0; step < 2; step++)
        {
            Matrix<double> x = c.Input.Multiply(step + 1);
            Assert.Equal(norm.Forward(x), renorm.Forward(x));
            AssertClose(norm.Backward(c.Dy), renorm.Backward(c.Dy));
            AssertClose(norm.GammaGradient.ToColumnMatrix(), renorm.GammaGradient.ToColumnMatrix());
            AssertClose(norm.BetaGradient.ToColumnMatrix(), renorm.BetaGradient.ToColumnMatrix());
            Assert.Equal(norm.RunningMean, renorm.RunningMean);
            Assert.Equal(norm.RunningVariance, renorm.RunningVariance);
        }

        norm.IsTraining = renorm.IsTraining = false;
        Assert.Equal(norm.Forward(c.Input), renorm.Forward(c.Input));
        AssertClose(norm.Backward(c.Dy), renorm.Backward(c.Dy));
    }

    [BatchNormProperty(CasesFactor = 3)]
    public void Where_r_and_d_are_clipped_backward_matches_central_differences(BatchCase c, BackwardStrategy strategy)
    {
        // Frozen running statistics far from the batch's: r sits at 1/rmax and d at ±dmax, constant near x.
        BatchRenormLayer layer = Renorm(c, strategy, momentum: 0);
        layer.RMax = 2;
        layer.DMax = 0.5;
        for (int j = 0; j < c.Features; j++)
        {
            layer.RunningVariance[j] = 1e6 * (j + 1);
            layer.RunningMean[j] = (j % 2 == 0 ? 1 : -1) * 1e5;
        }

        layer.Forward(c.Input);
        Assert.All(layer.R, r => Assert.Equal(0.5, r));
        Assert.All(layer.D, d => Assert.Equal(0.5, Math.Abs(d)));

        // Each column's step is a fraction of √(σ² + ε), the scale the layer divides it by.
        Matrix<double> h = Matrix<double>.Build.Dense(c.Rows, c.Features, (_, j) => 1e-3 * c.Scale(j));
        CentralDifferences.AssertBackwardMatches(layer.Forward, layer.Backward, layer.Gamma, layer.Beta, () => (layer.GammaGradient, layer.BetaGradient), c.Input, c.Dy, h);
    }

    [BatchNormProperty(CasesFactor = 3)]
    public void Where_r_and_d_are_free_backward_is_batch_norm_with_gamma_r_and_beta_gamma_d_plus_beta(BatchCase c, BackwardStrategy strategy)
    {
        BatchRenormLayer renorm = Renorm(c, strategy);
        renorm.RMax = 1e6;
        renorm.DMax = 1e6;
        renorm.Forward(c.Input.Multiply(1.5));     // running statistics that differ from the next batch's
        Matrix<double> y = renorm.Forward(c.Input);
        Assert.Contains(renorm.R, r => r != 1);

        BatchNormLayer equivalent = c.Layer(strategy);
        for (int j = 0; j < c.Features; j++)
        {
            equivalent.Gamma[j] = c.Gamma[j] * renorm.R[j];
            equivalent.Beta[j] = (c.Gamma[j] * renorm.D[j]) + c.Beta[j];
        }

        AssertClose(equivalent.Forward(c.Input), y);
        AssertClose(equivalent.Backward(c.Dy), renorm.Backward(c.Dy));
        for (int j = 0; j < c.Features; j++)
        {
            double expected = (renorm.R[j] * equivalent.GammaGradient[j]) + (renorm.D[j] * equivalent.BetaGradient[j]);
            Assert.Equal(expected, renorm.GammaGradient[j], 1e-12 * (1 + Math.Abs(expected)));
        }
    }

    [Fact]
    public void Bad_input_and_settings_change_nothing()
    {
        var layer = new BatchRenormLayer(2) { RMax = 3, DMax = 1 };
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 7 }, { 4, 0 } });
        layer.Forward(x);
        layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0 }, { 0, 1 }, { 2, -1 } }));
        double[] mean = layer.RunningMean.ToArray(), r = layer.R.ToArray(), d = layer.D.ToArray(), gamma = layer.GammaGradient.ToArray();
        Matrix<double> bad = x.Clone();
        bad[1, 1] = double.NaN;
        Assert.Contains("Column 1", Assert.Throws<ArgumentException>(() => layer.Forward(bad)).Message);
        Matrix<double> badGradient = Matrix<double>.Build.Dense(3, 2, 1.0);
        badGradient[0, 0] = double.NegativeInfinity;
        Assert.Contains("Column 0", Assert.Throws<ArgumentException>(() => layer.Backward(badGradient)).Message);
        Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(1, 2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => layer.RMax = 0.5);
        Assert.Throws<ArgumentOutOfRangeException>(() => layer.DMax = -1);
        Assert.Equal(mean, layer.RunningMean.ToArray());
        Assert.Equal(r, layer.R.ToArray());
        Assert.Equal(d, layer.D.ToArray());
        Assert.Equal(gamma, layer.GammaGradient.ToArray());
        Assert.Equal(1, layer.BatchesTracked);
        Assert.Equal(3, layer.RMax);
        Assert.Throws<InvalidOperationException>(() => new BatchRenormLayer(2).Backward(x));
    }

    private static void AssertClose(Matrix<double> expected, Matrix<double> actual)
    {
        double scale = 1 + expected.Enumerate().Max(Math.Abs);
        Assert.True((expected - actual).InfinityNorm() <= 1e-11 * scale, $"differ by {(expected - actual).InfinityNorm():E2} at scale {scale:E2}");
    }
}
