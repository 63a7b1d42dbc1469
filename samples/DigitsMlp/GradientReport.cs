using System;
using System.Globalization;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>The --check option: GradientCheck on a BatchNormLayer with both strategies, in training and in inference.</summary>
public static class GradientReport
{
    /// <summary>Relative errors below this pass.</summary>
    public const double Tolerance = 1e-6;

    /// <summary>Prints the relative errors of dx, dγ and dβ for each strategy and mode.</summary>
    /// <param name="seed">Seeds the batch and the upstream gradient.</param>
    /// <returns>True when every error is below <see cref="Tolerance"/>.</returns>
    public static bool Run(int seed)
    {
        var random = new Random(seed);
        Matrix<double> x = Matrix<double>.Build.Dense(16, 6, (_, j) => (10 * j) + ((1 + j) * (random.NextDouble() - 0.5)));
        Matrix<double> dy = Matrix<double>.Build.Dense(16, 6, (_, _) => random.NextDouble() - 0.5);
        Console.WriteLine("GradientCheck on BatchNormLayer(6), batch 16×6, fourth-order central differences;");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"relative error as in CS231n, with a floor of {GradientCheck.DefaultRelativeFloor:E0} of the gradient's size under each denominator:"));
        Console.WriteLine("  strategy  mode            dx          dγ          dβ");
        bool passed = true;
        foreach (BackwardStrategy strategy in new[] { BackwardStrategy.Staged, BackwardStrategy.ClosedForm })
        {
            foreach (bool training in new[] { true, false })
            {
                var layer = new BatchNormLayer(6, backward: strategy);
                for (int j = 0; j < 6; j++)
                {
                    layer.Gamma[j] = 0.5 + random.NextDouble();
                    layer.Beta[j] = random.NextDouble() - 0.5;
                }

                layer.Forward(x);
                layer.IsTraining = training;
                GradientCheckResult errors = GradientCheck.Check(layer, x, dy);
                passed &= errors.Max < Tolerance;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {strategy,-8}  {(training ? "training" : "inference"),-9} {errors.Input,11:E2} {errors.Gamma,11:E2} {errors.Beta,11:E2}"));
            }
        }

        Console.WriteLine(passed ? $"All below {Tolerance:E0}." : $"Some errors are above {Tolerance:E0}.");
        return passed;
    }
}
