using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;
using static BatchNorm.Tests.SafetensorsFiles;

namespace BatchNorm.Tests;

/// <summary>
/// PyTorch's names in safetensors files: exact round trips for every layer with a counterpart, the file's layout, and
/// every malformed file refused with a message that names the problem, leaving every layer as it was.
/// </summary>
public class PyTorchStateTests
{
    /// <summary>The layer kinds with a PyTorch counterpart (all but batch renorm).</summary>
    public static TheoryData<string> MappedKinds => [.. MappedKindNames];

    internal static string[] MappedKindNames => [.. ContractTests.Kinds.Where(k => k != "batch renorm")];

    [Theory]
    [MemberData(nameof(MappedKinds))]
    public void Every_layer_with_a_counterpart_round_trips_bit_for_bit(string kind)
    {
        var source = (NormalizationLayer)StateRoundTripTests.Trained(kind, seed: 3);
        int last = source.Channels - 1;
        if (source.IsAffine)
        {
            source.Gamma[0] = -0.0;
        }

        if (source.Parameters.Any(p => p.Name == "beta"))
        {
            source.Beta[1] = double.Epsilon;
            source.Beta[last] = 1e308;
        }

        if (source is RunningStatisticsLayer { TracksRunningStatistics: true } running)
        {
            running.RunningVariance[0] = 0;
            running.RunningMean[last] = -double.MaxValue;
        }

        byte[] file = PyTorchState.ExportSafetensors(source, "block.norm.");
        var copy = (NormalizationLayer)ContractTests.Create(kind);
        copy.Forward(ContractTests.Batch(8, 6, seed: 9).X);
        PyTorchState.ImportSafetensors(file, copy, "block.norm.");

        Assert.Equal(Bits(source.Gamma), Bits(copy.Gamma));
        Assert.Equal(Bits(source.Beta), Bits(copy.Beta));
        if (source is RunningStatisticsLayer s && copy is RunningStatisticsLayer c)
        {
            Assert.Equal(Bits(s.RunningMean), Bits(c.RunningMean));
            Assert.Equal(Bits(s.RunningVariance), Bits(c.RunningVariance));
            Assert.Equal(s.BatchesTracked, c.BatchesTracked);
        }

        Assert.Equal(source.ExportState(), copy.ExportState());
        Assert.Equal(file, PyTorchState.ExportSafetensors(copy, "block.norm."));
        Assert.Null(copy.Cache);
    }

    [Fact]
    public void The_file_has_PyTorchs_names_dtypes_shapes_and_an_exact_layout()
    {
        BatchNormLayer layer = Known(epsilon: 1e-3, momentum: 0.25);
        byte[] file = PyTorchState.ExportSafetensors(layer, "bn1.");

        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(file);
        Assert.Equal(0UL, headerLength % 8);
        JsonObject header = JsonNode.Parse(Encoding.UTF8.GetString(file, 8, (int)headerLength))!.AsObject();
        Assert.Equal(["__metadata__", "bn1.bias", "bn1.num_batches_tracked", "bn1.running_mean", "bn1.running_var", "bn1.weight"], header.Select(p => p.Key));
        Assert.Equal("pt", (string?)header["__metadata__"]!["format"]);
        Assert.Equal("torch.nn.BatchNorm1d(3, eps=0.001, momentum=0.25)", (string?)header["__metadata__"]!["module:bn1."]);

        long position = 0;
        foreach ((string name, JsonNode? entry) in header.Where(p => p.Key != "__metadata__"))
        {
            bool count = name.EndsWith("num_batches_tracked", StringComparison.Ordinal);
            Assert.Equal(count ? "I64" : "F64", (string?)entry!["dtype"]);
            Assert.Equal(count ? [] : [3L], entry["shape"]!.AsArray().Select(d => (long)d!));
            Assert.Equal([position, position + (count ? 8 : 24)], entry["data_offsets"]!.AsArray().Select(d => (long)d!));
            position += count ? 8 : 24;
        }

        Assert.Equal(8 + (long)headerLength + position, file.Length);
        Dictionary<string, Decoded> tensors = Decode(file);
        Assert.Equal(layer.Gamma.ToArray(), tensors["bn1.weight"].Floats);
        Assert.Equal(layer.Beta.ToArray(), tensors["bn1.bias"].Floats);
        Assert.Equal(layer.RunningMean.ToArray(), tensors["bn1.running_mean"].Floats);
        Assert.Equal(layer.RunningVariance.ToArray(), tensors["bn1.running_var"].Floats);
        Assert.Equal([7L], tensors["bn1.num_batches_tracked"].Integers);
    }

