using System;
using System.Globalization;
using System.Linq;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Saved state round-trips everything a layer can hold, and nothing else; a bad file changes nothing.</summary>
public class StateRoundTripTests
{
    [Fact]
    public void Values_an_import_would_refuse_cannot_be_exported_either()
    {
        var layer = new BatchNormLayer(3);
        layer.Gamma[1] = double.NaN;
        var e = Assert.Throws<InvalidOperationException>(layer.ExportState);
        Assert.Contains("gamma[1] is NaN", e.Message);
        layer.Gamma[1] = 1;
        layer.RunningVariance[2] = -0.5;
        Assert.Contains("runningVariance[2] is -0.5", Assert.Throws<InvalidOperationException>(layer.ExportState).Message);
        layer.RunningVariance[2] = 0;
        layer.Beta[0] = double.NegativeInfinity;
        Assert.Contains("beta[0]", Assert.Throws<InvalidOperationException>(layer.ExportState).Message);
        layer.Beta[0] = 0;

        // A running variance of exactly 0 is a state the layer reaches (a constant column, momentum 1), and round-trips.
        Assert.Equal(0, BatchNormLayer.FromState(layer.ExportState()).RunningVariance[2]);
    }

    [Fact]
    public void A_duplicate_field_is_rejected_by_name()
    {
        string json = new BatchNormLayer(2).ExportState();
        string duplicated = json.Replace("\"epsilon\":", "\"epsilon\": 0.5,\n  \"epsilon\":", StringComparison.Ordinal);
        AssertRejected(duplicated, "'epsilon' more than once");
    }

    [Theory]
    [InlineData("1.0")]
    [InlineData("\"1\"")]
    [InlineData("1e0")]
    [InlineData("2")]
    public void A_version_other_than_the_number_1_is_reported_as_the_file_has_it(string version)
    {
        JsonNode state = JsonNode.Parse(new BatchNormLayer(2).ExportState())!;
        state["version"] = JsonNode.Parse(version);
        AssertRejected(state.ToJsonString(), $"format version {version};");
    }

    [Fact]
    public void A_huge_string_value_is_quoted_by_a_short_prefix_only()
    {
        JsonNode state = JsonNode.Parse(new BatchNormLayer(2).ExportState())!;
        state["format"] = new string('x', 100_000);
        var e = AssertRejected(state.ToJsonString(), "xxxxxxxx…");
        Assert.True(e.Message.Length < 300, $"a message of {e.Message.Length} characters");
        state["format"] = "BatchNorm.BatchNormLayer";
        state["epsilon"] = new string('9', 5_000);
        Assert.True(AssertRejected(state.ToJsonString(), "'epsilon'").Message.Length < 300);
    }

    [Fact]
    public void The_batch_count_saturates_rather_than_wrapping_to_a_negative_number()
    {
        JsonNode state = JsonNode.Parse(new BatchNormLayer(1, momentum: null).ExportState())!;
        state["batchesTracked"] = long.MaxValue;
        var layer = BatchNormLayer.FromState(state.ToJsonString());
        layer.VirtualBatchSize = 2;
        layer.Forward(Matrix<double>.Build.DenseOfColumnArrays(new[] { 1.0, 2, 3, 5 }));
        Assert.Equal(long.MaxValue, layer.BatchesTracked);
        Assert.True(double.IsFinite(layer.RunningMean[0]));
        Assert.Equal(layer.ExportState(), BatchNormLayer.FromState(layer.ExportState()).ExportState());
    }

    [Fact]
    public void A_state_written_by_version_0_1_still_imports()
    {
        const string written = """
            {
              "format": "BatchNorm.BatchNormLayer",
              "version": 1,
              "features": 2,
              "epsilon": 0.001,
              "momentum": 0.25,
              "gamma": [1.5, -0.5],
              "beta": [0, 0.125],
              "runningMean": [3, -1],
              "runningVariance": [2, 0.5],
              "batchesTracked": 7
            }
            """;
        BatchNormLayer layer = BatchNormLayer.FromState(written);
        Assert.Equal(0.25, layer.Momentum);
        Assert.Equal([1.5, -0.5], layer.Gamma.ToArray());
        Assert.Equal(7, layer.BatchesTracked);
        Assert.Null(layer.VirtualBatchSize);
    }

    /// <summary>
    /// Exports of generated layers of every type, truncated, with a field removed, duplicated or given a value of another
    /// kind, or with one character changed: the import either succeeds and round-trips, or throws the documented
    /// exception and leaves the target exactly as it was.
    /// </summary>
    [BatchNormProperty]
    public void Mutated_exports_either_import_and_round_trip_or_are_refused_leaving_the_target_as_it_was(StateMutation t)
    {
        (string kind, int seed, int mutation, int position, string? value) = t;
        string json = Trained(kind, seed).ExportState();
        string mutated = Mutate(json, mutation, position, value);
        INormalizationLayer target = Trained(kind, seed + 1);
        string before = target.ExportState();
        NormalizationCache? cache = target.Cache;
        try
        {
            target.ImportState(mutated);
        }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            Assert.Equal(before, target.ExportState());
            Assert.Same(cache, target.Cache);
            return;
        }

        // Accepted: what was imported is what the text says, and it exports and imports again to the same.
        string exported = target.ExportState();
        INormalizationLayer again = ContractTests.Create(kind);
        again.ImportState(exported);
        Assert.Equal(exported, again.ExportState());
        Assert.Null(target.Cache);
    }

    private static string Mutate(string json, int mutation, int position, string? text)
    {
        JsonNode? value = text is null ? null : JsonNode.Parse(text);
        JsonObject state = JsonNode.Parse(json)!.AsObject();
        string field = state.ElementAt(position % state.Count).Key;
        switch (mutation)
        {
            case 0:
                return json[..(position % json.Length)];
            case 1:
                state.Remove(field);
                return state.ToJsonString();
            case 2:
                state[field] = value?.DeepClone();
                return state.ToJsonString();
            case 3:
                return json.Replace($"\"{field}\":", $"\"{field}\": {value?.ToJsonString() ?? "null"},\n  \"{field}\":", StringComparison.Ordinal);
            default:
                int at = position % json.Length;
                const string characters = "0123456789-.e\"[]{},: x";
                char replacement = characters[position % characters.Length];
                return string.Concat(json.AsSpan(0, at), replacement.ToString(CultureInfo.InvariantCulture), json.AsSpan(at + 1));
        }
    }

    /// <summary>A layer of <paramref name="kind"/> after one step from <paramref name="seed"/>: γ, β and the running statistics away from their initial values.</summary>
    internal static INormalizationLayer Trained(string kind, int seed)
    {
        INormalizationLayer layer = ContractTests.Create(kind);
        (Matrix<double> x, Matrix<double> dy) = ContractTests.Batch(8, 6, seed);
        layer.Forward(x);
        layer.Backward(dy);
        foreach (LayerParameter p in layer.Parameters)
        {
            p.Value.Subtract(p.Gradient * 0.1, p.Value);
        }

        return layer;
    }

    private static FormatException AssertRejected(string json, string message)
    {
        var target = new BatchNormLayer(2);
        target.Forward(Matrix<double>.Build.Dense(3, 2, (i, j) => i * (j + 1)));
        var snapshot = new LayerSnapshot(target);
        var e = Assert.Throws<FormatException>(() => target.ImportState(json));
        Assert.Contains(message, e.Message);
        snapshot.AssertUnchanged();
        return e;
    }
}
