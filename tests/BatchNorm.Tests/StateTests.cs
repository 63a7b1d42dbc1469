using System;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Saved state: exact round trips, and every bad file rejected with the target untouched.</summary>
public class StateTests
{
    private static BatchNormLayer Trained(double? momentum = 0.1)
    {
        var layer = new BatchNormLayer(3, epsilon: 1e-3, momentum: momentum);
        var random = new Random(2);
        for (int step = 0; step < 5; step++)
        {
            layer.Forward(Matrix<double>.Build.Dense(7, 3, (_, j) => (Math.PI * j) + random.NextDouble()));
        }

        layer.Gamma[0] = 1.0 / 3;
        layer.Beta[2] = -Math.E;
        return layer;
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(null)]
    public void Export_and_import_round_trip_every_value_exactly(double? momentum)
    {
        BatchNormLayer source = Trained(momentum);
        string json = source.ExportState();
        BatchNormLayer copy = BatchNormLayer.FromState(json);
        Assert.Equal(source.Features, copy.Features);
        Assert.Equal(source.Epsilon, copy.Epsilon);
        Assert.Equal(source.Momentum, copy.Momentum);
        Assert.Equal(source.Gamma.ToArray(), copy.Gamma.ToArray());
        Assert.Equal(source.Beta.ToArray(), copy.Beta.ToArray());
        Assert.Equal(source.RunningMean.ToArray(), copy.RunningMean.ToArray());
        Assert.Equal(source.RunningVariance.ToArray(), copy.RunningVariance.ToArray());
        Assert.Equal(source.BatchesTracked, copy.BatchesTracked);
        Assert.Equal(json, copy.ExportState());

        // Resuming gives the same next step as never having stopped.
        var x = Matrix<double>.Build.Dense(4, 3, (i, j) => i * (j + 1.5));
        Assert.Equal(source.Forward(x), copy.Forward(x));
        Assert.Equal(source.RunningVariance.ToArray(), copy.RunningVariance.ToArray());
    }

    [Fact]
    public void Import_into_an_existing_layer_replaces_its_state_and_drops_the_cache()
    {
        BatchNormLayer target = new(3);
        target.Forward(Matrix<double>.Build.Dense(2, 3, (i, j) => i + j));
        target.ImportState(Trained().ExportState());
        Assert.Equal(1e-3, target.Epsilon);
        Assert.Equal(5, target.BatchesTracked);
        Assert.Null(target.Cache);
        Assert.Throws<InvalidOperationException>(() => target.Backward(Matrix<double>.Build.Dense(2, 3)));
    }

    public static TheoryData<string, string> BadStates => new()
    {
        { "version", "2" },
        { "format", "\"Something.Else\"" },
        { "features", "\"three\"" },
        { "gamma", "[1, 1e400, 1]" },
        { "beta", "[0, \"NaN\", 0]" },
        { "runningMean", "[0, 0]" },
        { "runningVariance", "[1, -1, 1]" },
        { "momentum", "1.5" },
        { "epsilon", "0" },
        { "batchesTracked", "-4" },
    };

    [Theory]
    [MemberData(nameof(BadStates))]
    public void A_bad_value_is_rejected_with_its_name_and_changes_nothing(string field, string value)
    {
        JsonNode state = JsonNode.Parse(Trained().ExportState())!;
        state[field] = JsonNode.Parse(value);
        AssertRejected<FormatException>(state.ToJsonString(), field == "version" ? "version 2" : field);
    }

    [Theory]
    [InlineData("format")]
    [InlineData("version")]
    [InlineData("features")]
    [InlineData("epsilon")]
    [InlineData("momentum")]
    [InlineData("gamma")]
    [InlineData("beta")]
    [InlineData("runningMean")]
    [InlineData("runningVariance")]
    [InlineData("batchesTracked")]
    public void A_missing_field_is_named_and_changes_nothing(string field)
    {
        JsonObject state = JsonNode.Parse(Trained().ExportState())!.AsObject();
        state.Remove(field);
        AssertRejected<FormatException>(state.ToJsonString(), $"lacks the field '{field}'");
    }

    [Fact]
    public void Truncated_json_is_rejected_and_changes_nothing()
    {
        string json = Trained().ExportState();
        AssertRejected<FormatException>(json[..(json.Length / 2)], "not valid JSON");
        AssertRejected<FormatException>("[1, 2]", "JSON object");
    }

    [Fact]
    public void A_state_for_another_feature_count_is_rejected_and_changes_nothing()
    {
        var other = new BatchNormLayer(4);
        AssertRejected<ArgumentException>(other.ExportState(), "4 features, but this layer has 3");
    }