    [Fact]
    public void Several_layers_share_one_file_under_their_prefixes_and_each_can_be_read_alone()
    {
        var layers = new Dictionary<string, NormalizationLayer>
        {
            ["features.0."] = (NormalizationLayer)StateRoundTripTests.Trained("batch norm", 1),
            ["features.1."] = (NormalizationLayer)StateRoundTripTests.Trained("group norm", 2),
            ["head.norm."] = (NormalizationLayer)StateRoundTripTests.Trained("layer norm", 3),
        };
        byte[] file = PyTorchState.ExportSafetensors(layers);
        Assert.Equal(5 + 2 + 2, Decode(file).Count);
        Assert.Equal("torch.nn.GroupNorm(2, 6, eps=1e-05)", Metadata(file)["module:features.1."]);
        Assert.Equal("torch.nn.LayerNorm(6, eps=1e-05)", Metadata(file)["module:head.norm."]);

        var copies = new Dictionary<string, NormalizationLayer>
        {
            ["features.0."] = new BatchNormLayer(6),
            ["features.1."] = new GroupNormLayer(6, 2),
            ["head.norm."] = new LayerNormLayer(6),
        };
        PyTorchState.ImportSafetensors(file, copies);
        foreach (string prefix in layers.Keys)
        {
            Assert.Equal(layers[prefix].ExportState(), copies[prefix].ExportState());
        }

        var alone = new GroupNormLayer(6, 2);
        PyTorchState.ImportSafetensors(file, alone, "features.1.");
        Assert.Equal(layers["features.1."].ExportState(), alone.ExportState());
    }

    [Fact]
    public void Float32_tensors_are_widened_exactly_and_tensors_of_other_modules_are_ignored()
    {
        float[] weight = [0.1f, float.Epsilon, -0.0f], bias = [float.MaxValue, -3.3f, 1e-30f];
        byte[] file = Build(
            new Tensor("fc.weight", "F32", [2, 3], new byte[24]),
            F32("norm.weight", weight),
            F32("norm.bias", bias));
        var layer = new LayerNormLayer(3);
        PyTorchState.ImportSafetensors(file, layer, "norm.");
        Assert.Equal(weight.Select(w => BitConverter.DoubleToInt64Bits(w)), Bits(layer.Gamma));
        Assert.Equal(bias.Select(b => BitConverter.DoubleToInt64Bits(b)), Bits(layer.Beta));
    }

    [Fact]
    public void An_import_keeps_the_layers_own_epsilon_and_momentum_and_drops_its_cache()
    {
        byte[] file = PyTorchState.ExportSafetensors(Known(epsilon: 1e-5, momentum: 0.1));
        var target = new BatchNormLayer(3, epsilon: 1e-3, momentum: null) { VirtualBatchSize = 2 };
        target.Forward(Matrix<double>.Build.Dense(4, 3, (i, j) => i * (j + 1)));
        PyTorchState.ImportSafetensors(file, target);
        Assert.Equal(1e-3, target.Epsilon);
        Assert.Null(target.Momentum);
        Assert.Equal(2, target.VirtualBatchSize);
        Assert.Equal([3.0, -1, 0.5], target.RunningMean.ToArray());
        Assert.Equal(7, target.BatchesTracked);
        Assert.Null(target.Cache);
    }

    [Fact]
    public void Batch_renorm_has_no_counterpart_and_is_refused_both_ways()
    {
        var renorm = (BatchRenormLayer)StateRoundTripTests.Trained("batch renorm", 4);
        string before = renorm.ExportState();
        var export = Assert.Throws<ArgumentException>(() => PyTorchState.ExportSafetensors(renorm, "bn."));
        Assert.Contains("BatchRenormLayer has no PyTorch counterpart", export.Message);
        Assert.Contains("no batch renormalization module", export.Message);
        var import = Assert.Throws<ArgumentException>(() => PyTorchState.ImportSafetensors(PyTorchState.ExportSafetensors(Known()), renorm));
        Assert.Contains("BatchRenormLayer has no PyTorch counterpart", import.Message);
        Assert.Equal(before, renorm.ExportState());
    }

