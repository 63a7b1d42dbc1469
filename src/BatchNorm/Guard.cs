using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>Argument checks shared by the layers, so that every message reads the same way.</summary>
internal static class Guard
{
    public static void NotNull(object? value, string parameterName)
    {
        if (value is null)
        {
            throw new ArgumentNullException(parameterName);
        }
    }

    public static string Shape(int rows, int columns) => string.Create(CultureInfo.InvariantCulture, $"{rows}x{columns}");

    public static string Shape<T>(Matrix<T> matrix)
        where T : struct, IEquatable<T>, IFormattable
        => Shape(matrix.RowCount, matrix.ColumnCount);

    /// <summary>Throws unless <paramref name="matrix"/> has <paramref name="columns"/> columns.</summary>
    public static void Columns(Matrix<double> matrix, int columns, string parameterName)
    {
        if (matrix.ColumnCount != columns)
        {
            throw new ArgumentException(
                $"Matrix dimensions must agree: {parameterName} is {Shape(matrix)}, but the layer has {columns} features, so it must be Nx{columns}.",
                parameterName);
        }
    }

    /// <summary>Throws unless <paramref name="matrix"/> is <paramref name="rows"/> by <paramref name="columns"/>.</summary>
    public static void SameShape(Matrix<double> matrix, int rows, int columns, string parameterName, string expectedName)
    {
        if (matrix.RowCount != rows || matrix.ColumnCount != columns)
        {
            throw new ArgumentException(
                $"Matrix dimensions must agree: {parameterName} is {Shape(matrix)}, {expectedName} is {Shape(rows, columns)}.",
                parameterName);
        }
    }

    /// <summary>Throws unless <paramref name="vector"/> has <paramref name="length"/> elements.</summary>
    public static void Length(Vector<double> vector, int length, string parameterName)
    {
        if (vector.Count != length)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"Vector dimensions must agree: {parameterName} has {vector.Count} elements, the layer has {length} features."),
                parameterName);
        }
    }

    public static ArgumentException NotFinite(string parameterName, int column, string what)
        => new(
            string.Create(CultureInfo.InvariantCulture, $"Column {column} of {parameterName} {what}: it holds NaN or infinity, or values so large that its statistics overflow."),
            parameterName);
}
