using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;
using Xunit.Abstractions;
using static BatchNorm.Tests.SafetensorsFiles;

namespace BatchNorm.Tests;

/// <summary>
/// Against real PyTorch (1.13, float64): state_dicts written by tools/make_torch_fixture.py, of N×D layers and of
/// layers over (N, C, S) batches (BatchNorm1d, GroupNorm, InstanceNorm1d), load into the library's layers, which then reproduce PyTorch's eval-mode outputs, a training step's outputs, input and parameter gradients
/// and running statistics to 1e-12; and the library's export of that state is PyTorch's tensors bit for bit.
/// </summary>
public class PyTorchFixtureTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-12;

    /// <summary>The fixtures' layers: N×D batches (torch), and (N, C, S) batches flattened channel-major (torch_spatial).</summary>
    public static TheoryData<string, string> Cases => new()
    {
        { "torch", "bn." }, { "torch", "bn_cma." }, { "torch", "gn." }, { "torch", "ln." },
        { "torch_spatial", "bn." }, { "torch_spatial", "gn." }, { "torch_spatial", "in." },
    };

    /// <summary>Each prefix's layer, built as the fixture's module was (its metadata says how; a test checks they agree).</summary>
    private static Dictionary<string, NormalizationLayer> Layers(string fixture) => fixture == "torch"
        ? new()
        {
            ["bn."] = new BatchNormLayer(6, epsilon: 1e-3, momentum: 0.2),
            ["bn_cma."] = new BatchNormLayer(6, epsilon: 1e-5, momentum: null),
            ["gn."] = new GroupNormLayer(6, groups: 3, epsilon: 1e-4),
            ["ln."] = new LayerNormLayer(6, epsilon: 1e-5),
        }
        : new()
        {
            ["bn."] = BatchNormLayer.Spatial(channels: 4, spatialSize: 5),
            ["gn."] = GroupNormLayer.Spatial(channels: 4, groups: 2, spatialSize: 5),
            ["in."] = new InstanceNormLayer(4, 5, affine: true, trackRunningStatistics: true),
        };

    [Fact]
    public void The_fixture_was_made_by_PyTorch_with_the_modules_these_tests_build()
    {
        Dictionary<string, string> metadata = Metadata(Fixture("torch_state.safetensors"));
        Assert.StartsWith("1.13", metadata["torch"], StringComparison.Ordinal);
        Assert.Equal("torch.nn.BatchNorm1d(6, eps=0.001, momentum=0.2)", metadata["module:bn."]);
        Assert.Equal("torch.nn.BatchNorm1d(6, eps=1e-05, momentum=None)", metadata["module:bn_cma."]);
        Assert.Equal("torch.nn.GroupNorm(3, 6, eps=0.0001)", metadata["module:gn."]);
        Assert.Equal("torch.nn.LayerNorm(6, eps=1e-05)", metadata["module:ln."]);
        Dictionary<string, string> spatial = Metadata(Fixture("torch_spatial_state.safetensors"));
        Assert.Equal("torch.nn.BatchNorm1d(4, eps=1e-05, momentum=0.1)", spatial["module:bn."]);
        Assert.Equal("torch.nn.GroupNorm(2, 4, eps=1e-05)", spatial["module:gn."]);
        Assert.Equal("torch.nn.InstanceNorm1d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)", spatial["module:in."]);

        // The library describes the same modules in the same words.
        foreach ((string fixture, Dictionary<string, string> expected) in new[] { ("torch", metadata), ("torch_spatial", spatial) })
        {
            Dictionary<string, string> ours = Metadata(PyTorchState.ExportSafetensors(Layers(fixture)));
            foreach (string prefix in Layers(fixture).Keys)
            {
                Assert.Equal(expected["module:" + prefix], ours["module:" + prefix]);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void PyTorchs_state_reproduces_its_eval_mode_outputs(string fixture, string prefix)
    {
        NormalizationLayer layer = Loaded(fixture + "_state.safetensors", fixture)[prefix];
        Dictionary<string, Decoded> torch = Decode(Fixture(fixture + "_outputs.safetensors"));
        layer.IsTraining = false;
        AssertClose(prefix + "eval.y", torch[prefix + "eval.y"], layer.Forward(Matrix(torch["x"])));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void PyTorchs_state_reproduces_a_training_step_its_gradients_and_its_running_statistics(string fixture, string prefix)
    {
        NormalizationLayer layer = Loaded(fixture + "_state.safetensors", fixture)[prefix];
        Dictionary<string, Decoded> torch = Decode(Fixture(fixture + "_outputs.safetensors"));
        AssertClose(prefix + "train.y", torch[prefix + "train.y"], layer.Forward(Matrix(torch["x"])));
        AssertClose(prefix + "train.dx", torch[prefix + "train.dx"], layer.Backward(Matrix(torch["dy"])));
        AssertClose(prefix + "train.dweight", torch[prefix + "train.dweight"], layer.GammaGradient);
        AssertClose(prefix + "train.dbias", torch[prefix + "train.dbias"], layer.BetaGradient);
        Assert.Equal(layer is RunningStatisticsLayer, torch.ContainsKey(prefix + "train.running_mean"));
        if (layer is RunningStatisticsLayer running)
        {
            AssertClose(prefix + "train.running_mean", torch[prefix + "train.running_mean"], running.RunningMean);
            AssertClose(prefix + "train.running_var", torch[prefix + "train.running_var"], running.RunningVariance);
            Assert.Equal(torch[prefix + "train.num_batches_tracked"].Integers.Single(), running.BatchesTracked);
        }
    }

    [Theory]
    [InlineData("torch")]
    [InlineData("torch_spatial")]
    public void Exporting_the_loaded_state_gives_back_PyTorchs_tensors_bit_for_bit(string fixture)
    {
        Dictionary<string, Decoded> torch = Decode(Fixture(fixture + "_state.safetensors"));
        Dictionary<string, Decoded> ours = Decode(PyTorchState.ExportSafetensors(Loaded(fixture + "_state.safetensors", fixture)));
        Assert.Equal(torch.Keys.Order(StringComparer.Ordinal), ours.Keys.Order(StringComparer.Ordinal));
        foreach ((string name, Decoded tensor) in torch)
        {
            Assert.Equal(tensor.DType, ours[name].DType);
            Assert.Equal(tensor.Shape, ours[name].Shape);
            Assert.Equal(PyTorchStateTests.Bits(tensor.Floats), PyTorchStateTests.Bits(ours[name].Floats));
            Assert.Equal(tensor.Integers, ours[name].Integers);
        }
    }

    [Fact]
    public void PyTorchs_float32_state_loads_as_the_exact_widening_of_its_values()
    {
        Dictionary<string, Decoded> f32 = Decode(Fixture("torch_state_f32.safetensors"));
        Assert.Equal("F32", f32["bn.running_var"].DType);
        Dictionary<string, NormalizationLayer> layers = Loaded("torch_state_f32.safetensors", "torch");
        Dictionary<string, Decoded> ours = Decode(PyTorchState.ExportSafetensors(layers));
        foreach ((string name, Decoded tensor) in f32)
        {
            Assert.Equal(PyTorchStateTests.Bits(tensor.Floats), PyTorchStateTests.Bits(ours[name].Floats));
            Assert.Equal(tensor.Integers, ours[name].Integers);
        }

        // And PyTorch's float32 values are the float64 ones rounded: the files agree.
        Dictionary<string, Decoded> f64 = Decode(Fixture("torch_state.safetensors"));
        Assert.All(f64.Where(t => t.Value.DType == "F64"), t => Assert.Equal(t.Value.Floats.Select(v => (double)(float)v), f32[t.Key].Floats));
    }

    private static Dictionary<string, NormalizationLayer> Loaded(string file, string fixture)
    {
        Dictionary<string, NormalizationLayer> layers = Layers(fixture);
        PyTorchState.ImportSafetensors(Fixture(file), layers);
        return layers;
    }

    /// <summary>A tensor of shape (N, …) as an N-row matrix, each sample flattened row-major: (N, C, S) becomes N×(C·S), channel-major.</summary>
    private static Matrix<double> Matrix(Decoded tensor)
    {
        int rows = (int)tensor.Shape[0], columns = tensor.Floats.Length / rows;
        return Matrix<double>.Build.Dense(rows, columns, (i, j) => tensor.Floats[(i * columns) + j]);
    }

    private void AssertClose(string name, Decoded expected, Matrix<double> actual)
    {
        Assert.Equal([actual.RowCount, actual.ColumnCount], [(int)expected.Shape[0], expected.Floats.Length / (int)expected.Shape[0]]);
        AssertClose(name, expected.Floats, [.. Enumerable.Range(0, expected.Floats.Length).Select(k => actual[k / actual.ColumnCount, k % actual.ColumnCount])]);
    }

    private void AssertClose(string name, Decoded expected, Vector<double> actual) => AssertClose(name, expected.Floats, actual.ToArray());

    /// <summary>Each value within 1e-12 of PyTorch's, relative to its size where that is above 1; reports the largest difference.</summary>
    private void AssertClose(string name, double[] expected, double[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        for (int k = 0; k < expected.Length; k++)
        {
            double difference = Math.Abs(actual[k] - expected[k]);
            worst = Math.Max(worst, difference / Math.Max(1, Math.Abs(expected[k])));
            Assert.True(difference <= Tolerance * Math.Max(1, Math.Abs(expected[k])), $"{name}[{k}]: ours {actual[k]:R}, PyTorch's {expected[k]:R}");
        }

        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name}: {expected.Length} values, largest difference {worst:E2} (relative where |value| > 1), largest |value| {expected.Max(Math.Abs):G4}"));
    }
}
