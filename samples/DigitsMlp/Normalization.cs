using System;
using System.Collections.Generic;
using BatchNorm;

namespace DigitsMlp;

/// <summary>
/// A normalization the demo can put in the network's two slots, by its command-line name. Every kind is built by one
/// constructor call and used through <see cref="INormalizationLayer"/> alone.
/// </summary>
/// <param name="Key">The name on the command line: batch, layer, group, rms, renorm or none.</param>
/// <param name="Title">The name in tables and legends.</param>
/// <param name="Create">Makes the layer for a slot of the given width with the given backward strategy; null for none.</param>
public sealed record Normalization(string Key, string Title, Func<int, BackwardStrategy, INormalizationLayer>? Create)
{
    /// <summary>Every kind, in the order of the command line's help.</summary>
    public static IReadOnlyList<Normalization> All { get; } =
    [
        new("batch", "BatchNorm", (features, strategy) => new BatchNormLayer(features, backward: strategy)),
        new("layer", "LayerNorm", (features, strategy) => new LayerNormLayer(features, backward: strategy)),
        new("group", "GroupNorm (8 groups)", (features, strategy) => new GroupNormLayer(features, 8, backward: strategy)),
        new("rms", "RMSNorm", (features, strategy) => new RMSNormLayer(features, backward: strategy)),
        new("renorm", "BatchRenorm", (features, strategy) => new BatchRenormLayer(features, backward: strategy)),
        new("none", "plain", null),
    ];

    /// <summary>Gets whether the network runs without normalization.</summary>
    public bool IsNone => Create is null;

    /// <summary>The kind with the given command-line name.</summary>
    /// <param name="key">batch, layer, group, rms, renorm or none.</param>
    /// <returns>The kind.</returns>
    /// <exception cref="ArgumentException">No kind has that name.</exception>
    public static Normalization Parse(string key)
    {
        foreach (Normalization n in All)
        {
            if (n.Key == key)
            {
                return n;
            }
        }

        throw new ArgumentException($"--norm must be one of batch, layer, group, rms, renorm or none, not '{key}'.");
    }

    /// <inheritdoc/>
    public override string ToString() => Title;
}
