using System;
using System.Globalization;
using System.Linq;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>
/// The --trace option: the staged backward pass of a batch norm, node by node, for a 4×3 batch, printed the way the
/// CS231n notebook prints its intermediate gradients, and checked against the closed form.
/// </summary>
public static class TraceReport
{
    /// <summary>Prints the batch, the forward values and every node's gradient.</summary>
    /// <param name="seed">Seeds the batch, γ, β and the upstream gradient.</param>
    /// <returns>The largest difference between the staged trace's dx and the closed form's.</returns>
    public static double Print(int seed)
    {
        var random = new Random(seed);
        Matrix<double> x = Matrix<double>.Build.Dense(4, 3, (_, j) => Math.Round((5 * j) + (4 * random.NextDouble()), 2));
        Matrix<double> dy = Matrix<double>.Build.Dense(4, 3, (_, _) => Math.Round((2 * random.NextDouble()) - 1, 2));
        var layer = new BatchNormLayer(3, backward: BackwardStrategy.Staged);
        layer.Gamma.SetValues([1.0, 2.0, 0.5]);
        layer.Beta.SetValues([0.0, 0.5, -1.0]);
        Matrix<double> y = layer.Forward(x);
        StagedBackwardTrace trace = StagedBackwardTrace.Of(layer.Cache!, layer.Gamma, dy);
        Matrix<double> closed = Closed(layer, dy);
        double difference = (trace.InputGradient - closed).InfinityNorm();

        Console.WriteLine("Batch norm on a 4×3 batch (rows are samples, columns features), γ = [1, 2, 0.5], β = [0, 0.5, −1], ε = 1e-5.");
        Console.WriteLine("Forward:");
        Console.WriteLine(Block("x", x));
        Console.WriteLine(Block("μ", layer.Cache!.Mean.ToArray()));
        Console.WriteLine(Block("σ²", layer.Cache.Variance.ToArray()));
        Console.WriteLine(Block("x̂", layer.Cache.NormalizedInputToMatrix()));
        Console.WriteLine(Block("y = γ·x̂ + β", y));
        Console.WriteLine(Block("upstream dy", dy));
        Console.WriteLine();
        Console.WriteLine("Backward, staged, node by node (see docs/derivation.md):");
        Console.WriteLine(trace);
        Console.WriteLine();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Closed form dx = (γ/(N·√(σ²+ε)))·(N·dy − Σdy − x̂·Σ(dy·x̂)) differs from the staged dx by at most {difference:E1}."));
        return difference;
    }

    private static Matrix<double> Closed(BatchNormLayer layer, Matrix<double> dy)
    {
        var dx = Matrix<double>.Build.Dense(4, 3);
        BackwardStrategy.ClosedForm.Backward(layer.Cache!, layer.Gamma, dy, dx, Vector<double>.Build.Dense(3), Vector<double>.Build.Dense(3));
        return dx;
    }

    private static string Block(string name, Matrix<double> m)
    {
        var rows = new string[m.RowCount];
        for (int i = 0; i < m.RowCount; i++)
        {
            rows[i] = "  [" + string.Join(", ", m.Row(i).Select(v => v.ToString("G6", CultureInfo.InvariantCulture).PadLeft(12))) + "]";
        }

        return name + "\n" + string.Join("\n", rows);
    }

    private static string Block(string name, double[] v)
        => name + "\n  [" + string.Join(", ", Array.ConvertAll(v, e => e.ToString("G6", CultureInfo.InvariantCulture))) + "]";
}