    [Fact]
    public void Export_refuses_a_value_an_import_would_refuse_and_names_its_tensor()
    {
        BatchNormLayer layer = Known();
        layer.Gamma[1] = double.NaN;
        Assert.Contains("bn1.weight[1] is NaN", Assert.Throws<InvalidOperationException>(() => PyTorchState.ExportSafetensors(layer, "bn1.")).Message);
        layer.Gamma[1] = 1;
        layer.RunningVariance[2] = -0.5;
        Assert.Contains("bn1.running_var[2] is -0.5", Assert.Throws<InvalidOperationException>(() => PyTorchState.ExportSafetensors(layer, "bn1.")).Message);
    }

    [Fact]
    public void Arguments_are_checked_before_anything_is_read_or_written()
    {
        BatchNormLayer layer = Known();
        byte[] file = PyTorchState.ExportSafetensors(layer);
        Assert.Throws<ArgumentNullException>(() => PyTorchState.ExportSafetensors(null!));
        Assert.Throws<ArgumentNullException>(() => PyTorchState.ExportSafetensors(layer, null!));
        Assert.Throws<ArgumentNullException>(() => PyTorchState.ImportSafetensors(file, (NormalizationLayer)null!));
        var twice = new[] { KeyValuePair.Create("a.", (NormalizationLayer)layer), KeyValuePair.Create("a.", (NormalizationLayer)new LayerNormLayer(3)) };
        Assert.Contains("'a.weight'", Assert.Throws<ArgumentException>(() => PyTorchState.ExportSafetensors(twice)).Message);
        var sameLayer = new[] { KeyValuePair.Create("a.", (NormalizationLayer)layer), KeyValuePair.Create("b.", (NormalizationLayer)layer) };
        Assert.Contains("more than once", Assert.Throws<ArgumentException>(() => PyTorchState.ImportSafetensors(file, sameLayer)).Message);
    }

    /// <summary>Each case damages a valid file of a batch norm of 3 features under "bn1.", and names what the message must say.</summary>
    public static TheoryData<string, string> MalformedFiles => new()
    {
        { "five bytes", "it has 5 bytes, fewer than the 8" },
        { "header longer than the file", "only 1000 bytes follow it" },
        { "huge header length", "header length is 18446744073709551615 bytes, more than the 100000000" },
        { "header not JSON", "the header is not valid JSON" },
        { "header an array", "must be a JSON object, starting with '{'" },
        { "header not UTF-8", "not valid UTF-8" },
        { "duplicate name", "names 'bn1.bias' more than once" },
        { "metadata not strings", "'__metadata__' must map names to strings, but 'format' is a number" },
        { "entry not an object", "tensor 'bn1.bias' must be described by an object" },
        { "unknown dtype", "tensor 'bn1.bias' has the dtype 'F128', which the format does not define" },
        { "shape of fractions", "tensor 'bn1.bias' has 'shape' [1.5]" },
        { "one offset", "tensor 'bn1.bias' needs 'data_offsets' as a list of 2 non-negative integers" },
        { "overlapping offsets", "tensor 'bn1.num_batches_tracked' has data_offsets [16, 24], which overlap those of tensor 'bn1.bias', ending at 24" },
        { "offsets out of range", "tensor 'bn1.weight' has data_offsets [96, 200], beyond the 104 bytes of data" },
        { "misordered offsets", "tensor 'bn1.weight' has data_offsets [128, 104], which end before they begin" },
        { "hole", "bytes [24, 32) of the data belong to no tensor (a hole before tensor 'bn1.num_batches_tracked')" },
        { "trailing bytes", "bytes [104, 112) of the data, at its end, belong to no tensor" },
        { "length not dtype times shape", "tensor 'bn1.bias' has 24 bytes of data, but F32 of shape [3] needs 12" },
        { "weight as F16", "The tensor 'bn1.weight' is F16, but the BatchNormLayer under prefix 'bn1.' reads F64 or F32 for it" },
        { "weight as I64", "The tensor 'bn1.weight' is I64, but the BatchNormLayer under prefix 'bn1.' reads F64 or F32" },
        { "count as F64", "The tensor 'bn1.num_batches_tracked' is F64, but the BatchNormLayer under prefix 'bn1.' reads I64" },
        { "weight of 4", "The tensor 'bn1.weight' has shape [4], but the BatchNormLayer under prefix 'bn1.' needs [3]" },
        { "weight of 1 by 3", "The tensor 'bn1.weight' has shape [1, 3], but the BatchNormLayer under prefix 'bn1.' needs [3]" },
        { "count of shape [1]", "The tensor 'bn1.num_batches_tracked' has shape [1], but the BatchNormLayer under prefix 'bn1.' needs []" },
        { "no running_var", "lacks the tensor 'bn1.running_var', which a torch.nn.BatchNorm1d state_dict has and the BatchNormLayer under prefix 'bn1.' needs" },
        { "NaN weight", "'bn1.weight[1]' must be a finite number, not NaN" },
        { "infinite running_mean", "'bn1.running_mean[0]' must be a finite number, not Infinity" },
        { "negative running_var", "'bn1.running_var[2]' must not be negative, not -0.5" },
        { "negative count", "'bn1.num_batches_tracked' must be a non-negative integer" },
    };

