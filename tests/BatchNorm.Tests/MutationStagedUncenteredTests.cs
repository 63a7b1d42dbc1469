using System;
using System.Linq;

namespace BatchNorm.Tests;

/// <summary>
/// The staged strategy on one uncentered segment (RMS norm's graph, x → ms → x̂ → y), both steps called directly, against
/// its nodes worked out here: there is no node μ, so the sums of μ are 0 whatever the array held, and node x has two paths.
/// </summary>
public class MutationStagedUncenteredTests
{
    private static readonly double[] XHat = [-1.25, 0.5, 1.5];
    private static readonly double[] Dy = [0.75, -2, 0.5];
    private const double Gamma = 1.5, MeanSquare = 3, Epsilon = 1;     // 1/√(ms + ε) = 1/2, √(ms + ε) = 2

    [Fact]
    public void Uncentered_sums_are_node_y_and_node_ms_and_nothing_for_mu()
    {
        double[] sums = Enumerable.Repeat(double.NaN, 5).ToArray(), scratch = new double[3];
        var segment = new BackwardSegment(Dy, XHat, Gamma, MeanSquare, Epsilon, centered: false);
        Assert.False(segment.Centered);
        BackwardStrategy.Staged.SegmentSums(segment, sums, scratch);

        // dx̂ = γ·dy = (1.125, −3, 0.75); x = 2·x̂ = (−2.5, 1, 3); dms = Σ dx̂·x·(−½)·(1/2)³ = −(−2.8125 − 3 + 2.25)/16.
        Assert.Equal([1.125, -3, 0.75], scratch);
        Assert.Equal((0.75 * -1.25) + (-2 * 0.5) + (0.5 * 1.5), sums[0]);
        Assert.Equal(-0.75, sums[1]);
        Assert.Equal(3.5625 / 16, sums[2], 1e-15);
        Assert.Equal(0, sums[3]);
        Assert.Equal(0, sums[4]);
    }

    [Fact]
    public void Uncentered_input_gradient_has_the_paths_through_x_hat_and_ms_only()
    {
        // dxᵢ = dx̂ᵢ/√(ms + ε) + dms·2·xᵢ/N, with dms = 0.3 given and the μ sums set to values that must not count.
        double[] sums = [99, 99, 0.3, -0.7, 0.9], dx = [0.4, -1.1, 0.6];
        var segment = new BackwardSegment(Dy, XHat, Gamma, MeanSquare, Epsilon, centered: false);
        BackwardStrategy.Staged.SegmentInputGradient(segment, sums, dx);
        double[] expected = [(0.4 * 0.5) + (0.3 * 2 * -2.5 / 3), (-1.1 * 0.5) + (0.3 * 2 * 1 / 3), (0.6 * 0.5) + (0.3 * 2 * 3 / 3)];
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(expected[i], dx[i], 1e-15);
        }
    }
}
