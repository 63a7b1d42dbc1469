using System;
using System.Text.Json.Nodes;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// RMS norm's own rules, each on both sides and with its message: the group count, what it saves and what an import of
/// another group count says, and its forward and backward against numbers worked out by hand.
/// </summary>
public class MutationRmsNormTests
{
    [Fact]
    public void The_group_count_must_be_positive_and_divide_the_features()
    {
        foreach (int groups in new[] { 0, -1 })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => new RMSNormLayer(4, groups: groups));
            Assert.Equal("groups", e.ParamName);
            Assert.StartsWith("The number of groups must be at least 1.", e.Message, StringComparison.Ordinal);
        }

        var split = Assert.Throws<ArgumentException>(() => new RMSNormLayer(6, groups: 4));
        Assert.Equal("groups", split.ParamName);
        Assert.StartsWith("6 features cannot be split into 4 groups of equal size: the number of groups must divide the number of features.", split.Message, StringComparison.Ordinal);

        Assert.Equal(1, new RMSNormLayer(6, groups: 1).Groups);
        Assert.Equal(6, new RMSNormLayer(6, groups: 6).Groups);
        Assert.Equal(3, new RMSNormLayer(6, groups: 3).Groups);
    }

    [Fact]
    public void It_names_its_groups_only_when_there_are_several_and_saves_them()
    {
        Assert.Equal("RMSNormLayer(features: 4, training, strategy: closed)", new RMSNormLayer(4).ToString());
        Assert.Equal("RMSNormLayer(features: 4, groups: 4, not affine, training, strategy: staged)", new RMSNormLayer(4, groups: 4, backward: BackwardStrategy.Staged, affine: false).ToString());

        string saved = JsonNode.Parse(new RMSNormLayer(4, epsilon: 0.5, groups: 2).ExportState())!.ToJsonString();
        Assert.Equal("""{"format":"BatchNorm.RMSNormLayer","version":1,"features":4,"epsilon":0.5,"gamma":[1,1,1,1],"groups":2}""", saved);
        RMSNormLayer restored = RMSNormLayer.FromState(saved);
        Assert.Equal(2, restored.Groups);
        Assert.Equal(0.5, restored.Epsilon);
        new RMSNormLayer(4, groups: 2).ImportState(saved);
    }

    [Theory]
    [InlineData(1, 2)]
    [InlineData(2, 1)]
    [InlineData(4, 2)]
    public void An_import_of_another_group_count_is_refused_with_both_counts(int saved, int mine)
    {
        string json = new RMSNormLayer(4, groups: saved).ExportState();
        var layer = new RMSNormLayer(4, groups: mine);
        layer.Gamma[0] = 3;
        var e = Assert.Throws<ArgumentException>(() => layer.ImportState(json));
        Assert.Equal("json", e.ParamName);
        Assert.StartsWith($"The saved state is for {saved} groups, but this layer has {mine}.", e.Message, StringComparison.Ordinal);
        Assert.Equal(3, layer.Gamma[0]);
    }

    [Fact]
    public void Another_feature_count_is_named_before_another_group_count()
    {
        // The same groups but other features; then both differ, and the feature count is what the message names.
        var e = Assert.Throws<ArgumentException>(() => new RMSNormLayer(4, groups: 2).ImportState(new RMSNormLayer(6, groups: 2).ExportState()));
        Assert.StartsWith("The saved state is for 6 features, but this layer has 4.", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => new RMSNormLayer(4, groups: 2).ImportState(new RMSNormLayer(6, groups: 3).ExportState()));
        Assert.StartsWith("The saved state is for 6 features, but this layer has 4.", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("closed")]
    [InlineData("staged")]
    public void Forward_and_backward_by_hand_in_groups_of_two(string strategy)
    {
        // Row {3, 4 | 1, −1}, ε = 0.5: group 0 has ms = 12.5, √(ms + ε) = √13; group 1 has ms = 1, √(ms + ε) = √1.5.
        var layer = new RMSNormLayer(4, epsilon: 0.5, groups: 2, backward: ContractTests.Strategy(strategy));
        layer.Gamma.SetValues([2, -1, 0.5, 4]);
        Matrix<double> x = Matrix<double>.Build.DenseOfArray(new[,] { { 3.0, 4, 1, -1 } });
        Matrix<double> y = layer.Forward(x);
        double a = 1 / Math.Sqrt(13), b = 1 / Math.Sqrt(1.5);
        double[] xHat = [3 * a, 4 * a, b, -b];
        double[] expectedY = [2 * xHat[0], -xHat[1], 0.5 * xHat[2], 4 * xHat[3]];
        for (int j = 0; j < 4; j++)
        {
            Assert.Equal(expectedY[j], y[0, j], 1e-15);
        }

        // g = γ·dy; dx = (g − x̂·mean(g·x̂))/√(ms + ε) per group: no mean(g) term without centering.
        double[] dy = [1, 2, -1, 0.5];
        Matrix<double> dx = layer.Backward(Matrix<double>.Build.DenseOfRowArrays(dy));
        double[] g = [2, -2, -0.5, 2];
        double m0 = ((g[0] * xHat[0]) + (g[1] * xHat[1])) / 2, m1 = ((g[2] * xHat[2]) + (g[3] * xHat[3])) / 2;
        double[] expectedDx = [(g[0] - (xHat[0] * m0)) * a, (g[1] - (xHat[1] * m0)) * a, (g[2] - (xHat[2] * m1)) * b, (g[3] - (xHat[3] * m1)) * b];
        for (int j = 0; j < 4; j++)
        {
            Assert.Equal(expectedDx[j], dx[0, j], 1e-14);
            Assert.Equal(dy[j] * xHat[j], layer.GammaGradient[j], 1e-15);
        }

        Assert.Equal([0.0, 0, 0, 0], layer.BetaGradient.ToArray());
    }
}
