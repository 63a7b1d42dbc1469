using System;

namespace DigitsMlp;

/// <summary>
/// What one process of data-parallel training adds to <see cref="Trainer"/>: every process holds the same network and
/// trains it on its own rows of each batch, and the gradients of all processes are combined before each step, so that
/// every process takes the same step as one process would on the whole batch.
/// </summary>
public interface IDataParallel
{
    /// <summary>The rows of every batch this process trains on.</summary>
    /// <param name="batchSize">The rows of a whole batch.</param>
    /// <returns>The first row and the number of rows, at least one.</returns>
    (int Start, int Count) Shard(int batchSize);

    /// <summary>Replaces each value by its sum over all processes; every process gets the same sums.</summary>
    /// <param name="values">The values, the same count on every process.</param>
    void Sum(Span<double> values);

    /// <summary>
    /// Called after Backward and before the step: turns every gradient of <paramref name="network"/>, which holds this
    /// process's share, into the whole batch's gradient.
    /// </summary>
    /// <param name="network">The network.</param>
    void CombineGradients(Network network);
}
