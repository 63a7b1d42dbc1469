using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;
using System.Text.Json;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Saved state as JSON, for every layer type: a format name ("BatchNorm." + the type's name) and version, the feature
/// count, ε, γ and β, then the type's own fields (running statistics, groups, renorm's limits). Reading checks
/// everything a layer needs before the layer writes anything. Some fields may travel outside the JSON, as tensors of
/// another format (<see cref="ExternalFields"/>): they are written and read through the same calls and kept to the same rules.
/// </summary>
internal sealed class LayerState
{
    /// <summary>The version written by <see cref="Export"/> and the only one <see cref="Parse"/> reads.</summary>
    public const int FormatVersion = 1;

    private const string FormatPrefix = "BatchNorm.";

    /// <summary>How to make each layer type from its saved state, before the state is imported into it.</summary>
    private static readonly Dictionary<string, Func<LayerState, NormalizationLayer>> Factories = new(StringComparer.Ordinal)
    {
        [FormatPrefix + nameof(BatchNormLayer)] = s => BatchNormLayer.Spatial(
            s.Features, s.SpatialSize, s.Epsilon, affine: s.Affine, trackRunningStatistics: s.OptionalBoolean("trackRunningStatistics", absent: true)),
        [FormatPrefix + nameof(BatchRenormLayer)] = s => new BatchRenormLayer(s.Features, s.Epsilon),
        [FormatPrefix + nameof(LayerNormLayer)] = s => new LayerNormLayer(s.Features, s.Epsilon, affine: s.Affine),
        [FormatPrefix + nameof(GroupNormLayer)] = s => s.SpatialSize == 1
            ? new GroupNormLayer(s.Features, s.PositiveInteger("groups"), s.Epsilon, affine: s.Affine)
            : GroupNormLayer.Spatial(s.Features, s.PositiveInteger("groups"), s.SpatialSize, s.Epsilon, affine: s.Affine),
        [FormatPrefix + nameof(InstanceNormLayer)] = s => new InstanceNormLayer(
            s.Features, s.SpatialSize, s.Epsilon, affine: s.Affine, trackRunningStatistics: s.OptionalBoolean("trackRunningStatistics", absent: false)),
        [FormatPrefix + nameof(RMSNormLayer)] = s => new RMSNormLayer(s.Features, s.Epsilon, s.PositiveInteger("groups"), affine: s.Affine),
    };

    /// <summary>The formats of layer types without a shift β, whose state has no "beta".</summary>
    private static readonly HashSet<string> Unshifted = new(StringComparer.Ordinal) { FormatPrefix + nameof(RMSNormLayer) };

    private readonly JsonElement _root;
    private readonly ExternalFields? _external;

    private LayerState(JsonElement root, ExternalFields? external, string format, int features, int spatialSize, bool affine, double epsilon)
    {
        _root = root;
        _external = external;
        Format = format;
        Features = features;
        SpatialSize = spatialSize;
        Affine = affine;
        Epsilon = epsilon;
    }

    /// <summary>Gets the format name, "BatchNorm." + the layer type's name.</summary>
    public string Format { get; }

    /// <summary>Gets the saved feature count: the number of channels, the length of every saved vector.</summary>
    public int Features { get; }

    /// <summary>Gets the saved positions per channel, 1 when the field is absent.</summary>
    public int SpatialSize { get; }

    /// <summary>Gets whether the saved layer is affine (true when the field is absent).</summary>
    public bool Affine { get; }

    /// <summary>Gets the saved ε.</summary>
    public double Epsilon { get; }

    /// <summary>Gets the saved γ, or null for a layer that is not affine.</summary>
    public double[]? Gamma { get; private set; }

    /// <summary>Gets the saved β, or null for a layer without a learnable shift.</summary>
    public double[]? Beta { get; private set; }

    /// <summary>The format name a layer type saves under.</summary>
    public static string FormatOf(Type layerType) => FormatPrefix + layerType.Name;

    /// <summary>Writes a layer's state: the common fields, then the type's own; the fields of <paramref name="external"/> go there instead.</summary>
    public static string Export(NormalizationLayer layer, ExternalFields? external = null)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            var writer = new Writer(json, external);
            json.WriteString("format", FormatOf(layer.GetType()));
            json.WriteNumber("version", FormatVersion);
            json.WriteNumber("features", layer.Channels);
            if (layer.SpatialSize != 1)
            {
                json.WriteNumber("spatialSize", layer.SpatialSize);
            }

            if (!layer.IsAffine)
            {
                json.WriteBoolean("affine", false);
            }

            json.WriteNumber("epsilon", layer.Epsilon);
            if (layer.IsAffine)
            {
                writer.Array("gamma", layer.Gamma);
                if (layer.HasShift)
                {
                    writer.Array("beta", layer.Beta);
                }
            }

            layer.WriteStateFields(writer);
            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>
    /// Parses and checks a state of the given format: the common fields in full; the type's own are read by the layer.
    /// The fields <paramref name="external"/> holds are read from it rather than from the JSON.
    /// </summary>
    /// <exception cref="FormatException">Not valid JSON, another format or version, or a missing or invalid common field.</exception>
    public static LayerState Parse(string text, string? expectedFormat, ExternalFields? external = null)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new FormatException($"The saved state is not valid JSON (is it truncated?): {e.Message}", e);
        }

        using (document)
        {
            JsonElement root = document.RootElement.Clone();
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new FormatException("The saved state must be a JSON object.");
            }

            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (JsonProperty property in root.EnumerateObject())
            {
                if (!names.Add(property.Name))
                {
                    throw new FormatException($"The saved state has the field '{Quote(property.Name)}' more than once.");
                }
            }

            string format = Required(root, "format", JsonValueKind.String).GetString()!;
            if (expectedFormat is not null && format != expectedFormat)
            {
                throw new FormatException($"The saved state has format '{Quote(format)}', not '{expectedFormat}'.");
            }

            // The version must be the JSON number 1 as written by Export; anything else is reported as the file has it.
            JsonElement version = Required(root, "version", null);
            if (version.ValueKind != JsonValueKind.Number || version.GetRawText() != FormatVersion.ToString(CultureInfo.InvariantCulture))
            {
                throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"The saved state is format version {Quote(version.GetRawText())}; this library reads version {FormatVersion} only."));
            }

            int features = Required(root, "features", JsonValueKind.Number).TryGetInt32(out int f) && f > 0
                ? f
                : throw new FormatException("'features' must be a positive integer.");
            double epsilon = Number(Required(root, "epsilon", JsonValueKind.Number), "epsilon");
            if (!(epsilon > 0))
            {
                throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"'epsilon' must be positive, not {epsilon}."));
            }

            int spatialSize = OptionalPositive(root, "spatialSize") ?? 1;
            bool affine = OptionalBoolean(root, "affine", absent: true);
            var state = new LayerState(root, external, format, features, spatialSize, affine, epsilon);
            if (affine)
            {
                state.Gamma = ReadArray(root, external, "gamma", features);
                state.Beta = Unshifted.Contains(format) ? null : ReadArray(root, external, "beta", features);
            }

            return state;
        }
    }

    /// <summary>Makes a layer of the saved type and imports the state into it.</summary>
    /// <exception cref="FormatException">As for <see cref="Parse"/>, or the format is not one of this library's layers.</exception>
    public static NormalizationLayer Create(string text, Type? expectedType = null)
    {
        Guard.NotNull(text, "json");
        LayerState state = Parse(text, expectedType is null ? null : FormatOf(expectedType));
        if (!Factories.TryGetValue(state.Format, out Func<LayerState, NormalizationLayer>? factory))
        {
            throw new FormatException($"The saved state has format '{Quote(state.Format)}', which is not a layer of this library ({string.Join(", ", Factories.Keys)}).");
        }

        NormalizationLayer layer;
        try
        {
            layer = factory(state);
        }
        catch (ArgumentException e)
        {
            throw new FormatException($"The saved state does not describe a valid {state.Format}: {e.Message}", e);
        }

        // A field the type cannot have (positions or no γ for a type without them) shows as a shape the new layer lacks.
        if (layer.StateShapeMismatch(state) is string mismatch)
        {
            throw new FormatException($"The saved state does not describe a valid {state.Format}: {mismatch}");
        }

        layer.ImportState(text);
        return layer;
    }

    /// <summary>Copies ε, γ and β (those the state has) into the layer; the state has been checked in full.</summary>
    public void ApplyCommon(NormalizationLayer layer)
    {
        layer.SetEpsilon(Epsilon);
        Gamma?.CopyTo(DenseColumns.Data(layer.Gamma));
        Beta?.CopyTo(DenseColumns.Data(layer.Beta));
    }

    /// <summary>Reads a boolean field that may be absent (then <paramref name="absent"/>).</summary>
    public bool OptionalBoolean(string name, bool absent) => OptionalBoolean(_root, name, absent);

    private static bool OptionalBoolean(JsonElement root, string name, bool absent)
        => !root.TryGetProperty(name, out JsonElement element) ? absent
            : element.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw new FormatException($"'{name}' must be true or false, not {Quote(element.GetRawText())}."),
            };

    /// <summary>Reads a finite number field.</summary>
    public double Number(string name) => Number(Required(_root, name, JsonValueKind.Number), name);

    /// <summary>Reads a number field that may be null.</summary>
    public double? NullableNumber(string name)
    {
        JsonElement element = Required(_root, name, null);
        return element.ValueKind == JsonValueKind.Null ? null : Number(element, name);
    }

    /// <summary>Reads a positive integer field.</summary>
    public int PositiveInteger(string name)
        => Required(_root, name, JsonValueKind.Number).TryGetInt32(out int value) && value > 0
            ? value
            : throw new FormatException($"'{name}' must be a positive integer.");

    /// <summary>Says how the saved "groups" field differs from a layer's <paramref name="groups"/>, or null when they agree.</summary>
    public string? GroupsMismatch(int groups)
        => PositiveInteger("groups") is int saved && saved != groups
            ? string.Create(CultureInfo.InvariantCulture, $"The saved state is for {saved} groups, but this layer has {groups}.")
            : null;

    /// <summary>Reads an integer field that may be null or absent (null then), and otherwise is at least <paramref name="minimum"/>.</summary>
    public int? OptionalInteger(string name, int minimum)
    {
        if (!_root.TryGetProperty(name, out JsonElement element) || element.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return element.ValueKind == JsonValueKind.Number && element.TryGetInt32(out int value) && value >= minimum
            ? value
            : throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"'{name}' must be null or an integer of at least {minimum}, not {Quote(element.GetRawText())}."));
    }

    /// <summary>Reads a non-negative integer field.</summary>
    public long Count(string name)
    {
        long value = 0;
        bool external = _external is not null && _external.TryGetCount(name, out value);
        bool read = external || Required(_root, name, JsonValueKind.Number).TryGetInt64(out value);
        return read && value >= 0
            ? value
            : throw new FormatException($"'{(external ? _external!.ShownName(name) : name)}' must be a non-negative integer.");
    }

    /// <summary>Reads an array of <see cref="Features"/> finite numbers, each at least 0 when <paramref name="nonNegative"/> is set.</summary>
    public double[] Array(string name, bool nonNegative = false) => ReadArray(_root, _external, name, Features, nonNegative);

    /// <summary>A field that, where present, is a positive integer.</summary>
    private static int? OptionalPositive(JsonElement root, string name)
        => !root.TryGetProperty(name, out JsonElement element) ? null
            : element.ValueKind == JsonValueKind.Number && element.TryGetInt32(out int value) && value > 0 ? value
            : throw new FormatException($"'{name}' must be a positive integer, not {Quote(element.GetRawText())}.");

    /// <summary>At most 40 characters of a value quoted in a message, so that a huge string does not flood it.</summary>
    internal static string Quote(string text) => text.Length <= 40 ? text : string.Concat(text.AsSpan(0, 40), "…");

    /// <summary>
    /// The rule every saved value keeps, checked in one place for both directions: what Export would refuse to write,
    /// Parse refuses to read. Returns what is wrong with the value, or null.
    /// </summary>
    private static string? Violation(double value, bool nonNegative)
        => !double.IsFinite(value) ? "must be a finite number"
            : nonNegative && value < 0 ? "must not be negative"
            : null;

    /// <summary>Reads an array field from the JSON, or from <paramref name="external"/> when it holds the field; either way checked by one rule.</summary>
    private static double[] ReadArray(JsonElement root, ExternalFields? external, string name, int features, bool nonNegative = false)
    {
        double[]? given = null;
        JsonElement array = default;
        if (external is not null && external.TryGetVector(name, out given))
        {
            name = external.ShownName(name);
        }
        else
        {
            array = Required(root, name, JsonValueKind.Array);
        }

        int count = given?.Length ?? array.GetArrayLength();
        if (count != features)
        {
            throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"'{name}' has {count} values, but 'features' is {features}."));
        }

        var values = new double[features];
        for (int i = 0; i < features; i++)
        {
            string element = string.Create(CultureInfo.InvariantCulture, $"{name}[{i}]");
            values[i] = given is null ? Number(array[i], element) : given[i];
            if (Violation(values[i], nonNegative) is string problem)
            {
                throw new FormatException(string.Create(CultureInfo.InvariantCulture, $"'{element}' {problem}, not {values[i]:R}."));
            }
        }

        return values;
    }

    private static JsonElement Required(JsonElement root, string name, JsonValueKind? kind)
    {
        if (!root.TryGetProperty(name, out JsonElement element))
        {
            throw new FormatException($"The saved state lacks the field '{name}'.");
        }

        if (kind is { } k && element.ValueKind != k)
        {
            throw new FormatException($"The field '{name}' must be a JSON {k.ToString().ToLowerInvariant()}, not {element.ValueKind.ToString().ToLowerInvariant()}.");
        }

        return element;
    }

    private static double Number(JsonElement element, string name)
    {
        if (element.ValueKind != JsonValueKind.Number || !element.TryGetDouble(out double value) || !double.IsFinite(value))
        {
            throw new FormatException($"'{name}' must be a finite number, not {Quote(element.GetRawText())}.");
        }

        return value;
    }

    /// <summary>Writes the fields of a state: into the JSON, or into <paramref name="external"/> for the fields it holds.</summary>
    internal readonly struct Writer(Utf8JsonWriter json, ExternalFields? external)
    {
        public void Number(string name, double value) => json.WriteNumber(name, value);

        public void Boolean(string name, bool value) => json.WriteBoolean(name, value);

        public void NullableNumber(string name, double? value)
        {
            if (value is double v)
            {
                json.WriteNumber(name, v);
            }
            else
            {
                json.WriteNull(name);
            }
        }

        public void Integer(string name, long value)
        {
            if (external is not null && external.Holds(name))
            {
                external.SetCount(name, value);
                return;
            }

            json.WriteNumber(name, value);
        }

        /// <summary>
        /// Writes a vector, refusing (before writing anything of it) a value that an import would refuse; a field held by
        /// the external fields is checked only if they ask for it, under the name they give it.
        /// </summary>
        /// <exception cref="InvalidOperationException">A value is not finite, or negative where it must not be; the message names it.</exception>
        public void Array(string name, Vector<double> values, bool nonNegative = false)
        {
            bool outside = external is not null && external.Holds(name);
            if (!outside || external!.CheckOnWrite)
            {
                string shown = outside ? external!.ShownName(name) : name;
                for (int i = 0; i < values.Count; i++)
                {
                    if (Violation(values[i], nonNegative) is string problem)
                    {
                        throw new InvalidOperationException(
                            string.Create(CultureInfo.InvariantCulture, $"The layer cannot be saved: {shown}[{i}] is {values[i]:R}, but a saved {shown} {problem}."));
                    }
                }
            }

            if (outside)
            {
                external!.SetVector(name, values.ToArray());
                return;
            }

            json.WriteStartArray(name);
            foreach (double v in values)
            {
                json.WriteNumberValue(v);
            }

            json.WriteEndArray();
        }
    }
}
