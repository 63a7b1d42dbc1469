using System;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// Saved state field by field: what each layer type writes, written out here in full, and every rule of the import on
/// both sides of its boundary, with the message it gives.
/// </summary>
public class StateBoundaryTests
{
    [Fact]
    public void Each_layer_type_writes_exactly_its_fields_in_order()
    {
        var norm = new BatchNormLayer(2, epsilon: 0.5, momentum: null);
        norm.Gamma.SetValues([1.5, -0.5]);
        norm.Beta.SetValues([0, 0.125]);
        Assert.Equal(
            """{"format":"BatchNorm.BatchNormLayer","version":1,"features":2,"epsilon":0.5,"gamma":[1.5,-0.5],"beta":[0,0.125],"momentum":null,"runningMean":[0,0],"runningVariance":[1,1],"batchesTracked":0,"virtualBatchSize":null}""",
            Compact(norm.ExportState()));
        norm.VirtualBatchSize = 4;
        Assert.Contains("\"momentum\":null", Compact(norm.ExportState()), StringComparison.Ordinal);
        Assert.EndsWith("\"virtualBatchSize\":4}", Compact(norm.ExportState()), StringComparison.Ordinal);

        var renorm = new BatchRenormLayer(1, epsilon: 0.25, momentum: 0.125) { RMax = 3, DMax = 0.5 };
        renorm.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 3 }));
        Assert.Equal(
            """{"format":"BatchNorm.BatchRenormLayer","version":1,"features":1,"epsilon":0.25,"gamma":[1],"beta":[0],"momentum":0.125,"runningMean":[0.25],"runningVariance":[1.125],"batchesTracked":1,"rMax":3,"dMax":0.5}""",
            Compact(renorm.ExportState()));

        Assert.Equal(
            """{"format":"BatchNorm.GroupNormLayer","version":1,"features":4,"epsilon":1E-05,"gamma":[1,1,1,1],"beta":[0,0,0,0],"groups":2}""",
            Compact(new GroupNormLayer(4, 2).ExportState()));
        Assert.Equal(
            """{"format":"BatchNorm.LayerNormLayer","version":1,"features":1,"epsilon":2,"gamma":[1],"beta":[0]}""",
            Compact(new LayerNormLayer(1, epsilon: 2).ExportState()));
    }

    [Theory]
    [InlineData("0")]
    [InlineData("1")]
    [InlineData("null")]
    [InlineData("0.5")]
    public void Momentum_is_imported_at_both_ends_of_the_unit_interval_and_as_null(string momentum)
    {
        BatchNormLayer layer = Import(new BatchNormLayer(2), ("momentum", momentum));
        Assert.Equal(momentum == "null" ? null : double.Parse(momentum, System.Globalization.CultureInfo.InvariantCulture), layer.Momentum);
    }

    [Theory]
    [InlineData("-5E-324")]
    [InlineData("1.0000000000000002")]
    [InlineData("-1")]
    public void Momentum_just_outside_the_unit_interval_is_refused(string momentum)
        => AssertRefused(new BatchNormLayer(2), ("momentum", momentum), "'momentum' must be a number in [0, 1] or null.");

    [Fact]
    public void A_running_variance_of_zero_is_imported_and_one_just_below_is_refused()
    {
        BatchNormLayer layer = Import(new BatchNormLayer(2), ("runningVariance", "[0, 3]"));
        Assert.Equal([0.0, 3], layer.RunningVariance.ToArray());
        AssertRefused(new BatchNormLayer(2), ("runningVariance", "[1, -5E-324]"), "'runningVariance[1]' must not be negative, not -5E-324.");

        // The running mean may be negative.
        Assert.Equal([-2.0, -0.5], Import(new BatchNormLayer(2), ("runningMean", "[-2, -0.5]")).RunningMean.ToArray());
        AssertRefused(new BatchNormLayer(2), ("runningMean", "[0, 1e999]"), "'runningMean[1]' must be a finite number, not 1e999.");
    }

    [Fact]
    public void The_batch_count_is_imported_from_zero_and_refused_below()
    {
        Assert.Equal(0, Import(new BatchNormLayer(2), ("batchesTracked", "0")).BatchesTracked);
        Assert.Equal(12, Import(new BatchNormLayer(2), ("batchesTracked", "12")).BatchesTracked);
        AssertRefused(new BatchNormLayer(2), ("batchesTracked", "-1"), "'batchesTracked' must be a non-negative integer.");
        AssertRefused(new BatchNormLayer(2), ("batchesTracked", "1.5"), "'batchesTracked' must be a non-negative integer.");
    }

    [Fact]
    public void Epsilon_is_imported_when_positive_and_refused_at_zero()
    {
        Assert.Equal(5E-324, Import(new BatchNormLayer(2), ("epsilon", "5E-324")).Epsilon);
        AssertRefused(new BatchNormLayer(2), ("epsilon", "0"), "'epsilon' must be positive, not 0.");
        AssertRefused(new BatchNormLayer(2), ("epsilon", "-0.5"), "'epsilon' must be positive, not -0.5.");
        AssertRefused(new BatchNormLayer(2), ("epsilon", "\"0.5\""), "The field 'epsilon' must be a JSON number, not string.");
        AssertRefused(new BatchNormLayer(2), ("epsilon", "1e999"), "'epsilon' must be a finite number, not 1e999.");
    }

    [Fact]
    public void The_feature_count_must_be_a_positive_integer()
    {
        Assert.Equal(1, NormalizationLayer.FromState(new BatchNormLayer(1).ExportState()).Features);
        foreach (string features in new[] { "0", "-2", "1.5", "3000000000" })
        {
            var e = Assert.Throws<FormatException>(() => NormalizationLayer.FromState(With(new BatchNormLayer(2).ExportState(), ("features", features))));
            Assert.Equal("'features' must be a positive integer.", e.Message);
        }
    }

    [Fact]
    public void A_ghost_batch_size_is_imported_from_two_or_as_null_or_absent_and_refused_below()
    {
        var ghost = new BatchNormLayer(2) { VirtualBatchSize = 8 };
        Assert.Equal(2, Import(ghost, ("virtualBatchSize", "2")).VirtualBatchSize);
        Assert.Null(Import(new BatchNormLayer(2) { VirtualBatchSize = 8 }, ("virtualBatchSize", "null")).VirtualBatchSize);
        JsonObject absent = JsonNode.Parse(new BatchNormLayer(2).ExportState())!.AsObject();
        absent.Remove("virtualBatchSize");
        var target = new BatchNormLayer(2) { VirtualBatchSize = 8 };
        target.ImportState(absent.ToJsonString());
        Assert.Null(target.VirtualBatchSize);

        AssertRefused(new BatchNormLayer(2), ("virtualBatchSize", "1"), "'virtualBatchSize' must be null or an integer of at least 2, not 1.");
        AssertRefused(new BatchNormLayer(2), ("virtualBatchSize", "\"4\""), "'virtualBatchSize' must be null or an integer of at least 2, not \"4\".");
        AssertRefused(new BatchNormLayer(2), ("virtualBatchSize", "2.5"), "'virtualBatchSize' must be null or an integer of at least 2, not 2.5.");
    }

    [Fact]
    public void A_ghost_batch_state_is_refused_by_a_synchronized_layer()
    {
        var synchronized = new BatchNormLayer(2) { StatisticsExchange = new SingleWorker() };
        string ghost = new BatchNormLayer(2) { VirtualBatchSize = 4 }.ExportState();
        var e = Assert.Throws<FormatException>(() => synchronized.ImportState(ghost));
        Assert.Equal("The saved state uses ghost batches ('virtualBatchSize'), which do not combine with this layer's StatisticsExchange.", e.Message);
        Assert.Null(synchronized.VirtualBatchSize);

        // Without ghost batches the synchronized layer imports as any other.
        synchronized.ImportState(new BatchNormLayer(2, momentum: 0.5).ExportState());
        Assert.Equal(0.5, synchronized.Momentum);
    }

    [Fact]
    public void The_group_count_must_be_a_positive_integer()
    {
        string json = new GroupNormLayer(4, 2).ExportState();
        foreach (string groups in new[] { "0", "-2", "2.5" })
        {
            var e = Assert.Throws<FormatException>(() => NormalizationLayer.FromState(With(json, ("groups", groups))));
            Assert.Contains("'groups' must be a positive integer.", e.Message, StringComparison.Ordinal);
            Assert.Throws<FormatException>(() => new GroupNormLayer(4, 2).ImportState(With(json, ("groups", groups))));
        }

        Assert.Equal("The field 'groups' must be a JSON number, not string.", Assert.Throws<FormatException>(() => NormalizationLayer.FromState(With(json, ("groups", "\"2\"")))).Message);
        var invalid = Assert.Throws<FormatException>(() => NormalizationLayer.FromState(With(json, ("groups", "3"))));
        Assert.StartsWith("The saved state does not describe a valid BatchNorm.GroupNormLayer: 4 features cannot be split into 3 groups", invalid.Message, StringComparison.Ordinal);
        Assert.IsType<ArgumentException>(invalid.InnerException);
    }

    [Fact]
    public void Arrays_must_have_one_finite_number_per_feature()
    {
        AssertRefused(new BatchNormLayer(3), ("gamma", "[1, 2]"), "'gamma' has 2 values, but 'features' is 3.");
        AssertRefused(new BatchNormLayer(3), ("beta", "[1, 2, 3, 4]"), "'beta' has 4 values, but 'features' is 3.");
        AssertRefused(new BatchNormLayer(3), ("gamma", "[1, \"2\", 3]"), "'gamma[1]' must be a finite number, not \"2\".");
        AssertRefused(new BatchNormLayer(3), ("beta", "[1, 2, null]"), "'beta[2]' must be a finite number, not null.");
        AssertRefused(new BatchNormLayer(3), ("runningMean", "{}"), "The field 'runningMean' must be a JSON array, not object.");

        // γ and β may be negative: only the running variance must not be.
        BatchNormLayer layer = Import(new BatchNormLayer(3), ("gamma", "[-1, -2, -3]"));
        Assert.Equal([-1.0, -2, -3], layer.Gamma.ToArray());
    }

    [Fact]
    public void The_format_and_the_root_are_checked_first_and_quoted_short()
    {
        string json = new BatchNormLayer(2).ExportState();
        AssertRefused(new BatchNormLayer(2), ("format", "\"BatchNorm.LayerNormLayer\""), "The saved state has format 'BatchNorm.LayerNormLayer', not 'BatchNorm.BatchNormLayer'.");
        AssertRefused(new BatchNormLayer(2), ("format", "7"), "The field 'format' must be a JSON string, not number.");
        Assert.Equal("The saved state must be a JSON object.", Assert.Throws<FormatException>(() => new BatchNormLayer(2).ImportState("\"state\"")).Message);
        Assert.StartsWith("The saved state is not valid JSON (is it truncated?): ", Assert.Throws<FormatException>(() => new BatchNormLayer(2).ImportState(json[..^2])).Message, StringComparison.Ordinal);

        // Forty characters are quoted whole, forty-one are cut to forty and an ellipsis.
        string forty = new('a', 40), fortyOne = new('b', 41);
        AssertRefused(new BatchNormLayer(2), ("format", $"\"{forty}\""), $"The saved state has format '{forty}', not 'BatchNorm.BatchNormLayer'.");
        AssertRefused(new BatchNormLayer(2), ("format", $"\"{fortyOne}\""), $"The saved state has format '{fortyOne[..40]}…', not 'BatchNorm.BatchNormLayer'.");

        var foreign = Assert.Throws<FormatException>(() => NormalizationLayer.FromState(With(json, ("format", "\"BatchNorm.Dropout\""))));
        Assert.Equal(
            "The saved state has format 'BatchNorm.Dropout', which is not a layer of this library (BatchNorm.BatchNormLayer, BatchNorm.BatchRenormLayer, BatchNorm.LayerNormLayer, BatchNorm.GroupNormLayer, BatchNorm.InstanceNormLayer, BatchNorm.RMSNormLayer).",
            foreign.Message);
        var version = Assert.Throws<FormatException>(() => new BatchNormLayer(2).ImportState(With(json, ("version", "3"))));
        Assert.Equal("The saved state is format version 3; this library reads version 1 only.", version.Message);
    }

    [Fact]
    public void Null_text_is_named()
    {
        Assert.Equal("json", Assert.Throws<ArgumentNullException>(() => NormalizationLayer.FromState(null!)).ParamName);
        Assert.Equal("json", Assert.Throws<ArgumentNullException>(() => BatchNormLayer.FromState(null!)).ParamName);
        Assert.Equal("json", Assert.Throws<ArgumentNullException>(() => new GroupNormLayer(2, 1).ImportState(null!)).ParamName);
    }

    [Fact]
    public void Export_refuses_what_import_would_refuse_and_names_it()
    {
        var layer = new BatchRenormLayer(3);
        layer.Gamma[1] = double.NaN;
        Assert.Equal("The layer cannot be saved: gamma[1] is NaN, but a saved gamma must be a finite number.", Assert.Throws<InvalidOperationException>(layer.ExportState).Message);
        layer.Gamma[1] = -2;
        layer.RunningVariance[0] = -5E-324;
        Assert.Equal("The layer cannot be saved: runningVariance[0] is -5E-324, but a saved runningVariance must not be negative.", Assert.Throws<InvalidOperationException>(layer.ExportState).Message);
        layer.RunningVariance[0] = 0;
        layer.RunningMean[2] = double.PositiveInfinity;
        Assert.Contains("runningMean[2] is Infinity", Assert.Throws<InvalidOperationException>(layer.ExportState).Message, StringComparison.Ordinal);
        layer.RunningMean[2] = -4;
        Assert.Equal(-2, BatchRenormLayer.FromState(layer.ExportState()).Gamma[1]);
    }

    private static string Compact(string json) => JsonNode.Parse(json)!.ToJsonString();

    private static string With(string json, (string Field, string Value) change)
    {
        JsonNode state = JsonNode.Parse(json)!;
        state[change.Field] = JsonNode.Parse(change.Value);
        return state.ToJsonString();
    }

    private static BatchNormLayer Import(BatchNormLayer target, (string Field, string Value) change)
    {
        target.ImportState(With(new BatchNormLayer(target.Features).ExportState(), change));
        return target;
    }

    private static void AssertRefused(BatchNormLayer target, (string Field, string Value) change, string message)
    {
        string before = target.ExportState();
        string json = With(target.ExportState(), change);
        Assert.Equal(message, Assert.Throws<FormatException>(() => target.ImportState(json)).Message);
        Assert.Equal(before, target.ExportState());
    }

    private sealed class SingleWorker : IStatisticsExchange
    {
        public int WorkerCount => 1;

        public int Rank => 0;

        public void AllGather(ReadOnlySpan<double> local, Span<double> gathered) => local.CopyTo(gathered);
    }
}
