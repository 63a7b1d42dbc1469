using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;

namespace BatchNorm;

/// <summary>
/// Layer state in PyTorch's names and file format: a module's <c>state_dict</c> (<c>weight</c>, <c>bias</c>,
/// <c>running_mean</c>, <c>running_var</c>, <c>num_batches_tracked</c>), under a prefix such as "bn1.", saved as
/// safetensors. One file holds any number of layers under different prefixes.
/// </summary>
/// <remarks>
/// <para><b>Counterparts.</b> <see cref="BatchNormLayer"/> is <c>torch.nn.BatchNorm1d</c> (over C channels of S positions
/// as well: γ and the statistics have C values), <see cref="InstanceNormLayer"/> is <c>torch.nn.InstanceNorm1d</c>,
/// <see cref="LayerNormLayer"/> is <c>torch.nn.LayerNorm</c> over the last dimension, <see cref="GroupNormLayer"/> is
/// <c>torch.nn.GroupNorm</c>, <see cref="RMSNormLayer"/> of one group is <c>torch.nn.RMSNorm</c> over the last dimension
/// (PyTorch 2.4 and later; only <c>weight</c>). A layer that is not affine has no <c>weight</c> and <c>bias</c>, and one
/// without running statistics no <c>running_mean</c>, <c>running_var</c> and <c>num_batches_tracked</c>, as in PyTorch.
/// <see cref="BatchRenormLayer"/> has none (PyTorch has no batch renormalization) and is refused, as is an RMS norm of
/// several groups.</para>
/// <para><b>Conventions.</b> The values are copied exactly, with no conversion: PyTorch's <c>running_var</c> is the unbiased
/// variance and its momentum the weight of the new batch, as here, and <c>num_batches_tracked</c> is
/// <see cref="RunningStatisticsLayer.BatchesTracked"/>, which a cumulative average (momentum null, PyTorch's
/// <c>momentum=None</c>) divides by. ε and the momentum are not in a <c>state_dict</c> (PyTorch keeps them in the
/// module): an import keeps the layer's own, so construct it with the module's; an export names them, with the module's
/// constructor call, in the file's metadata under "module:" + prefix, for example
/// <c>torch.nn.BatchNorm1d(6, eps=1e-05, momentum=0.1)</c>. Ghost batches are not a PyTorch setting and are not saved.</para>
/// <para><b>Types.</b> Export writes F64 (and <c>num_batches_tracked</c> as an I64 scalar, as PyTorch does); import reads
/// F64 or F32 (widened to double, which is exact) and an I64 <c>num_batches_tracked</c>. Tensors under other names, such
/// as the weights of other modules, are checked as part of the file and otherwise ignored.</para>
/// <para><b>Checks.</b> Import checks the whole file and every layer's tensors before it writes anything, and keeps the
/// saved-state rules of <see cref="NormalizationLayer.ImportState"/>: a malformed file, a missing tensor, another dtype or
/// shape, or a value the layer's own state refuses (a non-finite value, a negative running variance or batch count) is a
/// <see cref="FormatException"/> that names the problem and the tensor, and leaves every layer as it was. Export refuses,
/// like <see cref="NormalizationLayer.ExportState"/>, a layer holding a value an import would refuse.</para>
/// <para><b>Threads and allocation.</b> Call it between steps, as <see cref="NormalizationLayer.ImportState"/>; it
/// allocates the file's bytes, or the values it reads.</para>
/// </remarks>
public static class PyTorchState
{
    private const string MetadataModulePrefix = "module:";

