using System;
using BatchNorm.Mpi;
using DigitsMlp;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMpi;

/// <summary>
/// Data parallelism over MPI ranks: rank r of K trains on rows [r·B/K, (r+1)·B/K) of every batch of B rows. Each rank's
/// loss gradient is its rows' share of the whole batch's mean loss, so the whole batch's gradient of every parameter
/// is the sum of the ranks' gradients.
/// </summary>
/// <param name="exchange">The MPI exchange that also synchronizes the network's batch norm layers.</param>
public sealed class MpiDataParallel(MpiStatisticsExchange exchange) : IDataParallel
{
    private double[] _buffer = [];

    /// <summary>Gets the number of MPI_Allreduce calls so far.</summary>
    public long Calls { get; private set; }

    /// <summary>Gets the doubles this rank has sent in them so far.</summary>
    public long Sent { get; private set; }

    /// <inheritdoc/>
    public (int Start, int Count) Shard(int batchSize)
    {
        int start = exchange.Rank * batchSize / exchange.WorkerCount, end = (exchange.Rank + 1) * batchSize / exchange.WorkerCount;
        return (start, end - start);
    }

    /// <inheritdoc/>
    public void Sum(Span<double> values) => AllReduceSum(values);

    /// <summary>
    /// Adds up the Linear layers' gradients over all ranks, in one MPI_Allreduce. γ and β of the synchronized batch norm
    /// layers are left as they are: after a training step they already hold the whole batch's gradients, because the layer
    /// added up every rank's sums itself. Summing them again would multiply them by K.
    /// </summary>
    /// <param name="network">The network after Backward.</param>
    public void CombineGradients(Network network)
    {
        ArgumentNullException.ThrowIfNull(network);
        int length = 0;
        foreach (Linear<double> layer in network.LinearLayers)
        {
            length += layer.WeightsGradient.RowCount * layer.WeightsGradient.ColumnCount + layer.BiasGradient.Count;
        }

        if (_buffer.Length != length)
        {
            _buffer = new double[length];
        }

        Walk(network, (gradient, slot) => gradient.CopyTo(slot));
        AllReduceSum(_buffer);
        Walk(network, (gradient, slot) => slot.CopyTo(gradient));
    }

    private void AllReduceSum(Span<double> values)
    {
        Calls++;
        Sent += values.Length;
        exchange.AllReduceSum(values);
    }

    /// <summary>Pairs each gradient array of the Linear layers with its slot of the buffer.</summary>
    private void Walk(Network network, SlotAction action)
    {
        int at = 0;
        foreach (Linear<double> layer in network.LinearLayers)
        {
            foreach (double[] gradient in (double[][])[Data(layer.WeightsGradient), Data(layer.BiasGradient)])
            {
                action(gradient, _buffer.AsSpan(at, gradient.Length));
                at += gradient.Length;
            }
        }
    }

    private static double[] Data(Matrix<double> m) => m.AsColumnMajorArray() ?? throw new InvalidOperationException("a Linear layer's gradient is not dense");

    private static double[] Data(Vector<double> v) => v.AsArray() ?? throw new InvalidOperationException("a Linear layer's gradient is not dense");

    private delegate void SlotAction(double[] gradient, Span<double> slot);
}
