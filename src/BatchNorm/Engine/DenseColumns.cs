using System;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Storage;

namespace BatchNorm;

/// <summary>
/// Access to the column-major storage of dense matrices. Other storage (sparse, diagonal, user-defined)
/// goes through the general path: it is copied into a reusable dense scratch matrix first.
/// </summary>
internal static class DenseColumns
{
    /// <summary>Gets whether <paramref name="matrix"/> stores its elements densely in column-major order.</summary>
    public static bool IsDense<T>(Matrix<T> matrix)
        where T : unmanaged, IEquatable<T>, IFormattable
        => matrix.Storage is DenseColumnMajorMatrixStorage<T>;

    /// <summary>Gets whether <paramref name="vector"/> stores its elements densely.</summary>
    public static bool IsDense(Vector<double> vector) => vector.Storage is DenseVectorStorage<double>;

    /// <summary>Gets the elements of a dense matrix; feature j is the span [j·N, (j+1)·N).</summary>
    public static Span<T> Data<T>(Matrix<T> matrix)
        where T : unmanaged, IEquatable<T>, IFormattable
        => ((DenseColumnMajorMatrixStorage<T>)matrix.Storage).Data.AsSpan(0, matrix.RowCount * matrix.ColumnCount);

    /// <summary>Gets column <paramref name="column"/> of a dense matrix as a span.</summary>
    public static Span<T> Column<T>(Matrix<T> matrix, int column)
        where T : unmanaged, IEquatable<T>, IFormattable
        => Data(matrix).Slice(column * matrix.RowCount, matrix.RowCount);

    /// <summary>Gets the elements of a dense vector.</summary>
    public static Span<double> Data(Vector<double> vector)
        => ((DenseVectorStorage<double>)vector.Storage).Data.AsSpan(0, vector.Count);

    /// <summary>
    /// Returns <paramref name="matrix"/> itself when it is dense, else a dense copy held in <paramref name="scratch"/>,
    /// which is reallocated only when the shape changes.
    /// </summary>
    public static Matrix<T> AsDense<T>(Matrix<T> matrix, ref Matrix<T>? scratch)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (IsDense(matrix))
        {
            return matrix;
        }

        Matrix<T> dense = Scratch(matrix.RowCount, matrix.ColumnCount, ref scratch);
        matrix.CopyTo(dense);
        return dense;
    }

    /// <summary>
    /// Returns <paramref name="destination"/> itself when it is dense, else a dense scratch matrix of its shape
    /// whose contents the caller copies back with <see cref="CopyBack"/>.
    /// </summary>
    public static Matrix<T> DenseTarget<T>(Matrix<T> destination, ref Matrix<T>? scratch)
        where T : unmanaged, IEquatable<T>, IFormattable
        => IsDense(destination) ? destination : Scratch(destination.RowCount, destination.ColumnCount, ref scratch);

    /// <summary>Copies a dense scratch result into a destination of other storage; nothing when they are the same.</summary>
    public static void CopyBack<T>(Matrix<T> dense, Matrix<T> destination)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (!ReferenceEquals(dense, destination))
        {
            dense.CopyTo(destination);
        }
    }

    /// <summary>A dense rows × columns matrix kept in <paramref name="scratch"/>: the one there when its shape fits, else a new one.</summary>
    public static Matrix<T> Scratch<T>(int rows, int columns, ref Matrix<T>? scratch)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (scratch is null || scratch.RowCount != rows || scratch.ColumnCount != columns)
        {
            scratch = Matrix<T>.Build.Dense(rows, columns);
        }

        return scratch;
    }
}