    /// <summary>Each layer type's PyTorch counterpart: adding a layer type to the interchange is adding it here.</summary>
    private static readonly Dictionary<Type, Module> Counterparts = new()
    {
        [typeof(BatchNormLayer)] = new(
            "torch.nn.BatchNorm1d",
            layer => Call(
                "torch.nn.BatchNorm1d",
                Number(layer.Channels),
                Keyword("eps", layer.Epsilon),
                Keyword("momentum", ((BatchNormLayer)layer).Momentum),
                Flag("affine", layer.IsAffine),
                Flag("track_running_stats", ((BatchNormLayer)layer).TracksRunningStatistics)),
            [Module.Weight, Module.Bias, .. Module.RunningStatistics]),
        [typeof(InstanceNormLayer)] = new(
            "torch.nn.InstanceNorm1d",
            layer => Call(
                "torch.nn.InstanceNorm1d",
                Number(layer.Channels),
                Keyword("eps", layer.Epsilon),
                Keyword("momentum", ((InstanceNormLayer)layer).Momentum),
                Flag("affine", layer.IsAffine, whenFalse: false),
                Flag("track_running_stats", ((InstanceNormLayer)layer).TracksRunningStatistics, whenFalse: false)),
            [Module.Weight, Module.Bias, .. Module.RunningStatistics]),
        [typeof(LayerNormLayer)] = new(
            "torch.nn.LayerNorm",
            layer => Call("torch.nn.LayerNorm", Number(layer.Features), Keyword("eps", layer.Epsilon), Flag("elementwise_affine", layer.IsAffine)),
            [Module.Weight, Module.Bias]),
        [typeof(GroupNormLayer)] = new(
            "torch.nn.GroupNorm",
            layer => Call("torch.nn.GroupNorm", Number(((GroupNormLayer)layer).Groups), Number(layer.Channels), Keyword("eps", layer.Epsilon), Flag("affine", layer.IsAffine)),
            [Module.Weight, Module.Bias]),
        [typeof(RMSNormLayer)] = new(
            "torch.nn.RMSNorm",
            layer => Call("torch.nn.RMSNorm", Number(layer.Features), Keyword("eps", layer.Epsilon), Flag("elementwise_affine", layer.IsAffine)),
            [Module.Weight]),
    };

    /// <summary>Why a layer type has no counterpart.</summary>
    private static readonly Dictionary<Type, string> Refusals = new()
    {
        [typeof(BatchRenormLayer)] = "PyTorch has no batch renormalization module, so there is no state_dict to match (r and d have no PyTorch name). Save it with ExportState() instead",
    };

    /// <summary>Writes one layer's state as a safetensors file, in PyTorch's names under <paramref name="prefix"/>.</summary>
    /// <param name="layer">The layer: any layer type with a PyTorch counterpart (all but <see cref="BatchRenormLayer"/>, and <see cref="RMSNormLayer"/> of several groups).</param>
    /// <param name="prefix">Put before every name, such as "bn1." for <c>bn1.weight</c>; empty (the default) for a module's own <c>state_dict</c>.</param>
    /// <returns>The file's bytes.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The layer has no PyTorch counterpart (<see cref="BatchRenormLayer"/>, or a type of your own).</exception>
    /// <param name="singlePrecision">Write F32 tensors, each value rounded to float once, as a float32 PyTorch module
    /// keeps them; by default F64, exactly.</param>
    /// <exception cref="InvalidOperationException">The layer holds a value that an import would refuse (as for
    /// <see cref="NormalizationLayer.ExportState"/>), or with <paramref name="singlePrecision"/> one beyond the range of
    /// float; the message names the tensor and index.</exception>
    public static byte[] ExportSafetensors(NormalizationLayer layer, string prefix = "", bool singlePrecision = false)
        => ExportSafetensors([new KeyValuePair<string, NormalizationLayer>(prefix, layer)], singlePrecision);

    /// <summary>Writes several layers' state into one safetensors file of F64 tensors, each in PyTorch's names under its prefix.</summary>
    /// <param name="layers">Prefix and layer pairs, such as a <c>Dictionary&lt;string, NormalizationLayer&gt;</c> { ["bn1."] = bn1, ["gn."] = gn }.</param>
    /// <returns>The file's bytes, as <see cref="ExportSafetensors(IEnumerable{KeyValuePair{string, NormalizationLayer}}, bool)"/> writes them in double precision.</returns>
    /// <exception cref="ArgumentNullException">An argument, a prefix or a layer is null.</exception>
    /// <exception cref="ArgumentException">A layer has no PyTorch counterpart, or two layers would write the same name.</exception>
    /// <exception cref="InvalidOperationException">A layer holds a value that an import would refuse; the message names the tensor and index.</exception>
    public static byte[] ExportSafetensors(IEnumerable<KeyValuePair<string, NormalizationLayer>> layers) => ExportSafetensors(layers, singlePrecision: false);

