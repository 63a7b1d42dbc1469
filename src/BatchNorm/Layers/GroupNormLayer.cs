using System;
using System.Globalization;

namespace BatchNorm;

/// <summary>
/// Group normalization (Wu and He, 2018): each row's features are split into G groups of adjacent columns, and
/// each group is normalized with its own statistics, then scaled by γ and shifted by β per feature. With G = 1 it
/// is <see cref="LayerNormLayer"/>.
/// </summary>
/// <remarks>
/// <para>Per row i and group g of C = D/G adjacent features:
/// μ = (1/C)·Σ xᵢⱼ and σ² = (1/C)·Σ (xᵢⱼ − μ)² over the group, x̂ᵢⱼ = (xᵢⱼ − μ)/√(σ² + ε), yᵢⱼ = γⱼ·x̂ᵢⱼ + βⱼ.</para>
/// <para>Backward: dγⱼ = Σᵢ dyᵢⱼ·x̂ᵢⱼ, dβⱼ = Σᵢ dyᵢⱼ, and within each group, with dx̂ = dy·γ, the normalization's backward
/// pass of the group: dx = (1/√(σ² + ε))·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) for the closed form, or the same
/// graph walked node by node for the staged strategy.</para>
/// <para>There are no running statistics, so training and inference are the same (<see cref="NormalizationLayer.IsTraining"/>
/// changes nothing), and a single row is a valid batch. Rows are strided in MathNet's column-major storage, so the
/// engine sweeps down the contiguous columns and treats the rows as SIMD lanes; nothing is transposed.</para>
/// </remarks>
public sealed class GroupNormLayer : NormalizationLayer
{
    /// <summary>Creates the layer with γ = 1 and β = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="groups">G, at least 1; it must divide D.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="backward">The backward strategy; closed form when null.</param>
    /// <param name="affine">Whether γ and β are learnable (PyTorch's <c>affine</c>); when false they stay 1 and 0.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> or <paramref name="groups"/> ≤ 0, or ε not positive and finite.</exception>
    /// <exception cref="ArgumentException"><paramref name="groups"/> does not divide <paramref name="features"/>.</exception>
    public GroupNormLayer(int features, int groups, double epsilon = 1e-5, BackwardStrategy? backward = null, bool affine = true)
        : this(features, groups, 1, epsilon, backward, affine, nameof(features))
    {
    }

    /// <summary>
    /// Creates the layer for <paramref name="channels"/> channels of <paramref name="spatialSize"/> positions each, as
    /// PyTorch's GroupNorm on (N, C, S) (CS231n's spatial group norm): each row holds C·S columns, channel-major; each
    /// group is C/G adjacent channels (all their positions) of one row; γ and β are per channel.
    /// </summary>
    /// <param name="channels">C, at least 1.</param>
    /// <param name="groups">G, at least 1; it must divide C.</param>
    /// <param name="spatialSize">S, at least 1; with S = 1 this is the per-feature layer.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="backward">The backward strategy; closed form when null.</param>
    /// <param name="affine">Whether γ and β are learnable (PyTorch's <c>affine</c>); when false they stay 1 and 0.</param>
    /// <returns>The layer.</returns>
    /// <exception cref="ArgumentOutOfRangeException">C, G or S ≤ 0, C·S too large, or ε not positive and finite.</exception>
    /// <exception cref="ArgumentException"><paramref name="groups"/> does not divide <paramref name="channels"/>.</exception>
    /// <remarks>A factory rather than a second constructor, so that <c>new GroupNormLayer(32, 4, 1)</c> cannot mean
    /// channels of one position when ε = 1 was meant.</remarks>
    public static GroupNormLayer Spatial(int channels, int groups, int spatialSize, double epsilon = 1e-5, BackwardStrategy? backward = null, bool affine = true)
        => new(channels, groups, spatialSize, epsilon, backward, affine, nameof(channels));

    private GroupNormLayer(int channels, int groups, int spatialSize, double epsilon, BackwardStrategy? backward, bool affine, string channelsName)
        : base(channels, spatialSize, epsilon, backward, affine, channelsName: channelsName)
    {
        Groups = Guard.Groups(channels, groups, channelsName);
    }

    /// <summary>Gets G, the number of groups per row.</summary>
    public int Groups { get; }

    /// <summary>Creates a layer from a state written by <see cref="NormalizationLayer.ExportState"/> of a <see cref="GroupNormLayer"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="NormalizationLayer.ImportState"/>, or the state is of another layer type.</exception>
    public static new GroupNormLayer FromState(string json) => (GroupNormLayer)LayerState.Create(json, typeof(GroupNormLayer));

    private protected override SegmentLayout Layout(int rows) => SegmentLayout.RowGroupsOf(rows, Features, Groups);

    private protected override string Describe() => string.Create(CultureInfo.InvariantCulture, $", groups: {Groups}") + base.Describe();

    internal override string? StateShapeMismatch(LayerState state) => base.StateShapeMismatch(state) ?? state.GroupsMismatch(Groups);

    internal override void WriteStateFields(LayerState.Writer writer) => writer.Integer("groups", Groups);
}

/// <summary>
/// Layer normalization (Ba, Kiros and Hinton, 2016): each row is normalized over all its features, then scaled
/// by γ and shifted by β per feature. No running statistics; the same in training and inference; works on a
/// single row. It is <see cref="GroupNormLayer"/> with one group, on the same engine.
/// </summary>
public sealed class LayerNormLayer : NormalizationLayer
{
    /// <summary>Creates the layer with γ = 1 and β = 0.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="epsilon">ε, positive and finite.</param>
    /// <param name="backward">The backward strategy; closed form when null.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> ≤ 0 or ε not positive and finite.</exception>
    /// <param name="affine">Whether γ and β are learnable (PyTorch's <c>elementwise_affine</c>); when false they stay 1 and 0.</param>
    public LayerNormLayer(int features, double epsilon = 1e-5, BackwardStrategy? backward = null, bool affine = true)
        : base(features, 1, epsilon, backward, affine)
    {
    }

    /// <summary>Creates a layer from a state written by <see cref="NormalizationLayer.ExportState"/> of a <see cref="LayerNormLayer"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="NormalizationLayer.ImportState"/>, or the state is of another layer type.</exception>
    public static new LayerNormLayer FromState(string json) => (LayerNormLayer)LayerState.Create(json, typeof(LayerNormLayer));

    private protected override SegmentLayout Layout(int rows) => SegmentLayout.RowGroupsOf(rows, Features, 1);
}
