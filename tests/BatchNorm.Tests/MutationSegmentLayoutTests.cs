using System;
using System.Linq;

namespace BatchNorm.Tests;

/// <summary>
/// The engine's geometry, called directly: every derived size of both geometries, which column-block layouts are
/// contiguous, the segment of an element, and gathering a segment out of column-major data and scattering it back,
/// against indices worked out here.
/// </summary>
public class MutationSegmentLayoutTests
{
    [Fact]
    public void Column_blocks_of_channels_with_ghost_batches_have_these_sizes()
    {
        // 6 rows, 2 channels of 2 columns each, 3 blocks of rows: 6 segments of 2 rows by 2 columns.
        SegmentLayout layout = SegmentLayout.ColumnBlocksOf(6, 4, 3, 2);
        Assert.Equal((6, 4, 3, 2, false), (layout.Rows, layout.Columns, layout.RowBlocks, layout.ColumnBlocks, layout.ByRow));
        Assert.Equal((2, 2, 6, 4), (layout.SegmentRows, layout.SegmentColumns, layout.Count, layout.SegmentLength));
        Assert.False(layout.Contiguous);
    }

    [Fact]
    public void A_column_block_layout_is_contiguous_with_one_block_of_rows_or_one_column_per_segment()
    {
        Assert.True(SegmentLayout.ColumnBlocksOf(6, 4, 1, 2).Contiguous);
        Assert.True(SegmentLayout.ColumnBlocksOf(6, 4, 3, 4).Contiguous);
        Assert.True(SegmentLayout.ColumnBlocksOf(6, 4, 1, 4).Contiguous);
        Assert.False(SegmentLayout.ColumnBlocksOf(6, 4, 2, 2).Contiguous);
        Assert.False(SegmentLayout.ColumnBlocksOf(6, 4, 3, 1).Contiguous);
    }

    [Fact]
    public void Row_groups_have_one_segment_per_row_and_group_and_are_never_contiguous()
    {
        SegmentLayout layout = SegmentLayout.RowGroupsOf(3, 6, 2);
        Assert.Equal((3, 6, 3, 2, true), (layout.Rows, layout.Columns, layout.RowBlocks, layout.ColumnBlocks, layout.ByRow));
        Assert.Equal((1, 3, 6, 3), (layout.SegmentRows, layout.SegmentColumns, layout.Count, layout.SegmentLength));
        Assert.False(layout.Contiguous);
        Assert.False(SegmentLayout.RowGroupsOf(1, 6, 6).Contiguous);

        // No rows: no segments down a column, and a segment of no rows rather than a division by zero.
        SegmentLayout empty = SegmentLayout.RowGroupsOf(0, 6, 2);
        Assert.Equal((0, 0, 0), (empty.SegmentRows, empty.Count, empty.SegmentLength));
    }

    [Fact]
    public void The_segment_of_an_element_is_its_column_block_times_the_row_blocks_plus_its_row_block()
    {
        SegmentLayout layout = SegmentLayout.ColumnBlocksOf(6, 4, 3, 2);
        Assert.Equal(0, layout.IndexOf(0, 0));
        Assert.Equal(0, layout.IndexOf(1, 1));
        Assert.Equal(1, layout.IndexOf(2, 0));
        Assert.Equal(2, layout.IndexOf(5, 1));
        Assert.Equal(3, layout.IndexOf(0, 2));
        Assert.Equal(4, layout.IndexOf(3, 2));
        Assert.Equal(5, layout.IndexOf(4, 3));

        SegmentLayout rows = SegmentLayout.RowGroupsOf(3, 6, 2);
        Assert.Equal(2, rows.IndexOf(2, 2));
        Assert.Equal(4, rows.IndexOf(1, 3));
    }

    [Fact]
    public void Gather_takes_a_segments_column_pieces_in_column_order_and_scatter_puts_them_back()
    {
        // Column-major 6×4 data whose element (r, c) is 10·r + c.
        SegmentLayout layout = SegmentLayout.ColumnBlocksOf(6, 4, 3, 2);
        double[] data = Enumerable.Range(0, 24).Select(k => (10.0 * (k % 6)) + (k / 6)).ToArray();
        double[] into = new double[4];
        layout.Gather(data, 4, into);
        Assert.Equal([22.0, 32, 23, 33], into);
        layout.Gather(data, 0, into);
        Assert.Equal([0.0, 10, 1, 11], into);
        layout.Gather(data, 2, into);
        Assert.Equal([40.0, 50, 41, 51], into);

        double[] target = new double[24];
        layout.Scatter([1.0, 2, 3, 4], 5, target);
        for (int k = 0; k < 24; k++)
        {
            (int r, int c) = (k % 6, k / 6);
            double expected = (r, c) switch { (4, 2) => 1, (5, 2) => 2, (4, 3) => 3, (5, 3) => 4, _ => 0 };
            Assert.Equal(expected, target[k]);
        }
    }
}