    /// <summary>Writes several layers' state into one safetensors file, each in PyTorch's names under its prefix.</summary>
    /// <param name="layers">Prefix and layer pairs, such as a <c>Dictionary&lt;string, NormalizationLayer&gt;</c> { ["bn1."] = bn1, ["gn."] = gn }.</param>
    /// <param name="singlePrecision">Write F32 tensors, each value rounded to float once; by default F64, exactly.</param>
    /// <returns>The file's bytes: F64 (or F32) tensors (and I64 <c>num_batches_tracked</c>) in order of name, and the metadata
    /// <c>format: pt</c> and, for each prefix, <c>module:</c> + prefix with the PyTorch module's constructor call.</returns>
    /// <exception cref="ArgumentNullException">An argument, a prefix or a layer is null.</exception>
    /// <exception cref="ArgumentException">A layer has no PyTorch counterpart, or two layers would write the same name.</exception>
    /// <exception cref="InvalidOperationException">A layer holds a value that an import would refuse, or with
    /// <paramref name="singlePrecision"/> one beyond the range of float; the message names the tensor and index.</exception>
    public static byte[] ExportSafetensors(IEnumerable<KeyValuePair<string, NormalizationLayer>> layers, bool singlePrecision)
    {
        Guard.NotNull(layers, nameof(layers));
        var tensors = new List<Safetensors.Tensor>();
        var metadata = new SortedDictionary<string, string>(StringComparer.Ordinal) { ["format"] = "pt" };
        foreach ((string prefix, NormalizationLayer layer, Module module) in Checked(layers, nameof(layers)))
        {
            ExternalFields fields = module.Fields(prefix, checkOnWrite: true);
            LayerState.Export(layer, fields);
            foreach (TensorName t in module.Tensors)
            {
                string key = prefix + t.Key;
                if (t.IsCount && fields.TryGetCount(t.Field, out long count))
                {
                    tensors.Add(Safetensors.Tensor.Int64Scalar(key, count));
                }
                else if (!t.IsCount && fields.TryGetVector(t.Field, out double[]? values))
                {
                    tensors.Add(singlePrecision ? Float32(key, values) : Safetensors.Tensor.Float64(key, [values.Length], values));
                }
            }

            metadata[MetadataModulePrefix + prefix] = module.Describe(layer);
        }

        return Safetensors.Write([.. tensors.OrderBy(t => t.Name, StringComparer.Ordinal)], metadata);
    }

    /// <summary>Loads one layer's state from a safetensors file of PyTorch names, under <paramref name="prefix"/>.</summary>
    /// <param name="safetensors">The file's bytes.</param>
    /// <param name="layer">The layer, constructed as the PyTorch module was (features, groups, ε, momentum): those are not in the file.</param>
    /// <param name="prefix">Put before every name, such as "bn1."; empty (the default) for a module's own <c>state_dict</c>.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The layer has no PyTorch counterpart.</exception>
    /// <exception cref="FormatException">The file is malformed, lacks a tensor, has one of another dtype or shape, or
    /// holds a value the layer's state refuses; the message names the problem and the tensor. The layer is untouched.</exception>
    /// <remarks>A successful import replaces γ, β and the running statistics and drops the cache, as <see cref="NormalizationLayer.ImportState"/> does.</remarks>
    public static void ImportSafetensors(ReadOnlySpan<byte> safetensors, NormalizationLayer layer, string prefix = "")
        => ImportSafetensors(safetensors, [new KeyValuePair<string, NormalizationLayer>(prefix, layer)]);

