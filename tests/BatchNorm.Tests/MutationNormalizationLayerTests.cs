using System;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The base layer's own rules, each on both sides with its exact message: the strategies it takes (two sums are enough,
/// one is not; RMS norm only takes a strategy that handles uncentered segments), γ and β fixed where the layer has no
/// learnable ones, the saved shape it refuses, and how it describes channels of several positions.
/// </summary>
public class MutationNormalizationLayerTests
{
    [Fact]
    public void A_strategy_with_exactly_the_two_parameter_sums_is_taken_and_gives_the_closed_form()
    {
        var strategy = new TextbookBackward();     // exactly the two sums every strategy provides, Σdy·x̂ and Σdy
        var layer = new BatchNormLayer(2, backward: strategy);
        Assert.Same(strategy, layer.BackwardStrategy);
        var reference = new BatchNormLayer(2);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2 }, { 3, -2 }, { 5, 0 } });
        Matrix<double> dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, 1 }, { -1, 0.25 }, { 2, -0.75 } });
        layer.Forward(x);
        reference.Forward(x);
        Matrix<double> dx = layer.Backward(dy), expected = reference.Backward(dy);
        for (int i = 0; i < 3; i++)
        {
            for (int j = 0; j < 2; j++)
            {
                Assert.Equal(expected[i, j], dx[i, j], 1e-14);
            }
        }

        Assert.Equal(reference.GammaGradient[0], layer.GammaGradient[0], 1e-14);
        Assert.Equal(reference.BetaGradient[1], layer.BetaGradient[1], 1e-14);

        // It does not handle uncentered segments, so RMS norm refuses it, in the constructor and in the setter.
        var e = Assert.Throws<ArgumentException>(() => new RMSNormLayer(2, backward: strategy));
        Assert.Equal("backward", e.ParamName);
        Assert.StartsWith(
            "The textbook strategy does not handle segments normalized without centering (its SupportsUncentered is false), which RMSNormLayer needs: its graph has no node μ.",
            e.Message,
            StringComparison.Ordinal);
        var rms = new RMSNormLayer(2);
        e = Assert.Throws<ArgumentException>(() => rms.BackwardStrategy = strategy);
        Assert.Equal("value", e.ParamName);
        Assert.Same(BackwardStrategy.ClosedForm, rms.BackwardStrategy);
        rms.BackwardStrategy = BackwardStrategy.Staged;
        Assert.Same(BackwardStrategy.Staged, rms.BackwardStrategy);
    }

    [Fact]
    public void A_strategy_with_one_sum_is_refused_with_its_name_and_count()
    {
        var e = Assert.Throws<ArgumentException>(() => new LayerNormLayer(2, backward: new ContractTests.OneSum()));
        Assert.Equal("backward", e.ParamName);
        Assert.StartsWith("The one sum strategy reports 1 sums per segment, but every strategy provides at least Σdy·x̂ and Σdy.", e.Message, StringComparison.Ordinal);
        var layer = new LayerNormLayer(2);
        Assert.Equal("value", Assert.Throws<ArgumentException>(() => layer.BackwardStrategy = new ContractTests.OneSum()).ParamName);
        Assert.Equal("value", Assert.Throws<ArgumentNullException>(() => layer.BackwardStrategy = null!).ParamName);
    }

    [Fact]
    public void Fixed_gamma_and_beta_changed_by_hand_are_named_in_the_refusal()
    {
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2, 3 }, { 3, -2, 0 } });
        var notAffine = new BatchNormLayer(3, affine: false);
        notAffine.Gamma[2] = 2;
        var e = Assert.Throws<ArgumentException>(() => notAffine.Forward(x));
        Assert.Equal("input", e.ParamName);
        Assert.StartsWith("This BatchNormLayer is not affine: γ is fixed at 1, but gamma[2] = 2.", e.Message, StringComparison.Ordinal);
        notAffine.Gamma[2] = 1;
        notAffine.Beta[1] = -0.5;
        e = Assert.Throws<ArgumentException>(() => notAffine.Forward(x, Matrix<double>.Build.Dense(2, 3)));
        Assert.StartsWith("This BatchNormLayer is not affine: β is fixed at 0, but beta[1] = -0.5.", e.Message, StringComparison.Ordinal);
        Assert.Null(notAffine.Cache);

        // RMS norm has no β at all, even when affine; its γ may change.
        var rms = new RMSNormLayer(3);
        rms.Gamma[0] = 3;
        rms.Forward(x);
        rms.Beta[0] = 0.5;
        e = Assert.Throws<ArgumentException>(() => rms.Forward(x));
        Assert.StartsWith("This RMSNormLayer has no shift: β is fixed at 0, but beta[0] = 0.5.", e.Message, StringComparison.Ordinal);

        // An affine layer with β takes any γ and β.
        var affine = new LayerNormLayer(3);
        affine.Gamma[1] = -2;
        affine.Beta[2] = 7;
        Matrix<double> y = affine.Forward(x);
        Assert.Equal(7, y[0, 2] - (1 / Math.Sqrt((2.0 / 3) + 1e-5)), 1e-12);
    }

    [Fact]
    public void A_saved_state_of_another_shape_is_refused_and_says_how_it_differs()
    {
        AssertRefused(new BatchNormLayer(3).ExportState(), new BatchNormLayer(2), "The saved state is for 3 features, but this layer has 2.");
        AssertRefused(BatchNormLayer.Spatial(3, 2).ExportState(), BatchNormLayer.Spatial(2, 2), "The saved state is for 3 channels, but this layer has 2.");
        AssertRefused(BatchNormLayer.Spatial(2, 4).ExportState(), BatchNormLayer.Spatial(2, 2), "The saved state is for 4 positions per channel, but this layer has 2.");
        AssertRefused(new LayerNormLayer(2, affine: false).ExportState(), new LayerNormLayer(2), "The saved state is of a layer that is not affine, but this layer is affine.");
        AssertRefused(new LayerNormLayer(2).ExportState(), new LayerNormLayer(2, affine: false), "The saved state is of a layer that is affine, but this layer is not affine.");
    }

    [Fact]
    public void Channels_of_several_positions_describe_themselves_by_channels_and_positions()
    {
        Assert.Equal("BatchNormLayer(channels: 2, positions: 3, training, strategy: closed)", BatchNormLayer.Spatial(2, 3).ToString());
        Assert.Equal("BatchNormLayer(features: 2, not affine, inference, strategy: staged)", new BatchNormLayer(2, backward: BackwardStrategy.Staged, affine: false) { IsTraining = false }.ToString());
        string saved = JsonNode.Parse(BatchNormLayer.Spatial(2, 3).ExportState())!.ToJsonString();
        Assert.Contains("\"features\":2,\"spatialSize\":3,", saved, StringComparison.Ordinal);
    }

    private static void AssertRefused(string json, NormalizationLayer layer, string message)
    {
        layer.Gamma[0] = layer.IsAffine ? 5 : 1;
        var e = Assert.Throws<ArgumentException>(() => layer.ImportState(json));
        Assert.Equal("json", e.ParamName);
        Assert.StartsWith(message, e.Message, StringComparison.Ordinal);
        Assert.Equal(layer.IsAffine ? 5 : 1, layer.Gamma[0]);
    }
}