    private static void AssertRejected<TException>(string json, string message)
        where TException : Exception
    {
        BatchNormLayer target = Trained();
        target.Forward(Matrix<double>.Build.Dense(3, 3, (i, j) => i * j));
        var snapshot = new LayerSnapshot(target);
        double epsilon = target.Epsilon;
        double? momentum = target.Momentum;
        var e = Assert.Throws<TException>(() => target.ImportState(json));
        Assert.Contains(message, e.Message);
        snapshot.AssertUnchanged();
        Assert.Equal(epsilon, target.Epsilon);
        Assert.Equal(momentum, target.Momentum);
    }
}

/// <summary>Parameters and inference folding.</summary>
public class ParameterAndFoldingTests
{
    [Fact]
    public void Parameters_are_the_layers_own_named_vectors_and_gradients()
    {
        var layer = new BatchNormLayer(2);
        Assert.Collection(
            layer.Parameters,
            p => Assert.True(p.Name == "gamma" && ReferenceEquals(p.Value, layer.Gamma) && ReferenceEquals(p.Gradient, layer.GammaGradient)),
            p => Assert.True(p.Name == "beta" && ReferenceEquals(p.Value, layer.Beta) && ReferenceEquals(p.Gradient, layer.BetaGradient)));

        // A generic optimizer step through the list moves the layer's own parameters.
        layer.Forward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, 5 }, { 4, 0 } }));
        layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0 }, { 0, 1 }, { 2, -1 } }));
        double expectedBeta0 = 0 - (0.5 * 3);
        foreach (LayerParameter p in layer.Parameters)
        {
            p.Value.Subtract(p.Gradient * 0.5, p.Value);
        }

        Assert.Equal(expectedBeta0, layer.Beta[0], 15);
        Assert.Same(layer.Parameters, layer.Parameters);
    }

    [BatchNormProperty]
    public void Folding_equals_the_affine_map_followed_by_inference_batch_norm(FoldCase t)
    {
        (int inputs, BatchCase c, int seed) = t;
        var random = new Random(seed);
        BatchNormLayer layer = c.Layer(BackwardStrategy.ClosedForm);
        layer.Forward(c.Input);      // running statistics away from their initial values
        layer.Forward(c.Input.Multiply(0.5));
        layer.IsTraining = false;
        Matrix<double> w = Matrix<double>.Build.Dense(inputs, c.Features, (_, _) => (random.NextDouble() * 4) - 2);
        Vector<double> b = Vector<double>.Build.Dense(c.Features, _ => (random.NextDouble() * 20) - 10);
        Matrix<double> x = Matrix<double>.Build.Dense(7, inputs, (_, _) => (random.NextDouble() * 6) - 3);

        (Matrix<double> foldedW, Vector<double> foldedB) = layer.FoldInto(w, b);
        Matrix<double> z = (x * w) + Matrix<double>.Build.Dense(7, c.Features, (_, j) => b[j]);
        Matrix<double> expected = layer.Forward(z);
        Matrix<double> folded = (x * foldedW) + Matrix<double>.Build.Dense(7, c.Features, (_, j) => foldedB[j]);
        for (int j = 0; j < c.Features; j++)
        {
            double s = Math.Abs(layer.Gamma[j]) / Math.Sqrt(layer.RunningVariance[j] + layer.Epsilon);
            for (int i = 0; i < 7; i++)
            {
                // Relative to the size of the terms: Σ|x·W|·s plus |b − μ|·s plus |β|.
                double terms = (x.Row(i).PointwiseAbs() * w.Column(j).PointwiseAbs() * s)
                    + (Math.Abs(b[j] - layer.RunningMean[j]) * s) + Math.Abs(layer.Beta[j]);
                Assert.True(Math.Abs(folded[i, j] - expected[i, j]) <= 1e-12 * terms, $"[{i},{j}] folded {folded[i, j]:R}, layers {expected[i, j]:R}");
            }
        }
    }

    [Fact]
    public void Folding_checks_shapes_and_changes_nothing()
    {
        var layer = new BatchNormLayer(3);
        var snapshot = new LayerSnapshot(layer);
        Assert.Throws<ArgumentException>(() => layer.FoldInto(Matrix<double>.Build.Dense(2, 4), Vector<double>.Build.Dense(3)));
        Assert.Throws<ArgumentException>(() => layer.FoldInto(Matrix<double>.Build.Dense(2, 3), Vector<double>.Build.Dense(2)));
        Assert.Throws<ArgumentNullException>(() => layer.FoldInto(null!, Vector<double>.Build.Dense(3)));
        var w = Matrix<double>.Build.Dense(2, 3, 1.0);
        layer.FoldInto(w, Vector<double>.Build.Dense(3));
        Assert.All(w.Enumerate(), v => Assert.Equal(1.0, v));
        snapshot.AssertUnchanged();
    }
}