    [Theory]
    [MemberData(nameof(MalformedFiles))]
    public void A_malformed_file_is_refused_with_its_problem_named_and_the_layer_untouched(string damage, string message)
    {
        byte[] file = Malformed(damage);
        BatchNormLayer target = Known(epsilon: 1e-3, momentum: 0.25);
        target.Gamma[0] = 4;
        target.Forward(Matrix<double>.Build.Dense(3, 3, (i, j) => i * j));
        var snapshot = new LayerSnapshot(target);
        var e = Assert.Throws<FormatException>(() => PyTorchState.ImportSafetensors(file, target, "bn1."));
        Assert.Contains(message, e.Message);
        snapshot.AssertUnchanged();
        Assert.Equal(1e-3, target.Epsilon);
        Assert.Equal(0.25, target.Momentum);
    }

    [Fact]
    public void The_valid_file_the_malformed_cases_start_from_imports()
    {
        var target = new BatchNormLayer(3);
        PyTorchState.ImportSafetensors(Malformed("none"), target, "bn1.");
        Assert.Equal(Known().ExportState(), target.ExportState());
    }

    [Fact]
    public void A_bad_tensor_of_one_layer_leaves_every_layer_of_the_import_untouched()
    {
        byte[] file = Build(
            F64("bn.weight", 1, 2, 3), F64("bn.bias", 0, 0, 0), F64("bn.running_mean", 0, 0, 0), F64("bn.running_var", 1, 1, 1), I64("bn.num_batches_tracked", 1),
            F64("gn.weight", 1, double.NaN, 1), F64("gn.bias", 0, 0, 0));
        BatchNormLayer first = Known();
        var second = new GroupNormLayer(3, 3);
        string before = first.ExportState(), secondBefore = second.ExportState();
        var e = Assert.Throws<FormatException>(() => PyTorchState.ImportSafetensors(file, new Dictionary<string, NormalizationLayer> { ["bn."] = first, ["gn."] = second }));
        Assert.Contains("'gn.weight[1]' must be a finite number", e.Message);
        Assert.Equal(before, first.ExportState());
        Assert.Equal(secondBefore, second.ExportState());
    }

