using System;

namespace BatchNorm.Tests;

/// <summary>
/// Step faults called directly: packing into one int and back, the first of two faults, and the exception and exact
/// message of every cause in every geometry (a feature, a channel of several columns, a row group), including the
/// fallbacks for causes a step of that direction does not produce.
/// </summary>
public class MutationStepFaultTests
{
    [Fact]
    public void A_fault_packs_into_sixteen_times_its_index_plus_its_cause_and_none_into_the_largest_int()
    {
        Assert.False(StepFault.None.Failed);
        Assert.Equal((-1, FaultCause.None), (StepFault.None.Index, StepFault.None.Cause));
        Assert.Equal(int.MaxValue, StepFault.None.Pack());
        Assert.Equal(StepFault.None, StepFault.Unpack(int.MaxValue));

        var fault = new StepFault(3, FaultCause.Output);
        Assert.True(fault.Failed);
        Assert.Equal(51, fault.Pack());
        Assert.Equal(fault, StepFault.Unpack(51));
        Assert.Equal(new StepFault(0, FaultCause.Statistics), StepFault.Unpack(1));
        Assert.Equal(new StepFault(2, FaultCause.InputGradient), StepFault.Unpack(39));
        Assert.True(new StepFault(0, FaultCause.Statistics).Failed);
    }

    [Fact]
    public void The_first_of_two_faults_is_the_one_of_lower_index_then_of_earlier_cause()
    {
        var late = new StepFault(5, FaultCause.Statistics);
        var early = new StepFault(2, FaultCause.InputGradient);
        Assert.Equal(early, StepFault.First(late, early));
        Assert.Equal(early, StepFault.First(early, late));
        Assert.Equal(new StepFault(4, FaultCause.Statistics), StepFault.First(new StepFault(4, FaultCause.Parameters), new StepFault(4, FaultCause.Statistics)));
        Assert.Equal(late, StepFault.First(StepFault.None, late));
        Assert.Equal(late, StepFault.First(late, StepFault.None));
        Assert.Equal(StepFault.None, StepFault.First(StepFault.None, StepFault.None));
    }

    [Fact]
    public void Forward_faults_of_a_feature_name_its_column()
    {
        var layer = new BatchNormLayer(3);
        layer.Gamma.SetValues([1, 2.5, 1]);
        layer.Beta.SetValues([0, -0.5, 0]);
        layer.RunningMean[1] = double.NaN;
        layer.RunningVariance[1] = -1;
        SegmentLayout layout = SegmentLayout.ColumnBlocksOf(4, 3, 1, 3);

        ArgumentException statistics = Assert.IsType<ArgumentException>(new StepFault(1, FaultCause.Statistics).ForwardException(layout, layer, "input"));
        Assert.Equal("input", statistics.ParamName);
        Assert.StartsWith("Column 1 of input cannot be normalized: it holds NaN or infinity, or values so large that its statistics overflow.", statistics.Message, StringComparison.Ordinal);

        Exception parameters = new StepFault(1, FaultCause.Parameters).ForwardException(layout, layer, "input");
        Assert.IsType<InvalidOperationException>(parameters);
        Assert.Equal("Feature 1 cannot be normalized: γ[1] = 2.5 and β[1] = -0.5 must be finite, and so must what the layer makes of them.", parameters.Message);

        ArgumentException output = Assert.IsType<ArgumentException>(new StepFault(1, FaultCause.Output).ForwardException(layout, layer, "x"));
        Assert.Equal("x", output.ParamName);
        Assert.StartsWith("Column 1 of x cannot be normalized: y = γ·x̂ + β overflows the range of double (γ[1] = 2.5, β[1] = -0.5).", output.Message, StringComparison.Ordinal);

        Exception running = new StepFault(1, FaultCause.RunningStatistics).ForwardException(layout, layer, "input");
        Assert.IsType<InvalidOperationException>(running);
        Assert.Equal("Feature 1 cannot be normalized: RunningMean[1] = NaN and RunningVariance[1] = -1, but the running mean must be finite and the running variance finite and at least 0.", running.Message);

        // A cause no Forward produces, and running statistics of a layer without them, fall through to a plain description.
        Exception other = new StepFault(2, FaultCause.OutputGradient).ForwardException(layout, layer, "input");
        Assert.IsType<InvalidOperationException>(other);
        Assert.Equal("Column 2 of input: OutputGradient.", other.Message);
        Assert.Equal("Column 0 of input: RunningStatistics.", new StepFault(0, FaultCause.RunningStatistics).ForwardException(layout, new LayerNormLayer(3), "input").Message);
    }

