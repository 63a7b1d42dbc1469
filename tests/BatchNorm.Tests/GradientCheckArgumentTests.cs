using System;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>Every argument check of every public entry point of <see cref="GradientCheck"/>, on both sides of its boundary.</summary>
public class GradientCheckArgumentTests
{
    private static readonly Matrix<double> X = Matrix<double>.Build.DenseOfArray(new[,] { { 0.5, -1 }, { 2, 0.25 } });
    private static readonly Matrix<double> G = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, -0.5 }, { 0.25, 2 } });
    private static readonly Vector<double> V = Vector<double>.Build.DenseOfArray([1.0, -2]);

    private static readonly double[] BadSteps = [0.0, -0.0, -1e-5, double.NaN, double.PositiveInfinity, double.NegativeInfinity];

    /// <summary>Each of the five NumericalGradient overloads, called with the given step (all steps set to it for the per-element one).</summary>
    public static TheoryData<string> Overloads => ["scalar of matrix", "scalar of vector", "matrix of matrix", "matrix of matrix, per element", "matrix of vector"];

    private static object Call(string overload, double step) => overload switch
    {
        "scalar of matrix" => GradientCheck.NumericalGradient(m => m.Enumerate().Sum(v => v * v), X.Clone(), step),
        "scalar of vector" => GradientCheck.NumericalGradient(v => v.Sum(e => e * e * e), V.Clone(), step),
        "matrix of matrix" => GradientCheck.NumericalGradient(m => m.PointwisePower(2), X.Clone(), G, step),
        "matrix of matrix, per element" => GradientCheck.NumericalGradient(m => m.PointwisePower(2), X.Clone(), G, Matrix<double>.Build.Dense(2, 2, step)),
        _ => GradientCheck.NumericalGradient(v => X.Multiply(Matrix<double>.Build.DiagonalOfDiagonalVector(v)), V.Clone(), G, step),
    };

    [Theory]
    [MemberData(nameof(Overloads))]
    public void Every_overload_refuses_a_step_that_is_not_positive_and_finite(string overload)
    {
        foreach (double step in BadSteps)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => Call(overload, step));
            Assert.Equal(overload.EndsWith("per element", StringComparison.Ordinal) ? "steps" : "step", e.ParamName);
            Assert.StartsWith("The step must be positive and finite.", e.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [MemberData(nameof(Overloads))]
    public void Every_overload_takes_the_smallest_and_the_largest_finite_step(string overload)
    {
        // Both ends of the accepted range are steps; what they give is not the point, only that they are taken.
        Call(overload, double.Epsilon);
        Call(overload, double.MaxValue);
    }

    [Fact]
    public void Every_overload_names_a_null_argument()
    {
        Func<Matrix<double>, double> scalar = m => 0;
        Func<Vector<double>, double> scalarOfVector = v => 0;
        Func<Matrix<double>, Matrix<double>> layer = m => m;
        Func<Vector<double>, Matrix<double>> layerOfVector = v => G;
        Matrix<double> steps = Matrix<double>.Build.Dense(2, 2, 1e-3);
        AssertNull("f", () => GradientCheck.NumericalGradient(null!, X));
        AssertNull("x", () => GradientCheck.NumericalGradient(scalar, null!));
        AssertNull("f", () => GradientCheck.NumericalGradient((Func<Vector<double>, double>)null!, V));
        AssertNull("x", () => GradientCheck.NumericalGradient(scalarOfVector, null!));
        AssertNull("f", () => GradientCheck.NumericalGradient(null!, X, G));
        AssertNull("x", () => GradientCheck.NumericalGradient(layer, null!, G));
        AssertNull("outputGradient", () => GradientCheck.NumericalGradient(layer, X, null!));
        AssertNull("f", () => GradientCheck.NumericalGradient(null!, X, G, steps));
        AssertNull("x", () => GradientCheck.NumericalGradient(layer, null!, G, steps));
        AssertNull("outputGradient", () => GradientCheck.NumericalGradient(layer, X, null!, steps));
        AssertNull("steps", () => GradientCheck.NumericalGradient(layer, X, G, (Matrix<double>)null!));
        AssertNull("f", () => GradientCheck.NumericalGradient((Func<Vector<double>, Matrix<double>>)null!, V, G));
        AssertNull("x", () => GradientCheck.NumericalGradient(layerOfVector, null!, G));
        AssertNull("outputGradient", () => GradientCheck.NumericalGradient(layerOfVector, V, null!));
        AssertNull("analytic", () => GradientCheck.RelativeError(null!, X));
        AssertNull("numerical", () => GradientCheck.RelativeError(X, null!));
        AssertNull("analytic", () => GradientCheck.RelativeError(null!, V));
        AssertNull("numerical", () => GradientCheck.RelativeError(V, null!));
        AssertNull("analytic", () => GradientCheck.RelativeError(null!, X, 0.5));
        AssertNull("numerical", () => GradientCheck.RelativeError(X, null!, 0.5));
        AssertNull("analytic", () => GradientCheck.RelativeError(null!, V, 0.5));
        AssertNull("numerical", () => GradientCheck.RelativeError(V, null!, 0.5));
        var layerOfTwo = new BatchNormLayer(2);
        AssertNull("layer", () => GradientCheck.Check(null!, X, G));
        AssertNull("input", () => GradientCheck.Check(layerOfTwo, null!, G));
        AssertNull("outputGradient", () => GradientCheck.Check(layerOfTwo, X, null!));
        AssertNull("parameters", () => new GradientCheckResult(0, null!));
    }

    [Fact]
    public void Steps_of_another_shape_than_x_are_refused_before_anything_is_probed()
    {
        int calls = 0;
        Matrix<double> Counting(Matrix<double> m)
        {
            calls++;
            return m;
        }

        foreach ((int rows, int columns) in new[] { (2, 3), (3, 2), (1, 2) })
        {
            var e = Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(Counting, X.Clone(), G, Matrix<double>.Build.Dense(rows, columns, 1e-3)));
            Assert.Equal("steps", e.ParamName);
            Assert.Contains($"steps is {rows}x{columns}, x is 2x2", e.Message, StringComparison.Ordinal);
        }

        // One bad step among good ones is found wherever it sits, and nothing has been probed by then.
        foreach ((int i, int j) in new[] { (0, 0), (1, 1), (0, 1) })
        {
            Matrix<double> steps = Matrix<double>.Build.Dense(2, 2, 1e-3);
            steps[i, j] = -1e-3;
            Assert.Equal("steps", Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.NumericalGradient(Counting, X.Clone(), G, steps)).ParamName);
        }

        Assert.Equal(0, calls);
    }

    [Fact]
    public void A_probed_function_that_returns_null_or_another_shape_is_named()
    {
        Matrix<double> x = X.Clone();
        var wrongShape = Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(m => Matrix<double>.Build.Dense(3, 2), x, G));
        Assert.Equal("f", wrongShape.ParamName);
        Assert.StartsWith("Matrix dimensions must agree: the probed function returned 3x2, but the upstream gradient is 2x2.", wrongShape.Message, StringComparison.Ordinal);
        var wrongColumns = Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(v => Matrix<double>.Build.Dense(2, 1), V.Clone(), G));
        Assert.Contains("returned 2x1, but the upstream gradient is 2x2", wrongColumns.Message, StringComparison.Ordinal);
        var none = Assert.Throws<ArgumentException>(() => GradientCheck.NumericalGradient(m => null!, x, G, Matrix<double>.Build.Dense(2, 2, 1e-3)));
        Assert.Equal("f", none.ParamName);
        Assert.StartsWith("The probed function returned null instead of a matrix of the upstream gradient's shape.", none.Message, StringComparison.Ordinal);

        // The element being probed when f failed is put back.
        Assert.Equal(X, x);
    }

    [Fact]
    public void Relative_errors_of_another_shape_are_refused()
    {
        var rows = Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(X, Matrix<double>.Build.Dense(3, 2)));
        Assert.Equal("numerical", rows.ParamName);
        Assert.Contains("numerical is 3x2, analytic is 2x2", rows.Message, StringComparison.Ordinal);
        Assert.Equal("numerical", Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(X, Matrix<double>.Build.Dense(2, 1), 0.5)).ParamName);
        var length = Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(V, Vector<double>.Build.Dense(3)));
        Assert.Equal("numerical", length.ParamName);
        Assert.Contains("numerical has 3 elements", length.Message, StringComparison.Ordinal);
        Assert.Equal("numerical", Assert.Throws<ArgumentException>(() => GradientCheck.RelativeError(V, Vector<double>.Build.Dense(1), 0.5)).ParamName);
    }

    [Fact]
    public void The_relative_floor_is_taken_at_both_ends_of_the_unit_interval_and_refused_just_outside()
    {
        // a = (1, 0), b = (1, 1e-3): the largest |a| + |b| is 2, so a floor f puts max(1e-3, 2f) under the second element.
        var a = Vector<double>.Build.DenseOfArray([1.0, 0]);
        var b = Vector<double>.Build.DenseOfArray([1.0, 1e-3]);
        Assert.Equal(1.0, GradientCheck.RelativeError(a, b, 0));
        Assert.Equal(1e-3 / 2, GradientCheck.RelativeError(a, b, 1));
        Assert.Equal(1.0, GradientCheck.RelativeError(a.ToColumnMatrix(), b.ToColumnMatrix(), 0));
        Assert.Equal(1e-3 / 2, GradientCheck.RelativeError(a.ToColumnMatrix(), b.ToColumnMatrix(), 1));
        foreach (double floor in new[] { -double.Epsilon, Math.BitIncrement(1.0), double.PositiveInfinity, double.NaN })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.RelativeError(a, b, floor));
            Assert.Equal("relativeFloor", e.ParamName);
            Assert.StartsWith("The relative floor must lie in [0, 1].", e.Message, StringComparison.Ordinal);
            Assert.Equal("relativeFloor", Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.RelativeError(X, X, floor)).ParamName);
        }
    }

    [Fact]
    public void Check_refuses_a_relative_step_that_is_not_positive_and_finite_and_leaves_the_layer_as_it_was()
    {
        var layer = new BatchNormLayer(2);
        layer.Forward(X);
        NormalizationCache cache = layer.Cache!;
        foreach (double step in BadSteps)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => GradientCheck.Check(layer, X, G, step));
            Assert.Equal("relativeStep", e.ParamName);
            Assert.StartsWith("The step must be positive and finite.", e.Message, StringComparison.Ordinal);
        }

        Assert.Same(cache, layer.Cache);
        Assert.Equal(1, layer.BatchesTracked);
    }

    private static void AssertNull(string name, Func<object> call)
        => Assert.Equal(name, Assert.Throws<ArgumentNullException>(call).ParamName);
}
