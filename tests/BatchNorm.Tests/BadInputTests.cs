using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Every rule of the bad-input table, each with a check that the layer's state is untouched.</summary>
public class BadInputTests
{
    private static readonly Matrix<double> Batch = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 2, 3 }, { 4, 0, -1 }, { 2, 5, 7 } });

    /// <summary>A layer with non-trivial state in every field: two training steps, a backward, an edited γ and β.</summary>
    private static BatchNormLayer Primed(bool training = true)
    {
        var layer = new BatchNormLayer(3);
        layer.Forward(Batch);
        layer.Forward(Batch.Multiply(3));
        layer.Backward(Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0, -1 }, { 0.5, 2, 0 }, { -1, 1, 3 } }));
        layer.Gamma[1] = 2.5;
        layer.Beta[2] = -0.5;
        layer.IsTraining = training;
        return layer;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-3)]
    public void Features_must_be_positive(int features)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BatchNormLayer(features));
        Assert.Equal("features", e.ParamName);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(-1e-5)]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    public void Epsilon_must_be_positive_and_finite(double epsilon)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BatchNormLayer(2, epsilon));
        Assert.Equal("epsilon", e.ParamName);
    }

    [Theory]
    [InlineData(-0.01)]
    [InlineData(1.01)]
    [InlineData(double.NaN)]
    [InlineData(double.NegativeInfinity)]
    public void Momentum_must_lie_in_the_unit_interval(double momentum)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BatchNormLayer(2, momentum: momentum));
        Assert.Equal("momentum", e.ParamName);
    }

    [Fact]
    public void Null_arguments_throw_and_change_nothing()
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        var y = Matrix<double>.Build.Dense(3, 3);
        Assert.Equal("input", Assert.Throws<ArgumentNullException>(() => layer.Forward((Matrix<double>)null!)).ParamName);
        Assert.Equal("input", Assert.Throws<ArgumentNullException>(() => layer.Forward(null!, y)).ParamName);
        Assert.Equal("output", Assert.Throws<ArgumentNullException>(() => layer.Forward(Batch, null!)).ParamName);
        Assert.Equal("outputGradient", Assert.Throws<ArgumentNullException>(() => layer.Backward((Matrix<double>)null!)).ParamName);
        Assert.Equal("outputGradient", Assert.Throws<ArgumentNullException>(() => layer.Backward(null!, y)).ParamName);
        Assert.Equal("inputGradient", Assert.Throws<ArgumentNullException>(() => layer.Backward(y, null!)).ParamName);
        Assert.Throws<ArgumentNullException>(() => layer.BackwardStrategy = null!);
        snapshot.AssertUnchanged();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_wrong_column_count_names_both_shapes(bool training)
    {
        BatchNormLayer layer = Primed(training);
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(4, 2)));
        Assert.Equal("input", e.ParamName);
        Assert.Contains("4x2", e.Message);
        Assert.Contains("3 features", e.Message);
        snapshot.AssertUnchanged();
    }

    [Fact]
    public void An_output_of_another_shape_is_rejected()
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(Batch, Matrix<double>.Build.Dense(2, 3)));
        Assert.Equal("output", e.ParamName);
        Assert.Contains("2x3", e.Message);
        Assert.Contains("3x3", e.Message);
        snapshot.AssertUnchanged();
    }

    [Theory]
    [InlineData(2, 3)]
    [InlineData(3, 2)]
    [InlineData(4, 3)]
    public void An_output_gradient_whose_shape_differs_from_the_last_forward_names_both_shapes(int rows, int columns)
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(rows, columns, 1.0)));
        Assert.Equal("outputGradient", e.ParamName);
        Assert.Contains($"{rows}x{columns}", e.Message);
        Assert.Contains("3x3", e.Message);
        snapshot.AssertUnchanged();
    }

    [Fact]
    public void An_input_gradient_destination_of_another_shape_is_rejected()
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Backward(Matrix<double>.Build.Dense(3, 3, 1.0), Matrix<double>.Build.Dense(3, 4)));
        Assert.Equal("inputGradient", e.ParamName);
        Assert.Contains("3x4", e.Message);
        snapshot.AssertUnchanged();
    }

    [Fact]
    public void Training_needs_two_rows()
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(1, 3, 2.0)));
        Assert.Equal("input", e.ParamName);
        Assert.Contains("at least 2 rows to estimate a variance", e.Message);
        Assert.Throws<ArgumentException>(() => layer.Forward(Matrix<double>.Build.Dense(1, 3, 2.0), Matrix<double>.Build.Dense(1, 3)));
        snapshot.AssertUnchanged();
    }

    public static TheoryData<double, int> NonFiniteInputs => new()
    {
        { double.NaN, 0 },
        { double.PositiveInfinity, 1 },
        { double.NegativeInfinity, 2 },
    };

    [Theory]
    [MemberData(nameof(NonFiniteInputs))]
    public void A_non_finite_training_batch_names_the_column(double bad, int column)
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        Matrix<double> x = Batch.Clone();
        x[1, column] = bad;
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x, Matrix<double>.Build.Dense(3, 3)));
        Assert.Equal("input", e.ParamName);
        Assert.Contains($"Column {column}", e.Message);
        snapshot.AssertUnchanged();
    }

    [Theory]
    [InlineData(1e308, -1e308)]
    [InlineData(1.5e308, 1.7e308)]
    [InlineData(-1.2e308, 1.3e308)]
    public void Finite_values_whose_statistics_overflow_are_rejected(double a, double b)
    {
        BatchNormLayer layer = Primed();
        var snapshot = new LayerSnapshot(layer);
        Matrix<double> x = Batch.Clone();
        x[0, 2] = a;
        x[1, 2] = b;
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Contains("Column 2", e.Message);
        snapshot.AssertUnchanged();
    }

    [Fact]
    public void Inference_passes_non_finite_values_through()
    {
        BatchNormLayer layer = Primed(training: false);
        Matrix<double> x = Batch.Clone();
        x[0, 1] = double.NaN;
        Matrix<double> y = layer.Forward(x);
        Assert.True(double.IsNaN(y[0, 1]));
        Assert.False(double.IsNaN(y[1, 1]));
    }

    public static TheoryData<double, int, bool> NonFiniteGradients => new()
    {
        { double.NaN, 0, true },
        { double.PositiveInfinity, 1, true },
        { double.NegativeInfinity, 2, true },
        { 1e308, 1, true },
        { double.NaN, 2, false },
        { double.PositiveInfinity, 0, false },
        { 1e308, 0, false },
    };

    [Theory]
    [MemberData(nameof(NonFiniteGradients))]
    public void A_non_finite_or_overflowing_output_gradient_names_the_column(double bad, int column, bool training)
    {
        foreach (BackwardStrategy strategy in new[] { BackwardStrategy.Staged, BackwardStrategy.ClosedForm })
        {
            BatchNormLayer layer = Primed();
            layer.BackwardStrategy = strategy;
            layer.IsTraining = training;
            layer.Forward(Batch);
            var snapshot = new LayerSnapshot(layer);
            Matrix<double> dy = Matrix<double>.Build.Dense(3, 3, 0.5);
            dy[0, column] = bad;
            dy[2, column] = bad; // two huge values of one sign overflow Σdy
            var e = Assert.Throws<ArgumentException>(() => layer.Backward(dy));
            Assert.Equal("outputGradient", e.ParamName);
            Assert.Contains($"Column {column}", e.Message);
            Assert.Throws<ArgumentException>(() => layer.Backward(dy, Matrix<double>.Build.Dense(3, 3)));
            snapshot.AssertUnchanged();
        }
    }

    [Fact]
    public void Backward_before_any_forward_is_an_invalid_operation()
    {
        var layer = new BatchNormLayer(3);
        var snapshot = new LayerSnapshot(layer);
        var e = Assert.Throws<InvalidOperationException>(() => layer.Backward(Batch));
        Assert.Contains("Forward", e.Message);
        Assert.Throws<InvalidOperationException>(() => layer.Backward(Batch, Matrix<double>.Build.Dense(3, 3)));
        snapshot.AssertUnchanged();
    }

    [Fact]
    public void A_strategy_called_directly_checks_its_arguments()
    {
        BatchNormLayer layer = Primed();
        NormalizationCache cache = layer.Cache!;
        var v = Vector<double>.Build.Dense(3);
        var m = Matrix<double>.Build.Dense(3, 3);
        Assert.Throws<ArgumentNullException>(() => BackwardStrategy.Staged.Backward(null!, v, m, m, v, v));
        Assert.Throws<ArgumentException>(() => BackwardStrategy.Staged.Backward(cache, v, Matrix<double>.Build.Dense(2, 3), m, v, v));
        Assert.Throws<ArgumentException>(() => BackwardStrategy.ClosedForm.Backward(cache, Vector<double>.Build.Dense(2), m, m, v, v));
    }
}
