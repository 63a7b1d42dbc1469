using System;
using System.Collections.Generic;
using System.Diagnostics.CodeAnalysis;

namespace BatchNorm;

/// <summary>
/// Fields of a saved state that travel outside its JSON, as tensors of another format (PyTorch's state_dict). A layer
/// writes them here through the same <see cref="LayerState.Writer"/> calls, and reads them back through the same
/// <see cref="LayerState"/> calls, so both formats keep one set of rules; messages name a field as the other format does.
/// </summary>
/// <param name="shownNames">The fields held here, by their state names ("gamma"), each with the name messages use ("bn1.weight").</param>
/// <param name="checkOnWrite">
/// Whether writing checks the values against the saved-state rules: true to export them; false to learn only which of
/// these fields the layer has, and their lengths, before an import replaces their values.
/// </param>
internal sealed class ExternalFields(IReadOnlyDictionary<string, string> shownNames, bool checkOnWrite)
{
    private readonly Dictionary<string, double[]> _vectors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _counts = new(StringComparer.Ordinal);

    /// <summary>Gets whether writing checks the values (see the constructor).</summary>
    public bool CheckOnWrite { get; } = checkOnWrite;

    /// <summary>Gets the vectors written or set, by state name.</summary>
    public IReadOnlyDictionary<string, double[]> Vectors => _vectors;

    /// <summary>Gets the counts written or set, by state name.</summary>
    public IReadOnlyDictionary<string, long> Counts => _counts;

    /// <summary>Whether the field travels outside the JSON.</summary>
    public bool Holds(string name) => shownNames.ContainsKey(name);

    /// <summary>The name messages give the field.</summary>
    public string ShownName(string name) => shownNames[name];

    /// <summary>Sets a vector field.</summary>
    public void SetVector(string name, double[] values) => _vectors[name] = values;

    /// <summary>Sets a count field.</summary>
    public void SetCount(string name, long value) => _counts[name] = value;

    /// <summary>Gets a vector field, if it is held here and has been set.</summary>
    public bool TryGetVector(string name, [NotNullWhen(true)] out double[]? values) => _vectors.TryGetValue(name, out values);

    /// <summary>Gets a count field, if it is held here and has been set.</summary>
    public bool TryGetCount(string name, out long value) => _counts.TryGetValue(name, out value);
}
