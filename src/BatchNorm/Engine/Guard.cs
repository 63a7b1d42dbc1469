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

    /// <summary>Throws unless a layer's feature count is at least 1.</summary>
    public static void Features(int features, string parameterName = "features")
    {
        if (features <= 0)
        {
            throw new ArgumentOutOfRangeException(parameterName, features, "The number of features must be at least 1.");
        }
    }

    /// <summary>Throws unless G ≥ 1 divides the <paramref name="count"/> of features or channels it splits; returns G.</summary>
    public static int Groups(int count, int groups, string countName, string parameterName = "groups")
    {
        if (groups <= 0)
        {
            throw new ArgumentOutOfRangeException(parameterName, groups, "The number of groups must be at least 1.");
        }

        if (count % groups != 0)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"{count} {countName} cannot be split into {groups} groups of equal size: the number of groups must divide the number of {countName}."),
                parameterName);
        }

        return groups;
    }

    /// <summary>Throws unless S ≥ 1 and C·S columns fit in an int.</summary>
    public static void SpatialSize(int channels, int spatialSize, string parameterName = "spatialSize")
    {
        if (spatialSize <= 0 || (long)channels * spatialSize > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(
                parameterName,
                spatialSize,
                spatialSize <= 0 ? "Each channel needs at least 1 position." : $"{channels} channels of {spatialSize} positions are more columns than a matrix can have.");
        }
    }

    /// <summary>Throws unless ε is positive and finite.</summary>
    public static void Epsilon(double epsilon, string parameterName = "epsilon")
    {
        if (!(epsilon > 0) || double.IsInfinity(epsilon))
        {
            throw new ArgumentOutOfRangeException(parameterName, epsilon, "Epsilon must be positive and finite.");
        }
    }

    /// <summary>Throws unless the momentum lies in [0, 1]; null (a cumulative average) is allowed.</summary>
    public static void Momentum(double? momentum, string parameterName = "momentum")
    {
        if (momentum is double m && !(m >= 0 && m <= 1))
        {
            throw new ArgumentOutOfRangeException(parameterName, m, "Momentum must lie in [0, 1], or be null for a cumulative moving average.");
        }
    }

    public static string Shape(int rows, int columns) => string.Create(CultureInfo.InvariantCulture, $"{rows}x{columns}");

    public static string Shape<T>(Matrix<T> matrix)
        where T : struct, IEquatable<T>, IFormattable
        => Shape(matrix.RowCount, matrix.ColumnCount);

    /// <summary>Throws unless <paramref name="matrix"/> has <paramref name="columns"/> columns.</summary>
    public static void Columns<T>(Matrix<T> matrix, int columns, string parameterName)
        where T : struct, IEquatable<T>, IFormattable
    {
        if (matrix.ColumnCount != columns)
        {
            throw new ArgumentException(
                $"Matrix dimensions must agree: {parameterName} is {Shape(matrix)}, but the layer has {columns} features, so it must be Nx{columns}.",
                parameterName);
        }
    }

    /// <summary>Throws unless <paramref name="matrix"/> is <paramref name="rows"/> by <paramref name="columns"/>.</summary>
    public static void SameShape<T>(Matrix<T> matrix, int rows, int columns, string parameterName, string expectedName)
        where T : struct, IEquatable<T>, IFormattable
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

    /// <summary>Throws unless a span has the length its role needs.</summary>
    public static void Length(int actual, int expected, string parameterName, string what)
    {
        if (actual != expected)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"{parameterName} has {actual} values, but {what} needs {expected}."), parameterName);
        }
    }

    /// <summary>The error for a column of values that cannot be normalized or back-propagated.</summary>
    public static ArgumentException NotFinite(string parameterName, int column, string what)
        => new(
            string.Create(CultureInfo.InvariantCulture, $"Column {column} of {parameterName} {what}: it holds NaN or infinity, or values so large that its statistics overflow."),
            parameterName);
}
