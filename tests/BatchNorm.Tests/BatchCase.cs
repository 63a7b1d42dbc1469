using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using FsCheck;
using FsCheck.Fluent;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// One generated test case: an N×D batch whose columns have their own offset and scale, γ, β and a
/// non-uniform upstream gradient. Shrinking drops rows and columns.
/// </summary>
/// <remarks>
/// With two rows x̂ = ±√(σ²/(σ²+ε)) hardly depends on x, and the true dx is proportional to ε/(σ²+ε).
/// With ε = 1e-5 that is far below the rounding noise of a central difference, so two-row cases get an ε
/// between 1% and 100% of the largest column variance, where the gradient is well conditioned.
/// Larger batches use the default ε = 1e-5.
/// </remarks>
public sealed record BatchCase(double[][] Columns, double[] Gamma, double[] Beta, double[][] OutputGradient, double Epsilon)
{
    public const double DefaultEpsilon = 1e-5;

    public int Rows => Columns[0].Length;

    public int Features => Columns.Length;

    public Matrix<double> Input => Matrix<double>.Build.DenseOfColumnArrays(Columns);

    public Matrix<double> Dy => Matrix<double>.Build.DenseOfColumnArrays(OutputGradient);

    /// <summary>√(σⱼ² + ε), the scale a batch norm divides column j by: the scale for its finite-difference step.</summary>
    public double Scale(int j) => Math.Sqrt(Variance(Columns[j]) + Epsilon);

    private static double MaxVariance(double[][] columns) => columns.Max(Variance);

    private static double Variance(double[] c) => c.Select(v => (v - c.Average()) * (v - c.Average())).Average();

    internal BatchNormLayer Layer(BackwardStrategy strategy)
    {
        var layer = new BatchNormLayer(Features, Epsilon, backward: strategy);
        Vector<double>.Build.DenseOfArray(Gamma).CopyTo(layer.Gamma);
        Vector<double>.Build.DenseOfArray(Beta).CopyTo(layer.Beta);
        return layer;
    }

    public override string ToString()
        => string.Create(CultureInfo.InvariantCulture, $"N={Rows} D={Features} ε={Epsilon} x={Input.ToMatrixString()} γ=[{string.Join(", ", Gamma)}] β=[{string.Join(", ", Beta)}] dy={Dy.ToMatrixString()}");

    /// <summary>Batches with N in [2, 12] and D in [1, 5], offsets in [−100, 100] and spreads in [0.1, 10].</summary>
    internal static Arbitrary<BatchCase> Arbitrary(int minRows = 2, int maxRows = 12, int maxFeatures = 5)
    {
        Gen<double> Uniform(double low, double high)
            => Gen.Choose(0, 1_000_000).Select(k => low + ((high - low) * k / 1_000_000.0));

        Gen<double[]> Column(int n) =>
            from offset in Uniform(-100, 100)
            from logScale in Uniform(-1, 1)
            from z in Uniform(-2, 2).ArrayOf(n)
            select z.Select(v => offset + (Math.Pow(10, logScale) * v)).ToArray();

        Gen<double> SignedGamma =
            from magnitude in Uniform(0.2, 3)
            from negative in Gen.Elements(false, true)
            select negative ? -magnitude : magnitude;

        Gen<BatchCase> cases =
            from n in Gen.Choose(minRows, maxRows)
            from d in Gen.Choose(1, maxFeatures)
            from columns in Column(n).ArrayOf(d)
            from gamma in SignedGamma.ArrayOf(d)
            from beta in Uniform(-2, 2).ArrayOf(d)
            from dy in Uniform(-1, 1).ArrayOf(n).ArrayOf(d)
            from relativeEpsilon in Uniform(-2, 0)
            select new BatchCase(columns, gamma, beta, dy, n == 2 ? Math.Pow(10, relativeEpsilon) * MaxVariance(columns) : DefaultEpsilon);

        return Arb.From(cases, Shrink);
    }

    private static IEnumerable<BatchCase> Shrink(BatchCase c)
    {
        if (c.Features > 1)
        {
            for (int j = 0; j < c.Features; j++)
            {
                yield return c with { Columns = Without(c.Columns, j), Gamma = Without(c.Gamma, j), Beta = Without(c.Beta, j), OutputGradient = Without(c.OutputGradient, j) };
            }
        }

        // Two-row cases need their own ε (see remarks), so shrinking stops at three rows otherwise.
        if (c.Rows > (c.Epsilon == DefaultEpsilon ? 3 : 2))
        {
            for (int i = 0; i < c.Rows; i++)
            {
                yield return c with
                {
                    Columns = c.Columns.Select(col => Without(col, i)).ToArray(),
                    OutputGradient = c.OutputGradient.Select(col => Without(col, i)).ToArray(),
                };
            }
        }
    }

    private static T[] Without<T>(T[] items, int index) => items.Where((_, i) => i != index).ToArray();
}
