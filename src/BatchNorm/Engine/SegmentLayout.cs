using System;

namespace BatchNorm;

/// <summary>
/// How an N×D batch is cut into segments, the runs of values normalized together with one μ and σ².
/// The batch is a grid of <see cref="RowBlocks"/> × <see cref="ColumnBlocks"/> segments, each
/// <see cref="SegmentRows"/> rows by <see cref="SegmentColumns"/> columns; segment (rowBlock, columnBlock) has the
/// index columnBlock·RowBlocks + rowBlock in every per-segment array.
/// </summary>
/// <remarks>
/// <para>Two geometries:</para>
/// <list type="bullet">
/// <item><b>Column blocks</b> (batch norm, ghost batches): a segment is a block of rows of one channel's columns (one
/// column, or the S columns of a channel of S positions); the kernels walk down it. It is one contiguous span of
/// MathNet's column-major storage unless it takes only some rows of several columns (see <see cref="Contiguous"/>).</item>
/// <item><b>Row groups</b> (layer and group norm): a segment is a group of adjacent columns of one row, strided in
/// storage. The kernels sweep down the contiguous columns instead and treat the rows as SIMD lanes, one segment per lane.</item>
/// </list>
/// </remarks>
internal readonly record struct SegmentLayout
{
    private SegmentLayout(int rows, int columns, int rowBlocks, int columnBlocks, bool byRow)
    {
        Rows = rows;
        Columns = columns;
        RowBlocks = rowBlocks;
        ColumnBlocks = columnBlocks;
        ByRow = byRow;
    }

    /// <summary>Gets N.</summary>
    public int Rows { get; }

    /// <summary>Gets D.</summary>
    public int Columns { get; }

    /// <summary>Gets the number of segments down a column.</summary>
    public int RowBlocks { get; }

    /// <summary>Gets the number of segments across a row.</summary>
    public int ColumnBlocks { get; }

    /// <summary>Gets whether segments are row groups (true) or column blocks (false).</summary>
    public bool ByRow { get; }

    /// <summary>Gets the rows of one segment.</summary>
    public int SegmentRows => RowBlocks == 0 ? 0 : Rows / RowBlocks;

    /// <summary>Gets the columns of one segment.</summary>
    public int SegmentColumns => Columns / ColumnBlocks;

    /// <summary>Gets the number of segments.</summary>
    public int Count => RowBlocks * ColumnBlocks;

    /// <summary>
    /// The columns taken <paramref name="columns"/>/<paramref name="channels"/> at a time (one channel's positions; 1 for
    /// plain batch norm), each such group cut into <paramref name="rowBlocks"/> blocks of consecutive rows (1 without ghost
    /// batches).
    /// </summary>
    public static SegmentLayout ColumnBlocksOf(int rows, int columns, int rowBlocks, int channels) => new(rows, columns, rowBlocks, channels, byRow: false);

    /// <summary>Gets the values of one segment.</summary>
    public int SegmentLength => SegmentRows * SegmentColumns;

    /// <summary>
    /// Gets whether each column-block segment is one contiguous run of the column-major data, segment k at
    /// [k·<see cref="SegmentLength"/>, (k + 1)·<see cref="SegmentLength"/>): true unless a segment spans several columns
    /// and only some of their rows (ghost batches over channels of several positions).
    /// </summary>
    public bool Contiguous => !ByRow && (RowBlocks == 1 || SegmentColumns == 1);

    /// <summary>Each row cut into <paramref name="groups"/> groups of adjacent columns (1 for layer norm).</summary>
    public static SegmentLayout RowGroupsOf(int rows, int columns, int groups) => new(rows, columns, rows, groups, byRow: true);

    /// <summary>
    /// Copies column-block segment k out of the column-major data into one contiguous run of doubles (<paramref name="into"/>,
    /// of <see cref="SegmentLength"/> values, widened exactly): its S column pieces of <see cref="SegmentRows"/> values, in
    /// column order. Also serves to widen a contiguous segment of float data for code that reads doubles.
    /// </summary>
    public void Gather<T>(ReadOnlySpan<T> data, int k, Span<double> into)
        where T : unmanaged
    {
        for (int s = 0; s < SegmentColumns; s++)
        {
            Elements<T>.Widen(data.Slice(PieceOffset(k, s), SegmentRows), into.Slice(s * SegmentRows, SegmentRows));
        }
    }

    /// <summary>The inverse of <see cref="Gather{T}"/>: writes a contiguous run back into segment k's place in the data, each value rounded to T.</summary>
    public void Scatter<T>(ReadOnlySpan<double> from, int k, Span<T> data)
        where T : unmanaged
    {
        for (int s = 0; s < SegmentColumns; s++)
        {
            Elements<T>.Narrow(from.Slice(s * SegmentRows, SegmentRows), data.Slice(PieceOffset(k, s), SegmentRows));
        }
    }

    /// <summary>Where column piece s of column-block segment k starts: column (k / RowBlocks)·S + s, row (k mod RowBlocks)·SegmentRows.</summary>
    private int PieceOffset(int k, int s) => ((((k / RowBlocks) * SegmentColumns) + s) * Rows) + ((k % RowBlocks) * SegmentRows);

    /// <summary>The index of the segment holding element (row, column).</summary>
    public int IndexOf(int row, int column) => ((column / SegmentColumns) * RowBlocks) + (row / SegmentRows);
}
