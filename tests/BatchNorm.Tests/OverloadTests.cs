using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Double;

namespace BatchNorm.Tests;

/// <summary>The destination overloads, in-place use, changing batch sizes and non-dense matrices.</summary>
public class OverloadTests
{
    [BatchNormProperty(CasesFactor = 6)]
    public void Destination_overloads_match_the_allocating_ones_as_the_batch_size_changes(ResizingBatches batches, bool training, BackwardStrategy s)
    {
        BatchCase[] cases = batches.Cases;
        int d = cases.Min(c => c.Features);
        var allocating = new BatchNormLayer(d, backward: s) { IsTraining = training };
        var destination = new BatchNormLayer(d, backward: s) { IsTraining = training };
        foreach (BatchCase c in cases)
        {
            Matrix<double> x = c.Input.SubMatrix(0, c.Rows, 0, d), dy = c.Dy.SubMatrix(0, c.Rows, 0, d);
            Matrix<double> y = Matrix<double>.Build.Dense(c.Rows, d, double.NaN), dx = Matrix<double>.Build.Dense(c.Rows, d, double.NaN);
            Assert.Equal(allocating.Forward(x), Pipe(() => destination.Forward(x, y), y));
            Assert.Equal(allocating.Backward(dy), Pipe(() => destination.Backward(dy, dx), dx));
            Assert.Equal(allocating.GammaGradient, destination.GammaGradient);
            Assert.Equal(allocating.BetaGradient, destination.BetaGradient);
            Assert.Equal(allocating.RunningVariance, destination.RunningVariance);
        }
    }

    [Fact]
    public void Forward_and_backward_can_work_in_place()
    {
        var layer = new BatchNormLayer(2);
        var reference = new BatchNormLayer(2);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 4 }, { 2, -1 }, { 6, 0.5 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.1, -1 }, { 0.7, 0.3 }, { -0.2, 0.9 } });
        Matrix<double> expectedY = reference.Forward(x), expectedDx = reference.Backward(dy);
        foreach (BackwardStrategy strategy in new[] { BackwardStrategy.ClosedForm, BackwardStrategy.Staged })
        {
            layer.BackwardStrategy = strategy;
            Matrix<double> buffer = x.Clone();
            layer.Forward(buffer, buffer);
            Assert.Equal(expectedY, buffer);
            Matrix<double> gradient = dy.Clone();
            layer.Backward(gradient, gradient);
            Assert.True((expectedDx - gradient).InfinityNorm() < 1e-14);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Sparse_and_diagonal_matrices_give_the_dense_results(bool training)
    {
        Matrix<double> dense = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0, 0 }, { 0, 2, 0 }, { 0, 0, 3 }, { 4, 0, 0 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, 0, 1 }, { 0, -2, 0 }, { 1, 0, 3 }, { 0, 0.25, 0 } });
        foreach (Matrix<double> x in new Matrix<double>[] { SparseMatrix.OfMatrix(dense), dense.SubMatrix(0, 4, 0, 3) })
        {
            var a = new BatchNormLayer(3) { IsTraining = training };
            var b = new BatchNormLayer(3) { IsTraining = training };
            Assert.Equal(a.Forward(dense), b.Forward(x));
            var sparseOut = SparseMatrix.Create(4, 3, 0.0);
            b.Forward(x, sparseOut);
            Assert.Equal(a.Forward(dense), sparseOut);
            Assert.Equal(a.Backward(dy), b.Backward(SparseMatrix.OfMatrix(dy)));
            var sparseDx = SparseMatrix.Create(4, 3, 0.0);
            b.Backward(SparseMatrix.OfMatrix(dy), sparseDx);
            Assert.Equal(a.Backward(dy), sparseDx);
            Assert.Equal(a.GammaGradient, b.GammaGradient);
        }

        var square = new BatchNormLayer(3) { IsTraining = training };
        var diagonal = DiagonalMatrix.OfDiagonal(3, 3, new[] { 1.0, 2, 3 });
        Assert.Equal(new BatchNormLayer(3) { IsTraining = training }.Forward(Matrix<double>.Build.DenseOfMatrix(diagonal)), square.Forward(diagonal));
    }

    [Fact]
    public void A_strategy_can_be_called_directly_with_non_dense_arguments()
    {
        var layer = new BatchNormLayer(2);
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 4 }, { 2, -1 }, { 6, 0.5 } }));
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.1, 0 }, { 0, 0.3 }, { -0.2, 0 } });
        Matrix<double> expected = layer.Backward(dy);
        var dx = SparseMatrix.Create(3, 2, 0.0);
        var dGamma = Vector<double>.Build.Sparse(2);
        var dBeta = Vector<double>.Build.Dense(2);
        BackwardStrategy.Staged.Backward(layer.Cache!, Vector<double>.Build.SparseOfVector(layer.Gamma), SparseMatrix.OfMatrix(dy), dx, dGamma, dBeta);
        Assert.True((expected - dx).InfinityNorm() < 1e-14);
        Assert.True((layer.GammaGradient - dGamma).InfinityNorm() < 1e-14);
        Assert.Equal(layer.BetaGradient, dBeta);
    }

    private static Matrix<double> Pipe(Action action, Matrix<double> result)
    {
        action();
        return result;
    }
}