    /// <summary>Loads several layers' state from one safetensors file of PyTorch names, each under its prefix.</summary>
    /// <param name="safetensors">The file's bytes.</param>
    /// <param name="layers">Prefix and layer pairs; each layer constructed as its PyTorch module was.</param>
    /// <exception cref="ArgumentNullException">An argument, a prefix or a layer is null.</exception>
    /// <exception cref="ArgumentException">A layer has no PyTorch counterpart, appears twice, or two layers would read the same name.</exception>
    /// <exception cref="FormatException">As for the one-layer overload. The whole file and every layer's tensors are
    /// checked before any layer is written, so a failure leaves every layer untouched.</exception>
    public static void ImportSafetensors(ReadOnlySpan<byte> safetensors, IEnumerable<KeyValuePair<string, NormalizationLayer>> layers)
    {
        Guard.NotNull(layers, nameof(layers));
        List<(string Prefix, NormalizationLayer Layer, Module Module)> targets = Checked(layers, nameof(layers));
        if (targets.Select(t => t.Layer).Distinct().Count() != targets.Count)
        {
            throw new ArgumentException("A layer appears more than once; give each layer one prefix.", nameof(layers));
        }

        Safetensors.Contents contents = Safetensors.Read(safetensors);
        var commits = new List<(NormalizationLayer Layer, Action Apply)>();
        foreach ((string prefix, NormalizationLayer layer, Module module) in targets)
        {
            // The layer's own settings (ε, momentum, groups) and which of the module's tensors it keeps, with their lengths.
            ExternalFields fields = module.Fields(prefix, checkOnWrite: false);
            string settings = LayerState.Export(layer, fields);
            foreach (TensorName t in module.Tensors)
            {
                string key = prefix + t.Key;
                if (t.IsCount && fields.Counts.ContainsKey(t.Field))
                {
                    fields.SetCount(t.Field, Safetensors.Integers(safetensors, contents, Find(contents, key, "I64", [], module, layer, prefix))[0]);
                }
                else if (!t.IsCount && fields.TryGetVector(t.Field, out double[]? current))
                {
                    fields.SetVector(t.Field, Safetensors.Floats(safetensors, contents, Find(contents, key, null, [current.Length], module, layer, prefix)));
                }
            }

            // The same checks and the same writes as ImportState, on the layer's settings and the file's values.
            commits.Add((layer, layer.PrepareImport(LayerState.Parse(settings, LayerState.FormatOf(layer.GetType()), fields), nameof(layers))));
        }

        foreach ((NormalizationLayer layer, Action apply) in commits)
        {
            layer.CommitImport(apply);
        }
    }

    /// <summary>An F32 tensor of the values rounded to float, each checked to stay finite.</summary>
    private static Safetensors.Tensor Float32(string key, double[] values)
    {
        int at = Array.FindIndex(values, v => !float.IsFinite((float)v));
        if (at >= 0)
        {
            throw new InvalidOperationException(string.Create(
                CultureInfo.InvariantCulture, $"The tensor '{Safetensors.Quote(key)}' holds {values[at]:R} at index {at}, beyond the range of float: write it as F64."));
        }

        return Safetensors.Tensor.Float32(key, [values.Length], values);
    }

    /// <summary>The tensor <paramref name="key"/>, checked for its dtype (I64, or F64 or F32 when null) and shape.</summary>
    private static Safetensors.Entry Find(Safetensors.Contents contents, string key, string? dtype, long[] shape, Module module, NormalizationLayer layer, string prefix)
    {
        string layerName = $"the {layer.GetType().Name} under prefix '{Safetensors.Quote(prefix)}'";
        if (!contents.Tensors.TryGetValue(key, out Safetensors.Entry? entry))
        {
            throw new FormatException($"The safetensors file lacks the tensor '{Safetensors.Quote(key)}', which a {module.Name} state_dict has and {layerName} needs.");
        }

        if (dtype is null ? entry.DType is not ("F64" or "F32") : entry.DType != dtype)
        {
            throw new FormatException($"The tensor '{Safetensors.Quote(key)}' is {entry.DType}, but {layerName} reads {dtype ?? "F64 or F32"} for it.");
        }

        if (!entry.Shape.SequenceEqual(shape))
        {
            throw new FormatException($"The tensor '{Safetensors.Quote(key)}' has shape {Safetensors.ShapeText(entry.Shape)}, but {layerName} needs {Safetensors.ShapeText(shape)}.");
        }

        return entry;
    }

