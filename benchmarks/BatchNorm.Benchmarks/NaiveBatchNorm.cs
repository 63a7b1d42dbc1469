using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Benchmarks;

/// <summary>
/// Batch norm written only with MathNet's matrix and vector operators, as one would at first:
/// the baseline the fused kernels are compared with. Training forward and closed-form backward.
/// </summary>
public sealed class NaiveBatchNorm(int features, double epsilon = 1e-5)
{
    private readonly Vector<double> _gamma = Vector<double>.Build.Dense(features, 1.0);
    private readonly Vector<double> _beta = Vector<double>.Build.Dense(features);
    private Matrix<double>? _xHat;
    private Vector<double>? _inverseStd;

    /// <summary>y = γ·(x − μ)/√(σ² + ε) + β with batch statistics.</summary>
    /// <param name="x">The N×D batch.</param>
    /// <returns>A new N×D matrix.</returns>
    public Matrix<double> Forward(Matrix<double> x)
    {
        int n = x.RowCount;
        Vector<double> ones = Vector<double>.Build.Dense(n, 1.0);
        Vector<double> mean = x.ColumnSums() / n;
        Matrix<double> centered = x - ones.OuterProduct(mean);
        Vector<double> variance = centered.PointwisePower(2).ColumnSums() / n;
        _inverseStd = (variance + epsilon).PointwiseSqrt().DivideByThis(1.0);
        _xHat = centered * Matrix<double>.Build.DiagonalOfDiagonalVector(_inverseStd);
        return (_xHat * Matrix<double>.Build.DiagonalOfDiagonalVector(_gamma)) + ones.OuterProduct(_beta);
    }

    /// <summary>dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)).</summary>
    /// <param name="dy">The N×D upstream gradient.</param>
    /// <returns>A new N×D matrix.</returns>
    public Matrix<double> Backward(Matrix<double> dy)
    {
        int n = dy.RowCount;
        Vector<double> ones = Vector<double>.Build.Dense(n, 1.0);
        Vector<double> sumDy = dy.ColumnSums();
        Vector<double> sumDyXHat = dy.PointwiseMultiply(_xHat!).ColumnSums();
        Matrix<double> bracket = (dy * n) - ones.OuterProduct(sumDy) - (_xHat! * Matrix<double>.Build.DiagonalOfDiagonalVector(sumDyXHat));
        return bracket * Matrix<double>.Build.DiagonalOfDiagonalVector(_gamma.PointwiseMultiply(_inverseStd!) / n);
    }
}
