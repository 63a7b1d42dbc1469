using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>The --check option: GradientCheck on each chosen normalization, with both strategies, in training and in inference.</summary>
public static class GradientReport
{
    /// <summary>Relative errors below this pass.</summary>
    public const double Tolerance = 1e-6;

    /// <summary>Prints the relative errors of dx, dγ and dβ for each normalization, strategy and mode.</summary>
    /// <param name="seed">Seeds the batch and the upstream gradient.</param>
    /// <param name="norms">The normalizations to check; "none" has nothing to check.</param>
    /// <returns>True when every error is below <see cref="Tolerance"/>.</returns>
    public static bool Run(int seed, IReadOnlyList<Normalization> norms)
    {
        ArgumentNullException.ThrowIfNull(norms);
        var random = new Random(seed);
        Matrix<double> x = Matrix<double>.Build.Dense(16, 8, (_, j) => (10 * j) + ((1 + j) * (random.NextDouble() - 0.5)));
        Matrix<double> dy = Matrix<double>.Build.Dense(16, 8, (_, _) => random.NextDouble() - 0.5);
        Console.WriteLine("GradientCheck on a 16×8 batch, fourth-order central differences;");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"relative error as in CS231n, with a floor of {GradientCheck.DefaultRelativeFloor:E0} of the gradient's size under each denominator:"));
        Console.WriteLine("  layer                  strategy  mode            dx          dγ          dβ");
        bool passed = true;
        foreach (Normalization norm in norms.Where(n => !n.IsNone))
        {
            foreach (BackwardStrategy strategy in new[] { BackwardStrategy.Staged, BackwardStrategy.ClosedForm })
            {
                foreach (bool training in new[] { true, false })
                {
                    INormalizationLayer layer = norm.Create!(8, strategy);
                    foreach (LayerParameter p in layer.Parameters)
                    {
                        p.Value.MapInplace(_ => random.NextDouble() + (p.Name == "gamma" ? 0.5 : -0.5));
                    }

                    layer.Forward(x);
                    layer.IsTraining = training;
                    GradientCheckResult errors = GradientCheck.Check(layer, x, dy);
                    passed &= errors.Max < Tolerance;
                    Console.WriteLine(string.Create(
                        CultureInfo.InvariantCulture,
                        $"  {norm.Title,-22} {strategy,-8}  {(training ? "training" : "inference"),-9} {errors.Input,11:E2} {errors.Gamma,11:E2} {errors.Beta,11:E2}"));
                }
            }
        }

        Console.WriteLine(passed ? $"All below {Tolerance:E0}." : $"Some errors are above {Tolerance:E0}.");
        return passed;
    }
}