    /// <summary>The pairs with their modules, after the argument checks: no null, a counterpart for each, no name written twice.</summary>
    private static List<(string Prefix, NormalizationLayer Layer, Module Module)> Checked(IEnumerable<KeyValuePair<string, NormalizationLayer>> layers, string parameterName)
    {
        var checkedLayers = new List<(string, NormalizationLayer, Module)>();
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach ((string prefix, NormalizationLayer layer) in layers)
        {
            Guard.NotNull(prefix, "prefix");
            Guard.NotNull(layer, "layer");
            Type type = layer.GetType();
            if (!Counterparts.TryGetValue(type, out Module? module))
            {
                string why = Refusals.TryGetValue(type, out string? reason) ? reason : $"this library maps only {string.Join(", ", Counterparts.Keys.Select(k => k.Name))}";
                throw new ArgumentException($"{type.Name} has no PyTorch counterpart: {why}.", parameterName);
            }

            if (layer is RMSNormLayer { Groups: > 1 } rms)
            {
                throw new ArgumentException(
                    $"An RMSNormLayer of {rms.Groups} groups has no PyTorch counterpart: torch.nn.RMSNorm normalizes whole rows. Save it with ExportState() instead.", parameterName);
            }

            foreach (TensorName t in module.Tensors)
            {
                if (!keys.Add(prefix + t.Key))
                {
                    throw new ArgumentException($"Two layers would use the tensor name '{Safetensors.Quote(prefix + t.Key)}'; give each layer its own prefix.", parameterName);
                }
            }

            checkedLayers.Add((prefix, layer, module));
        }

        return checkedLayers;
    }

    private static string Call(string module, params string[] arguments) => $"{module}({string.Join(", ", arguments.Where(a => a.Length > 0))})";

    /// <summary>A boolean keyword argument, written only where it differs from the module's default (true unless <paramref name="whenFalse"/> says the default is false).</summary>
    private static string Flag(string name, bool value, bool whenFalse = true) => value == whenFalse ? string.Empty : $"{name}={(value ? "True" : "False")}";

    private static string Number(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>A keyword argument as Python writes it: a double in its shortest round-trip form with a small e, or None.</summary>
    private static string Keyword(string name, double? value)
        => $"{name}={(value is double v ? v.ToString("R", CultureInfo.InvariantCulture).Replace('E', 'e') : "None")}";

    /// <summary>A tensor of a module's state_dict and the saved-state field it is.</summary>
    /// <param name="Key">PyTorch's name, after the prefix.</param>
    /// <param name="Field">The field of <see cref="NormalizationLayer.ExportState"/>.</param>
    /// <param name="IsCount">An I64 scalar (num_batches_tracked) rather than a vector.</param>
    private sealed record TensorName(string Key, string Field, bool IsCount);

    /// <summary>A PyTorch module: its name, its constructor call for a layer, and its state_dict.</summary>
    private sealed record Module(string Name, Func<NormalizationLayer, string> Describe, TensorName[] Tensors)
    {
        public static readonly TensorName Weight = new("weight", "gamma", false);

        public static readonly TensorName Bias = new("bias", "beta", false);

        public static readonly TensorName[] RunningStatistics =
            [new("running_mean", "runningMean", false), new("running_var", "runningVariance", false), new("num_batches_tracked", "batchesTracked", true)];

        /// <summary>The module's tensors as external fields of the saved state, named as the file names them.</summary>
        public ExternalFields Fields(string prefix, bool checkOnWrite)
            => new(Tensors.ToDictionary(t => t.Field, t => prefix + t.Key, StringComparer.Ordinal), checkOnWrite);
    }
}
