using System.Globalization;
using FsCheck;
using FsCheck.Fluent;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>A batch for a group norm: N rows, G groups of C features, per-feature offsets and spreads, γ, β and dy.</summary>
/// <param name="Groups">G.</param>
/// <param name="X">The input, N×(G·C).</param>
/// <param name="Dy">The upstream gradient.</param>
/// <param name="Gamma">γ per feature.</param>
/// <param name="Beta">β per feature.</param>
public sealed record RowCase(int Groups, Matrix<double> X, Matrix<double> Dy, double[] Gamma, double[] Beta)
{
    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"G={Groups} x={X.ToMatrixString()} dy={Dy.ToMatrixString()} γ=[{string.Join(", ", Gamma)}] β=[{string.Join(", ", Beta)}]");

    /// <summary>A group norm of this case's shape, γ and β, and the given strategy and ε.</summary>
    internal GroupNormLayer Layer(BackwardStrategy strategy, double epsilon = 1e-5)
    {
        var layer = new GroupNormLayer(X.ColumnCount, Groups, epsilon, strategy);
        Vector<double>.Build.DenseOfArray(Gamma).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray(Beta).CopyTo(layer.Beta);
        return layer;
    }

    /// <summary>
    /// Group sizes 1, 3, 4 or 5, or only 2 with <paramref name="allowTwo"/>. (With two features per group x̂ = ±√(σ²/(σ²+ε)),
    /// and dx is below what central differences can resolve, exactly as for two-row batch norm; that case is checked
    /// separately with a large ε and values within ±10 of zero.)
    /// </summary>
    internal static Gen<RowCase> Generate(bool allowTwo) =>
        from rows in Gen.Choose(1, 6)
        from groups in Gen.Choose(1, 3)
        from size in Gen.Elements(allowTwo ? new[] { 2 } : new[] { 1, 3, 4, 5 })
        from offsets in Gen.Choose(-1000, 1000).Select(k => allowTwo ? 0 : k / 10.0).ArrayOf(groups * size)
        from values in Gen.Choose(-1000, 1000).Select(k => k / 100.0).ArrayOf(rows * groups * size)
        from gradient in Gen.Choose(-1000, 1000).Select(k => k / 1000.0).ArrayOf(rows * groups * size)
        from gamma in Gen.Choose(200, 3000).Select(k => k / 1000.0).ArrayOf(groups * size)
        from beta in Gen.Choose(-2000, 2000).Select(k => k / 1000.0).ArrayOf(groups * size)
        select new RowCase(
            groups,
            Matrix<double>.Build.Dense(rows, groups * size, (i, j) => offsets[j] + values[(i * groups * size) + j]),
            Matrix<double>.Build.Dense(rows, groups * size, (i, j) => gradient[(i * groups * size) + j]),
            gamma,
            beta);
}
