using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>The check of a call that overflows in one column: refused with that column named, and nothing changed.</summary>
internal static class OverflowAssert
{
    /// <summary>Forward(x) must throw naming y = γ·x̂ + β of <paramref name="column"/> and leave the layer as it was.</summary>
    public static void ForwardNames(BatchNormLayer layer, Matrix<double> x, int column)
    {
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Contains($"Column {column} of input", e.Message);
        Assert.Contains("y = γ·x̂ + β overflows", e.Message);
        snapshot.AssertUnchanged();
    }

    /// <summary>Backward(dy) must throw naming dx of <paramref name="column"/> and leave the layer as it was.</summary>
    public static void BackwardNames(BatchNormLayer layer, Matrix<double> dy, int column)
    {
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
        Assert.Contains($"Column {column} of outputGradient cannot be back-propagated", e.Message);
        snapshot.AssertUnchanged();
    }
}