    /// <summary>
    /// Exports of every layer with a counterpart, truncated, with a byte changed, set to a JSON character, or removed:
    /// the import either takes exactly the values the damaged file holds (read by the tests' own decoder) and
    /// round-trips, or throws a <see cref="FormatException"/> and leaves the target as it was.
    /// </summary>
    [BatchNormProperty]
    public void Damaged_files_either_import_what_they_hold_or_are_refused_leaving_the_target_as_it_was(SafetensorsDamage t)
    {
        (string kind, int seed, int damage, int position, int value) = t;
        byte[] file = PyTorchState.ExportSafetensors((NormalizationLayer)StateRoundTripTests.Trained(kind, seed), "m.");
        byte[] damaged = Damage(file, damage, position, value);
        var target = (NormalizationLayer)StateRoundTripTests.Trained(kind, seed + 1);
        string before = target.ExportState();
        NormalizationCache? cache = target.Cache;
        try
        {
            PyTorchState.ImportSafetensors(damaged, target, "m.");
        }
        catch (FormatException)
        {
            Assert.Equal(before, target.ExportState());
            Assert.Same(cache, target.Cache);
            return;
        }

        Dictionary<string, Decoded> held = Decode(damaged);
        Assert.Equal(target.IsAffine, held.ContainsKey("m.weight"));
        Assert.Equal(target.Parameters.Any(p => p.Name == "beta"), held.ContainsKey("m.bias"));
        Assert.Equal(target is RunningStatisticsLayer { TracksRunningStatistics: true }, held.ContainsKey("m.running_mean"));
        if (target.IsAffine)
        {
            Assert.Equal(Bits(held["m.weight"].Floats), Bits(target.Gamma));
        }

        if (held.TryGetValue("m.bias", out Decoded? bias))
        {
            Assert.Equal(Bits(bias.Floats), Bits(target.Beta));
        }

        if (target is RunningStatisticsLayer { TracksRunningStatistics: true } running)
        {
            Assert.Equal(Bits(held["m.running_mean"].Floats), Bits(running.RunningMean));
            Assert.Equal(Bits(held["m.running_var"].Floats), Bits(running.RunningVariance));
            Assert.Equal([running.BatchesTracked], held["m.num_batches_tracked"].Integers.AsEnumerable());
        }

        var again = (NormalizationLayer)ContractTests.Create(kind);
        PyTorchState.ImportSafetensors(PyTorchState.ExportSafetensors(target), again);
        Assert.Equal(target.ExportState(), again.ExportState());
        Assert.Null(target.Cache);
    }

    internal static long[] Bits(IEnumerable<double> values) => [.. values.Select(BitConverter.DoubleToInt64Bits)];

    /// <summary>A batch norm of 3 features holding the values of <see cref="ValidTensors"/>, set through the library's own JSON state.</summary>
    private static BatchNormLayer Known(double epsilon = 1e-5, double? momentum = 0.1)
    {
        var layer = new BatchNormLayer(3, epsilon, momentum);
        JsonNode state = JsonNode.Parse(layer.ExportState())!;
        state["gamma"] = new JsonArray(1.5, -0.5, 2);
        state["beta"] = new JsonArray(0, 0.125, -1);
        state["runningMean"] = new JsonArray(3, -1, 0.5);
        state["runningVariance"] = new JsonArray(2, 0.5, 1);
        state["batchesTracked"] = 7;
        layer.ImportState(state.ToJsonString());
        return layer;
    }

    private static Tensor[] ValidTensors(string prefix) =>
    [
        F64(prefix + "bias", 0, 0.125, -1),
        I64(prefix + "num_batches_tracked", 7),
        F64(prefix + "running_mean", 3, -1, 0.5),
        F64(prefix + "running_var", 2, 0.5, 1),
        F64(prefix + "weight", 1.5, -0.5, 2),
    ];