    [Fact]
    public void Forward_faults_of_a_channel_of_several_columns_name_the_channel_and_its_columns()
    {
        BatchNormLayer layer = BatchNormLayer.Spatial(3, 2);
        layer.Gamma[2] = 4;
        layer.Beta[2] = 0.25;
        layer.RunningVariance[2] = double.PositiveInfinity;
        SegmentLayout layout = SegmentLayout.ColumnBlocksOf(4, 6, 1, 3);
        Assert.StartsWith(
            "Channel 2 (columns 4–5) of input cannot be normalized: it holds NaN or infinity, or values so large that its statistics overflow.",
            new StepFault(2, FaultCause.Statistics).ForwardException(layout, layer, "input").Message,
            StringComparison.Ordinal);
        Assert.Equal(
            "Channel 2 cannot be normalized: γ[2] = 4 and β[2] = 0.25 must be finite, and so must what the layer makes of them.",
            new StepFault(2, FaultCause.Parameters).ForwardException(layout, layer, "input").Message);
        Assert.StartsWith(
            "Channel 2 (columns 4–5) of input cannot be normalized: y = γ·x̂ + β overflows the range of double (γ[2] = 4, β[2] = 0.25).",
            new StepFault(2, FaultCause.Output).ForwardException(layout, layer, "input").Message,
            StringComparison.Ordinal);
        Assert.Equal(
            "Channel 2 cannot be normalized: RunningMean[2] = 0 and RunningVariance[2] = Infinity, but the running mean must be finite and the running variance finite and at least 0.",
            new StepFault(2, FaultCause.RunningStatistics).ForwardException(layout, layer, "input").Message);
        Assert.Equal("Channel 1 (columns 2–3) of input: Cache.", new StepFault(1, FaultCause.Cache).ForwardException(layout, layer, "input").Message);
    }

    [Fact]
    public void Forward_faults_of_row_groups_name_the_row_and_the_group()
    {
        // 4 rows in 2 groups of 3 columns: segment 7 is group 1 of row 3.
        var layer = new GroupNormLayer(6, 2);
        layer.Gamma[5] = -2;
        layer.Beta[5] = 8;
        SegmentLayout layout = SegmentLayout.RowGroupsOf(4, 6, 2);
        ArgumentException statistics = Assert.IsType<ArgumentException>(new StepFault(7, FaultCause.Statistics).ForwardException(layout, layer, "input"));
        Assert.Equal("input", statistics.ParamName);
        Assert.StartsWith(
            "Row 3 of input cannot be normalized: group 1 holds NaN or infinity, or values so large that its statistics overflow.",
            statistics.Message,
            StringComparison.Ordinal);
        Assert.StartsWith(
            "Row 0 of input cannot be normalized: group 0 holds NaN or infinity",
            new StepFault(0, FaultCause.Statistics).ForwardException(layout, layer, "input").Message,
            StringComparison.Ordinal);

        // Output and parameter faults of row layouts are numbered by column.
        Assert.StartsWith(
            "Column 5 of input cannot be normalized: y = γ·x̂ + β overflows the range of double (γ[5] = -2, β[5] = 8).",
            new StepFault(5, FaultCause.Output).ForwardException(layout, layer, "input").Message,
            StringComparison.Ordinal);
        Assert.Equal(
            "Feature 5 cannot be normalized: γ[5] = -2 and β[5] = 8 must be finite, and so must what the layer makes of them.",
            new StepFault(5, FaultCause.Parameters).ForwardException(layout, layer, "input").Message);
        Assert.Equal("Row 1 of input: InputGradient.", new StepFault(5, FaultCause.InputGradient).ForwardException(layout, layer, "input").Message);
    }

    [Fact]
    public void Backward_faults_name_the_column_and_say_what_is_not_finite()
    {
        ArgumentException dy = Assert.IsType<ArgumentException>(new StepFault(2, FaultCause.OutputGradient).BackwardException("outputGradient", BackwardStrategy.Staged));
        Assert.Equal("outputGradient", dy.ParamName);
        Assert.StartsWith("Column 2 of outputGradient cannot be back-propagated: it holds NaN or infinity, or values so large that its statistics overflow.", dy.Message, StringComparison.Ordinal);

        Exception cache = new StepFault(1, FaultCause.Cache).BackwardException("outputGradient", BackwardStrategy.Staged);
        Assert.IsType<InvalidOperationException>(cache);
        Assert.Equal(
            "Column 1 of the last Forward's normalized values is not finite (that Forward's input held NaN or infinity there, which inference passes through), so nothing can be back-propagated through it; the output gradient is fine.",
            cache.Message);

        ArgumentException dx = Assert.IsType<ArgumentException>(new StepFault(3, FaultCause.InputGradient).BackwardException("dy", BackwardStrategy.Staged));
        Assert.Equal("dy", dx.ParamName);
        Assert.StartsWith(
            "Column 3 of dy cannot be back-propagated: dx, or an intermediate of the staged strategy, overflows the range of double although dy and its sums are finite (γ/√(σ² + ε) times dy is too large; the staged strategy's dσ² and dμ overflow sooner than the closed form's terms).",
            dx.Message,
            StringComparison.Ordinal);

        Exception other = new StepFault(4, FaultCause.Statistics).BackwardException("outputGradient", BackwardStrategy.ClosedForm);
        Assert.IsType<InvalidOperationException>(other);
        Assert.Equal("Column 4: Statistics.", other.Message);
    }
}
