using System;
using BatchNorm;

namespace DigitsMpi;

/// <summary>
/// An exchange that passes every call on and counts what it carries, so that the demo can print what synchronized batch
/// norm sends per step.
/// </summary>
/// <param name="inner">The exchange that does the work.</param>
public sealed class CountingExchange(IStatisticsExchange inner) : IStatisticsExchange
{
    /// <summary>Gets the number of all-gathers so far.</summary>
    public long Calls { get; private set; }

    /// <summary>Gets the doubles this rank has sent so far.</summary>
    public long Sent { get; private set; }

    /// <inheritdoc/>
    public int WorkerCount => inner.WorkerCount;

    /// <inheritdoc/>
    public int Rank => inner.Rank;

    /// <inheritdoc/>
    public void AllGather(ReadOnlySpan<double> local, Span<double> gathered)
    {
        Calls++;
        Sent += local.Length;
        inner.AllGather(local, gathered);
    }
}
