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
/// <item><b>Column blocks</b> (batch norm, ghost batches): a segment is a block of rows of one column, a contiguous
/// span of MathNet's column-major storage; the kernels walk down it.</item>
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

    /// <summary>Each column cut into <paramref name="rowBlocks"/> blocks of consecutive rows (1 for plain batch norm).</summary>
    public static SegmentLayout ColumnBlocksOf(int rows, int columns, int rowBlocks) => new(rows, columns, rowBlocks, columns, byRow: false);

    /// <summary>Each row cut into <paramref name="groups"/> groups of adjacent columns (1 for layer norm).</summary>
    public static SegmentLayout RowGroupsOf(int rows, int columns, int groups) => new(rows, columns, rows, groups, byRow: true);

    /// <summary>The index of the segment holding element (row, column).</summary>
    public int IndexOf(int row, int column) => ((column / SegmentColumns) * RowBlocks) + (row / SegmentRows);
}
