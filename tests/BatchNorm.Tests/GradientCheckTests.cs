using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>The public gradient-checking helper, on functions whose gradients are known.</summary>
public class GradientCheckTests
{
    [Fact]
    public void Numerical_gradient_of_a_scalar_function_of_a_matrix()
    {
        // f(X) = Σ sin(x)·x² has gradient cos(x)·x² + 2x·sin(x).
        var x = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1.25 }, { 2.0, 0.1 }, { -0.75, 1.5 } });
        Matrix<double> before = x.Clone();
        Matrix<double> numerical = GradientCheck.NumericalGradient(m => m.Enumerate().Sum(v => Math.Sin(v) * v * v), x);
        Matrix<double> analytic = x.Map(v => (Math.Cos(v) * v * v) + (2 * v * Math.Sin(v)));
        Assert.True(GradientCheck.RelativeError(analytic, numerical) < 1e-8);
        Assert.Equal(before, x);
    }

    [Fact]
    public void Numerical_gradient_of_a_scalar_function_of_a_vector()
    {
        var x = Vector<double>.Build.DenseOfArray([1.0, -2.0, 0.25]);
        Vector<double> numerical = GradientCheck.NumericalGradient(v => v[0] * v[1] * v[2], x);
        Assert.True(GradientCheck.RelativeError(Vector<double>.Build.DenseOfArray([-0.5, 0.25, -2.0]), numerical) < 1e-9);
        Assert.Equal([1.0, -2.0, 0.25], x.ToArray());
    }

    [Fact]
    public void Numerical_gradient_of_a_layer_function_contracted_with_an_upstream_gradient()
    {
        // y = tanh(X)·A, L = Σ y⊙G, so dL/dX = (G·Aᵀ)⊙(1 − tanh²(X)).
        var a = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -0.5 }, { 0.25, 2 } });
        var g = Matrix<double>.Build.DenseOfArray(new[,] { { 0.3, -1 }, { 0.7, 0.2 } });
        var x = Matrix<double>.Build.DenseOfArray(new[,] { { 0.1, -0.4 }, { 0.9, 0.05 } });
        Matrix<double> numerical = GradientCheck.NumericalGradient(m => m.Map(Math.Tanh) * a, x, g);
        Matrix<double> analytic = (g * a.Transpose()).PointwiseMultiply(x.Map(v => 1 - (Math.Tanh(v) * Math.Tanh(v))));
        Assert.True(GradientCheck.RelativeError(analytic, numerical) < 1e-9);

        var w = Vector<double>.Build.DenseOfArray([0.5, -1.5]);
        Vector<double> numericalW = GradientCheck.NumericalGradient(v => x.Multiply(Matrix<double>.Build.DiagonalOfDiagonalVector(v)), w, g);
        Assert.True(GradientCheck.RelativeError(x.PointwiseMultiply(g).ColumnSums(), numericalW) < 1e-9);
    }

    [Theory]
    [InlineData(1.0, 1.0, 0.0)]
    [InlineData(1.0, 3.0, 0.5)]
    [InlineData(-1.0, 1.0, 1.0)]
    [InlineData(0.0, 0.0, 0.0)]
    [InlineData(1e-10, 0.0, 1e-2)]
    public void Relative_error_is_cs231n_rel_error(double a, double b, double expected)
        => Assert.Equal(expected, GradientCheck.RelativeError(a, b), 12);

    [Fact]
    public void Relative_error_takes_the_worst_element_and_keeps_nan()
    {
        var a = Vector<double>.Build.DenseOfArray([1.0, 2.0, 3.0]);
        Assert.Equal(0.5, GradientCheck.RelativeError(a, Vector<double>.Build.DenseOfArray([1.0, 6.0, 3.0])), 12);
        Assert.True(double.IsNaN(GradientCheck.RelativeError(a, Vector<double>.Build.DenseOfArray([double.NaN, 2.0, 3.0]))));
        Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(a, Vector<double>.Build.Dense(2)));
    }

    [Fact]
    public void Relative_error_with_a_floor_judges_near_zero_elements_against_the_size_of_the_gradient()
    {
        // The largest |a| + |b| is 4, so with a floor of 1e-4 no denominator is below 4e-4.
        var a = Vector<double>.Build.DenseOfArray([2.0, 1e-7]);
        var nearZeroOff = Vector<double>.Build.DenseOfArray([2.0, 1.2e-7]);
        Assert.Equal(2e-8 / 2.2e-7, GradientCheck.RelativeError(a, nearZeroOff, 0), 15);
        Assert.Equal(2e-8 / 4e-4, GradientCheck.RelativeError(a, nearZeroOff, 1e-4), 15);

        // An error in a large element is measured exactly as without the floor.
        var largeOff = Vector<double>.Build.DenseOfArray([2.2, 1e-7]);
        Assert.Equal(0.2 / 4.2, GradientCheck.RelativeError(a, largeOff, 1e-4), 12);
        Assert.Equal(
            GradientCheck.RelativeError(a.ToColumnMatrix(), largeOff.ToColumnMatrix(), 1e-4),
            GradientCheck.RelativeError(a, largeOff, 1e-4));
    }

    [Fact]
    public void Relative_error_with_a_zero_floor_is_cs231n_rel_error()
    {
        var a = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 1e-9 }, { -3.0, 2e-7 } });
        var b = Matrix<double>.Build.DenseOfArray(new[,] { { 1.1, 3e-9 }, { -3.0, 1e-7 } });
        Assert.Equal(GradientCheck.RelativeError(a, b), GradientCheck.RelativeError(a, b, 0));
        Assert.Equal(1.0 / 3, GradientCheck.RelativeError(a, b, 0), 15);
    }

    [Fact]
    public void Relative_error_with_a_floor_keeps_nan_allows_zero_gradients_and_checks_its_arguments()
    {
        var zero = Vector<double>.Build.Dense(3);
        Assert.Equal(0, GradientCheck.RelativeError(zero, zero.Clone(), 1e-4));
        // CS231n's absolute floor of 1e-8 stays, for a gradient that is zero as a whole.
        Assert.InRange(GradientCheck.RelativeError(zero, Vector<double>.Build.DenseOfArray([0.0, 1e-300, 0.0]), 1e-4), 0.999e-292, 1.001e-292);
        Assert.Equal(0.25, GradientCheck.RelativeError(zero, Vector<double>.Build.DenseOfArray([0.0, 2.5e-9, 0.0]), 1e-4), 15);
        Assert.True(double.IsNaN(GradientCheck.RelativeError(zero, Vector<double>.Build.DenseOfArray([0.0, double.NaN, 0.0]), 1e-4)));
        Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.RelativeError(zero, zero, -1e-4));
        Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.RelativeError(zero, zero, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.RelativeError(zero, zero, double.NaN));
        Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(zero, Vector<double>.Build.Dense(2), 1e-4));
        Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(Matrix<double>.Build.Dense(2, 2), Matrix<double>.Build.Dense(2, 3), 1e-4));
    }

    [Fact]
    public void Numerical_gradient_with_a_step_per_element()
    {
        // y = X⊙X⊙X·diag(c), L = Σ y⊙G, so dL/dX = 3X²⊙G·diag(c); columns of very different scale each get their own step.
        var x = Matrix<double>.Build.DenseOfArray(new[,] { { 1e-4, 300.0 }, { -2e-4, 250 } });
        var g = Matrix<double>.Build.DenseOfArray(new[,] { { 0.3, -1 }, { 0.7, 0.2 } });
        var c = Matrix<double>.Build.DiagonalOfDiagonalArray([2.0, -0.5]);
        Matrix<double> steps = Matrix<double>.Build.Dense(2, 2, (_, j) => j == 0 ? 1e-9 : 1e-3);
        Matrix<double> before = x.Clone();
        Matrix<double> numerical = GradientCheck.NumericalGradient(m => m.PointwisePower(3) * c, x, g, steps);
        Matrix<double> analytic = x.PointwisePower(2).PointwiseMultiply(g).Multiply(3) * c;
        Assert.True(GradientCheck.RelativeError(analytic, numerical) < 1e-9, $"{GradientCheck.RelativeError(analytic, numerical)}");
        Assert.Equal(before, x);

        Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(m => m, x, g, Matrix<double>.Build.Dense(2, 3, 1e-3)));
        steps[1, 0] = 0;
        Assert.Equal("steps", Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.NumericalGradient(m => m, x, g, steps)).ParamName);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(-1e-5)]
    [InlineData(double.NaN)]
    public void The_step_must_be_positive(double step)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.NumericalGradient(m => 0.0, Matrix<double>.Build.Dense(1, 1), step));
    }

    [Fact]
    public void Check_catches_a_wrong_strategy_and_restores_the_running_statistics()
    {
        var layer = new BatchNormLayer(2, backward: new ForgetsTheMeanPath());
        var x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 4 }, { 2, -1 }, { 6, 0.5 }, { -3, 2 } });
        var dy = Matrix<double>.Build.DenseOfArray(new[,] { { 0.1, -1 }, { 0.7, 0.3 }, { -0.2, 0.9 }, { 0.5, -0.4 } });
        layer.Forward(x);
        double[] mean = layer.RunningMean.ToArray();
        GradientCheckResult wrong = GradientCheck.Check(layer, x, dy);
        Assert.True(wrong.Input > 1e-2, $"the broken strategy gave only {wrong.Input}");
        Assert.Equal(mean, layer.RunningMean.ToArray());
        Assert.Equal(1, layer.BatchesTracked);

        layer.BackwardStrategy = BackwardStrategy.ClosedForm;
        Assert.True(GradientCheck.Check(layer, x, dy).Max < 1e-8);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Check_steps_on_the_scale_the_layer_divides_by_so_nearly_constant_columns_stay_accurate(bool training)
    {
        // Column 0 differs by 1e-9 between its rows: a step relative to that spread would move x by 1e-12 and
        // drown the difference in rounding noise, although the layer's output changes on the scale √(σ² + ε).
        var x = Matrix<double>.Build.DenseOfArray(new[,] { { -65.6384, 41.2505 }, { -65.6384 + 1e-9, 41.1375 }, { -65.6384, 41.3 } });
        var dy = Matrix<double>.Build.DenseOfArray(new[,] { { -0.625476, 0.700992 }, { 0.884044, -0.998792 }, { 0.1, 0.25 } });
        foreach (BackwardStrategy strategy in new[] { BackwardStrategy.Staged, BackwardStrategy.ClosedForm })
        {
            var layer = new BatchNormLayer(2, epsilon: 0.02, backward: strategy);
            layer.Forward(x);
            layer.IsTraining = training;
            GradientCheckResult errors = GradientCheck.Check(layer, x, dy);
            Assert.True(errors.Max < 1e-8, $"{strategy}: dx {errors.Input:E2}, dγ {errors.Gamma:E2}, dβ {errors.Beta:E2}");
        }
    }

    /// <summary>A strategy a student might write: it treats μ and σ² as constants even in training.</summary>
    private sealed class ForgetsTheMeanPath : BackwardStrategy
    {
        public override string Name => "broken";

        public override int SumCount => ParameterSums;

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient)
        {
            sums[0] = sums[1] = 0;
            for (int i = 0; i < segment.Length; i++)
            {
                sums[0] += segment.OutputGradient[i] * segment.NormalizedInput[i];
                sums[1] += segment.OutputGradient[i];
            }
        }

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient)
        {
            for (int i = 0; i < segment.Length; i++)
            {
                inputGradient[i] = segment.OutputGradient[i] * segment.Gamma * segment.InverseStandardDeviation;
            }
        }
    }
}
