using System;
using System.Globalization;

namespace BatchNorm;

/// <summary>
/// Root-mean-square normalization (Zhang and Sennrich, 2019), PyTorch's <c>nn.RMSNorm</c>: each row (or each group of
/// adjacent columns of a row) is divided by its root mean square, then scaled by γ per feature. There is no centering and
/// no β.
/// </summary>
/// <remarks>
/// <para>Per row i and group g of C = D/G adjacent features: ms = (1/C)·Σⱼ xᵢⱼ², x̂ᵢⱼ = xᵢⱼ/√(ms + ε), yᵢⱼ = γⱼ·x̂ᵢⱼ.</para>
/// <para>Backward, with gⱼ = γⱼ·dyⱼ the gradient at x̂: dx = (g − x̂·mean(g·x̂))/√(ms + ε), the closed form of
/// <see cref="BackwardStrategy.ClosedForm"/> without its mean(g) term, since there is no node μ; the staged strategy walks
/// the graph x → ms → x̂ → y node by node. Both are derived in docs/derivation.md. A strategy of your own must say it
/// handles this graph (<see cref="BackwardStrategy.SupportsUncentered"/>).</para>
/// <para>The cache keeps ms where the other layers keep σ², and a mean of 0. No running statistics: training and
/// inference are the same, and a single row works. Squares beyond the range of double (|x| above about 1e154) make a
/// row's statistics non-finite, and the Forward refuses it, naming the row.</para>
/// </remarks>
public sealed class RMSNormLayer : NormalizationLayer
{
    /// <summary>
    /// The default ε: PyTorch's <c>eps=None</c>, which is <c>torch.finfo(dtype).eps</c>, 2⁻⁵² ≈ 2.2e-16 for float64.
    /// (Keras' RMSNormalization uses 1e-6, Flax 1e-6.)
    /// </summary>
    public const double DefaultEpsilon = 2.220446049250313e-16;

    /// <summary>Creates the layer with γ = 1.</summary>
    /// <param name="features">D, at least 1.</param>
    /// <param name="epsilon">ε, positive and finite; <see cref="DefaultEpsilon"/> as PyTorch.</param>
    /// <param name="groups">G, the groups of adjacent features each row is normalized in; 1 (the whole row) as PyTorch. It must divide D.</param>
    /// <param name="backward">The backward strategy; closed form when null. It must handle uncentered segments.</param>
    /// <param name="affine">Whether γ is learnable (PyTorch's <c>elementwise_affine</c>); when false it stays 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> or <paramref name="groups"/> ≤ 0, or ε not positive and finite.</exception>
    /// <exception cref="ArgumentException"><paramref name="groups"/> does not divide <paramref name="features"/>, or the
    /// strategy does not handle uncentered segments.</exception>
    public RMSNormLayer(int features, double epsilon = DefaultEpsilon, int groups = 1, BackwardStrategy? backward = null, bool affine = true)
        : base(features, 1, epsilon, backward, affine, shift: false, centered: false)
    {
        Groups = Guard.Groups(features, groups, nameof(features));
    }

    /// <summary>Gets G, the number of groups per row.</summary>
    public int Groups { get; }

    /// <summary>Creates a layer from a state written by <see cref="NormalizationLayer.ExportState"/> of an <see cref="RMSNormLayer"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="NormalizationLayer.ImportState"/>, or the state is of another layer type.</exception>
    public static new RMSNormLayer FromState(string json) => (RMSNormLayer)LayerState.Create(json, typeof(RMSNormLayer));

    private protected override SegmentLayout Layout(int rows) => SegmentLayout.RowGroupsOf(rows, Features, Groups);

    private protected override string Describe()
        => (Groups == 1 ? string.Empty : string.Create(CultureInfo.InvariantCulture, $", groups: {Groups}")) + base.Describe();

    internal override string? StateShapeMismatch(LayerState state) => base.StateShapeMismatch(state) ?? state.GroupsMismatch(Groups);

    internal override void WriteStateFields(LayerState.Writer writer) => writer.Integer("groups", Groups);
}
