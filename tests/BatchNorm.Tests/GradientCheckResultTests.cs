using System;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>What a <see cref="GradientCheckResult"/> reports, and the CS231n relative errors it is made of.</summary>
public class GradientCheckResultTests
{
    [Fact]
    public void Max_is_the_largest_error_wherever_it_sits()
    {
        Assert.Equal(0.3, new GradientCheckResult(0.1, [("gamma", 0.3), ("beta", 0.2)]).Max);
        Assert.Equal(0.3, new GradientCheckResult(0.1, [("gamma", 0.2), ("beta", 0.3)]).Max);
        Assert.Equal(0.4, new GradientCheckResult(0.4, [("gamma", 0.2), ("beta", 0.3)]).Max);
        Assert.Equal(0.25, new GradientCheckResult(0.25, [("gamma", 0.25), ("beta", 0.25)]).Max);
        Assert.Equal(0.5, new GradientCheckResult(0.5, []).Max);
        Assert.Equal(0.0, new GradientCheckResult(0, [("gamma", 0.0)]).Max);
    }

    [Fact]
    public void Max_is_nan_when_any_error_is_nan()
    {
        Assert.True(double.IsNaN(new GradientCheckResult(0.1, [("gamma", double.NaN), ("beta", 0.2)]).Max));
        Assert.True(double.IsNaN(new GradientCheckResult(0.1, [("gamma", 0.3), ("beta", double.NaN)]).Max));
        Assert.True(double.IsNaN(new GradientCheckResult(double.NaN, [("gamma", 0.3), ("beta", 0.2)]).Max));
    }

    [Fact]
    public void Errors_are_found_by_name_and_zero_for_a_name_the_layer_lacks()
    {
        var result = new GradientCheckResult(1e-9, [("gamma", 2e-9), ("beta", 3e-9), ("scale", 4e-9)]);
        Assert.Equal(1e-9, result.Input);
        Assert.Equal(2e-9, result.Gamma);
        Assert.Equal(3e-9, result.Beta);
        Assert.Equal(4e-9, result.ErrorOf("scale"));
        Assert.Equal(0, result.ErrorOf("shift"));
        Assert.Equal(0, result.ErrorOf("Gamma"));
        Assert.Equal(0, new GradientCheckResult(0.5, [("scale", 1.0)]).Gamma);
        Assert.Equal(0, new GradientCheckResult(0.5, [("scale", 1.0)]).Beta);
        Assert.Equal([("gamma", 2e-9), ("beta", 3e-9), ("scale", 4e-9)], result.Parameters);
    }

    [Fact]
    public void The_errors_are_copied_so_the_caller_cannot_change_them_afterwards()
    {
        (string, double)[] errors = [("gamma", 0.5)];
        var result = new GradientCheckResult(0, errors);
        errors[0] = ("gamma", 0.75);
        Assert.Equal(0.5, result.Gamma);
    }

    [Fact]
    public void ToString_lists_every_error_in_order()
    {
        Assert.Equal("dx 1.20E-010, gamma 3.40E-011, beta 5.60E-012", new GradientCheckResult(1.2e-10, [("gamma", 3.4e-11), ("beta", 5.6e-12)]).ToString());
        Assert.Equal("dx 2.50E-001", new GradientCheckResult(0.25, []).ToString());
    }

    [Theory]
    [InlineData(3.0, 1.0, 0.5)]         // |3 − 1|/(3 + 1)
    [InlineData(-2.0, 2.0, 1.0)]        // opposite signs
    [InlineData(1e-9, -1e-9, 0.2)]      // 2e-9 over the floor 1e-8, not over 2e-9
    [InlineData(0.0, 0.0, 0.0)]
    [InlineData(2e-8, 0.0, 1.0)]        // exactly at the floor
    public void The_relative_error_of_two_numbers_is_cs231n_rel_error(double a, double b, double expected)
    {
        Assert.Equal(expected, GradientCheck.RelativeError(a, b), 1e-15);
        Assert.Equal(expected, GradientCheck.RelativeError(b, a), 1e-15);
        Assert.True(double.IsNaN(GradientCheck.RelativeError(a, double.NaN)));
    }

    [Fact]
    public void The_error_of_matrices_and_vectors_is_the_worst_element_wherever_it_sits()
    {
        // The worst element first, last, and among NaN-free and NaN-holding data; a NaN anywhere is reported.
        var a = Vector<double>.Build.DenseOfArray([4.0, 1, 2]);
        Assert.Equal(0.5, GradientCheck.RelativeError(a, Vector<double>.Build.DenseOfArray([12.0, 1, 2])));
        Assert.Equal(0.5, GradientCheck.RelativeError(a, Vector<double>.Build.DenseOfArray([4.0, 1, 6])));
        Assert.Equal(0.5, GradientCheck.RelativeError(a, Vector<double>.Build.DenseOfArray([4.0, 3, 6])));
        Assert.True(double.IsNaN(GradientCheck.RelativeError(a, Vector<double>.Build.DenseOfArray([4.0, 3, double.NaN]))));
        Assert.True(double.IsNaN(GradientCheck.RelativeError(Vector<double>.Build.DenseOfArray([double.NaN, 1, 2]), Vector<double>.Build.DenseOfArray([12.0, 1, 2]))));

        Matrix<double> m = Matrix<double>.Build.DenseOfArray(new[,] { { 4.0, 1 }, { 2, -8 } });
        Matrix<double> n = Matrix<double>.Build.DenseOfArray(new[,] { { 4.0, 1 }, { 6, -8 } });
        Assert.Equal(0.5, GradientCheck.RelativeError(m, n));
        Assert.Equal(0.5, GradientCheck.RelativeError(n, m));
    }

    [Fact]
    public void The_floor_is_a_fraction_of_the_largest_pair_anywhere_in_the_gradient()
    {
        // The largest |a| + |b| is 100 + 100 = 200, in the last element: a floor of 1e-3 puts 0.2 under the first.
        var a = Vector<double>.Build.DenseOfArray([0.01, 5, 100]);
        var b = Vector<double>.Build.DenseOfArray([0.03, 5, 100]);
        Assert.Equal(0.02 / 0.2, GradientCheck.RelativeError(a, b, 1e-3), 1e-15);
        Assert.Equal(0.02 / 0.04, GradientCheck.RelativeError(a, b, 0), 1e-15);
        Matrix<double> m = Matrix<double>.Build.DenseOfColumnMajor(1, 3, [100.0, 5, 0.01]), n = Matrix<double>.Build.DenseOfColumnMajor(1, 3, [100.0, 5, 0.03]);
        Assert.Equal(0.02 / 0.2, GradientCheck.RelativeError(m, n, 1e-3), 1e-15);

        // Where the element's own |a| + |b| is above the floor, the floor changes nothing.
        Assert.Equal(0.02 / 0.04, GradientCheck.RelativeError(a, b, 1e-4), 1e-15);
    }
}
