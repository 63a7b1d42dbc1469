using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Benchmarks;

/// <summary>Benchmark inputs.</summary>
public static class Shapes
{
    /// <summary>Parses "NxD".</summary>
    /// <param name="shape">Rows and columns, as in "4096x512".</param>
    /// <returns>The two numbers.</returns>
    public static (int Rows, int Columns) Parse(string shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        string[] parts = shape.Split('x');
        return (int.Parse(parts[0], CultureInfo.InvariantCulture), int.Parse(parts[1], CultureInfo.InvariantCulture));
    }

    /// <summary>A reproducible matrix of uniform values in [offset − 1, offset + 1).</summary>
    /// <param name="rows">N.</param>
    /// <param name="columns">D.</param>
    /// <param name="seed">The random seed.</param>
    /// <param name="offset">The centre of the values.</param>
    /// <returns>A new dense matrix.</returns>
    public static Matrix<double> Random(int rows, int columns, int seed, double offset)
    {
        var random = new Random(seed);
        return Matrix<double>.Build.Dense(rows, columns, (_, _) => offset + (2 * random.NextDouble()) - 1);
    }

    /// <summary>The matrices of one benchmark: input x, upstream gradient dy, and destinations y and dx.</summary>
    /// <param name="shape">"NxD".</param>
    /// <returns>x centred at 3, dy centred at 0, and two zero matrices, all N×D.</returns>
    public static (Matrix<double> X, Matrix<double> Dy, Matrix<double> Y, Matrix<double> Dx) Inputs(string shape)
    {
        (int n, int d) = Parse(shape);
        return (Random(n, d, 1, offset: 3), Random(n, d, 2, offset: 0), Matrix<double>.Build.Dense(n, d), Matrix<double>.Build.Dense(n, d));
    }
}