    /// <summary>The file of <see cref="ValidTensors"/> under "bn1." (bias at [0, 24), the count at [24, 32), then 24 bytes each), damaged as named.</summary>
    private static byte[] Malformed(string damage)
    {
        Tensor[] tensors = ValidTensors("bn1.");
        Tensor Replace(string name, Tensor with) => tensors[Array.FindIndex(tensors, t => t.Name == "bn1." + name)] = with;
        switch (damage)
        {
            case "weight as F16": Replace("weight", new Tensor("bn1.weight", "F16", [3], new byte[6])); break;
            case "weight as I64": Replace("weight", new Tensor("bn1.weight", "I64", [3], new byte[24])); break;
            case "count as F64": Replace("num_batches_tracked", new Tensor("bn1.num_batches_tracked", "F64", [], BitConverter.GetBytes(7.0))); break;
            case "weight of 4": Replace("weight", F64("bn1.weight", 1, 2, 3, 4)); break;
            case "weight of 1 by 3": Replace("weight", F64("bn1.weight", 1, 2, 3) with { Shape = [1, 3] }); break;
            case "count of shape [1]": Replace("num_batches_tracked", I64("bn1.num_batches_tracked", 7) with { Shape = [1] }); break;
            case "no running_var": tensors = [.. tensors.Where(t => t.Name != "bn1.running_var")]; break;
            case "NaN weight": Replace("weight", F64("bn1.weight", 1, double.NaN, 1)); break;
            case "infinite running_mean": Replace("running_mean", F64("bn1.running_mean", double.PositiveInfinity, 0, 0)); break;
            case "negative running_var": Replace("running_var", F64("bn1.running_var", 1, 1, -0.5)); break;
            case "negative count": Replace("num_batches_tracked", I64("bn1.num_batches_tracked", -1)); break;
        }

        (JsonObject header, byte[] data) = Layout(tensors);
        header["__metadata__"] = new JsonObject { ["format"] = "pt" };
        JsonNode bias = header["bn1.bias"]!, count = header["bn1.num_batches_tracked"]!, weight = header["bn1.weight"]!;
        switch (damage)
        {
            case "five bytes": return [1, 0, 0, 0, 0];
            case "header longer than the file": return [.. BitConverter.GetBytes(5000UL), .. new byte[1000]];
            case "huge header length": return [.. BitConverter.GetBytes(ulong.MaxValue), .. new byte[100]];
            case "header not JSON": return Build("{\"bn1.bias\": {\"dtype\": ", data);
            case "header an array": return Build("[1, 2]", data);
            case "header not UTF-8": return Build([(byte)'{', (byte)'"', 0xFF, 0xFE, (byte)'"', (byte)':', (byte)'1', (byte)'}'], data);
            case "duplicate name":
                string text = header.ToJsonString();
                return Build(text.Insert(text.IndexOf("\"bn1.bias\"", StringComparison.Ordinal), "\"bn1.bias\":" + bias.ToJsonString() + ","), data);
            case "metadata not strings": header["__metadata__"]!["format"] = 1; break;
            case "entry not an object": header["bn1.bias"] = new JsonArray(); break;
            case "unknown dtype": bias["dtype"] = "F128"; break;
            case "shape of fractions": bias["shape"] = new JsonArray(1.5); break;
            case "one offset": bias["data_offsets"] = new JsonArray(0); break;
            case "overlapping offsets": count["data_offsets"] = new JsonArray(16, 24); break;
            case "offsets out of range": weight["data_offsets"] = new JsonArray(96, 200); break;
            case "misordered offsets": weight["data_offsets"] = new JsonArray(128, 104); break;
            case "hole":
                bias["data_offsets"] = new JsonArray(0, 24);
                count["data_offsets"] = new JsonArray(32, 40);
                foreach (string name in new[] { "running_mean", "running_var", "weight" })
                {
                    JsonArray offsets = header["bn1." + name]!["data_offsets"]!.AsArray();
                    header["bn1." + name]!["data_offsets"] = new JsonArray((int)offsets[0]! + 8, (int)offsets[1]! + 8);
                }

                data = [.. data[..24], .. new byte[8], .. data[24..]];
                break;
            case "trailing bytes": data = [.. data, .. new byte[8]]; break;
            case "length not dtype times shape": bias["dtype"] = "F32"; break;
        }

        return Build(header.ToJsonString(), data);
    }

    private static byte[] Damage(byte[] file, int damage, int position, int value)
    {
        int at = position % file.Length;
        byte[] damaged = (byte[])file.Clone();
        switch (damage)
        {
            case 0:
                return file[..at];
            case 1:
                damaged[at] ^= (byte)(1 + (value % 255));
                return damaged;
            case 2:
                const string characters = "0123456789-.e\"[]{},: x";
                damaged[at] = (byte)characters[value % characters.Length];
                return damaged;
            default:
                return [.. file[..at], .. file[(at + 1)..]];
        }
    }
}
