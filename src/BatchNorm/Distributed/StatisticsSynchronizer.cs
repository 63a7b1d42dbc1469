using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Synchronized batch norm around the shared engine: it exchanges what couples the workers' rows and nothing else.
/// Forward: each worker's moments per feature, merged with Chan's parallel formula. Backward: the strategy's sums per
/// segment, added up. Every worker merges the gathered values itself, in rank order, so all compute bit-identical results.
/// </summary>
/// <remarks>
/// <para>Every exchange carries a status slot behind each worker's values. A worker that rejects its own arguments still
/// takes part, with a status that says so, and then throws its own exception; every other worker then throws too,
/// naming that worker, rather than wait for it. A worker whose batch holds NaN or infinity sends its non-finite moments
/// or sums: it reports its own column, and the others name it.</para>
/// <para>One synchronizer serves one layer; its gather buffers are kept, so steps allocate nothing of their own.</para>
/// </remarks>
internal sealed class StatisticsSynchronizer(IStatisticsExchange exchange)
{
    /// <summary>Values per feature in a forward exchange: count, mean (two parts) and sum of squared deviations.</summary>
    private const int ForwardSlots = 4;

    private const double Accepted = 0, Rejected = 1;

    private readonly Channel _forward = new(), _backward = new();

    /// <summary>Gets the transport.</summary>
    public IStatisticsExchange Exchange { get; } = exchange;

    /// <summary>
    /// The statistics of all workers' rows together: local moments per feature, one all-gather, then Chan's merge in rank
    /// order into the center, correction (the mean is their sum, kept in two parts as by <see cref="ColumnKernels.Moments{T}"/>)
    /// and biased variance of each feature.
    /// </summary>
    /// <param name="input">This worker's rows.</param>
    /// <param name="channels">The channels: each is input.ColumnCount / channels adjacent columns, one contiguous run.</param>
    /// <param name="center">Receives the merged mean's first part, per channel.</param>
    /// <param name="correction">Receives its second part.</param>
    /// <param name="variance">Receives the merged biased variance.</param>
    /// <returns>The number of values per channel over all workers, the index of this worker's first value among them
    /// (rows times positions), and the first channel of this worker's own batch that holds NaN or infinity (−1 when none
    /// does).</returns>
    /// <exception cref="ArgumentException">All workers together hold fewer than 2 values per channel; every worker throws it.</exception>
    /// <exception cref="InvalidOperationException">Another worker rejected its arguments or its batch holds NaN or infinity,
    /// or the exchange reports an impossible worker count or rank.</exception>
    public (int Total, int Offset, int BadChannel) MergeMoments<T>(Matrix<T> input, int channels, Span<double> center, Span<double> correction, Span<double> variance)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        int n = input.RowCount * (input.ColumnCount / channels), features = channels;
        Span<double> local = _forward.Local(ForwardSlots * features);
        for (int j = 0; j < features; j++)
        {
            // A worker with no rows still takes part, with a count of 0, so that no peer waits for it.
            double mean = 0, offset = 0, squares = 0;
            if (n > 0)
            {
                ColumnKernels.Moments(DenseColumns.Data(input).Slice(j * n, n), out mean, out offset, out double v);
                squares = v * n;
            }

            local[ForwardSlots * j] = n;
            local[(ForwardSlots * j) + 1] = mean;
            local[(ForwardSlots * j) + 2] = offset;
            local[(ForwardSlots * j) + 3] = squares;
        }

        Gather(_forward, Accepted, "its input");
        int workers = _forward.Workers, rank = Exchange.Rank;
        long total = 0, first = 0;
        for (int r = 0; r < workers; r++)
        {
            long count = (long)_forward.Of(r)[0];
            total += count;
            first += r < rank ? count : 0;
        }

        int ownBad = FirstNonFinite(_forward.Of(rank), ForwardSlots, ForwardSlots);
        if (ownBad >= 0)
        {
            return (0, 0, ownBad);
        }

        ThrowForPeer(_forward, ForwardSlots, ForwardSlots, "batch", "normalized", input.ColumnCount / channels);
        if (total < 2)
        {
            throw new ArgumentException(
                input.ColumnCount == channels
                    ? string.Create(CultureInfo.InvariantCulture, $"Training needs at least 2 rows across all workers, but there are {total}.")
                    : string.Create(CultureInfo.InvariantCulture, $"Training needs at least 2 values per channel across all workers (rows times positions), but there are {total}."),
                nameof(input));
        }

        for (int j = 0; j < features; j++)
        {
            // Chan et al.'s parallel formula in its summed form: with per-worker counts nᵣ, means μᵣ and sums of squared
            // deviations Mᵣ, μ = Σ nᵣμᵣ/N and M = Σ (Mᵣ + nᵣ·(μᵣ − μ)²). Means are kept as center + offset, so that
            // x − μ keeps its digits far from zero; the center is that of the first worker with rows.
            int at = ForwardSlots * j;
            double c = 0, offset = 0;
            for (int r = 0; r < workers; r++)
            {
                if (_forward.Of(r)[at] > 0)
                {
                    c = _forward.Of(r)[at + 1];
                    break;
                }
            }

            for (int r = 0; r < workers; r++)
            {
                ReadOnlySpan<double> w = _forward.Of(r);
                offset += w[at] * ((w[at + 1] - c) + w[at + 2]);
            }

            offset /= total;
            double squares = 0;
            for (int r = 0; r < workers; r++)
            {
                ReadOnlySpan<double> w = _forward.Of(r);
                double delta = (w[at + 1] - c) + w[at + 2] - offset;
                squares += w[at + 3] + (w[at] * delta * delta);
            }

            center[j] = c;
            correction[j] = offset;
            variance[j] = squares / total;
        }

        return ((int)total, (int)first, -1);
    }

    /// <summary>
    /// Adds up the per-segment sums of every worker, in rank order, in place. <paramref name="sums"/> holds
    /// <paramref name="sumCount"/> sums per segment, the first two Σdy·x̂ and Σdy, with one segment per feature.
    /// </summary>
    /// <param name="sums">This worker's sums, replaced by the totals.</param>
    /// <param name="sumCount">The sums per segment.</param>
    /// <param name="positions">The columns of each segment's channel (1 for features), for the message naming a peer's bad channel.</param>
    /// <returns>The first feature (or channel) whose sums are not finite on this worker (its own output gradient is at fault), or −1.</returns>
    /// <exception cref="InvalidOperationException">Another worker rejected its arguments or its output gradient holds NaN or infinity.</exception>
    public int AddUp(Span<double> sums, int sumCount, int positions = 1)
    {
        sums.CopyTo(_backward.Local(sums.Length));
        Gather(_backward, Accepted, "its output gradient");
        int ownBad = FirstNonFinite(_backward.Of(Exchange.Rank), sumCount, BackwardStrategy.ParameterSums);
        if (ownBad >= 0)
        {
            return ownBad;
        }

        ThrowForPeer(_backward, sumCount, BackwardStrategy.ParameterSums, "output gradient", "back-propagated", positions);
        for (int k = 0; k < sums.Length; k++)
        {
            double total = 0;
            for (int r = 0; r < _backward.Workers; r++)
            {
                total += _backward.Of(r)[k];
            }

            sums[k] = total;
        }

        return -1;
    }

    /// <summary>Takes part in a forward exchange for a step this worker has rejected, so that the others fail instead of waiting.</summary>
    public void RejectForward(int features)
    {
        _forward.Local(ForwardSlots * features).Clear();
        Gather(_forward, Rejected, "its input");
    }

    /// <summary>Takes part in a backward exchange of <paramref name="length"/> sums for a step this worker has rejected.</summary>
    public void RejectBackward(int length)
    {
        _backward.Local(length).Clear();
        Gather(_backward, Rejected, "its output gradient");
    }

    /// <summary>
    /// One all-gather of a channel's local values and status. Unless this worker is rejecting the step itself, throws when
    /// a peer rejected it.
    /// </summary>
    private void Gather(Channel channel, double status, string what)
    {
        int workers = Exchange.WorkerCount, rank = Exchange.Rank;
        if (workers < 1 || rank < 0 || rank >= workers)
        {
            throw new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"The statistics exchange {Exchange.GetType().Name} reports worker count {workers} and rank {rank}; it needs at least 1 worker and a rank in [0, count)."));
        }

        ReadOnlySpan<double> sent = channel.Sent(status);
        if ((long)workers * sent.Length > Array.MaxLength)
        {
            throw new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"The statistics exchange {Exchange.GetType().Name} reports {workers} workers: {workers} × {sent.Length} gathered values do not fit in an array."));
        }

        try
        {
            Exchange.AllGather(sent, channel.Receive(workers));
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentException or OverflowException or InvalidCastException or NullReferenceException)
        {
            throw new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"The statistics exchange {Exchange.GetType().Name} failed to gather {sent.Length} values from each of the {workers} workers it reports (into {workers * sent.Length}): {e.Message}"),
                e);
        }
        for (int r = 0; r < workers && status == Accepted; r++)
        {
            if (channel.StatusOf(r) == Rejected)
            {
                throw new InvalidOperationException(
                    string.Create(CultureInfo.InvariantCulture, $"Worker {r} rejected {what} in this synchronized step, so the step fails on every worker; the exception on worker {r} says why."));
            }
        }
    }

    /// <summary>The first group (feature or segment) of <paramref name="slots"/> values whose first <paramref name="checkedSlots"/> are not finite, or −1.</summary>
    private static int FirstNonFinite(ReadOnlySpan<double> values, int slots, int checkedSlots)
    {
        for (int g = 0; g < values.Length / slots; g++)
        {
            for (int s = 0; s < checkedSlots; s++)
            {
                if (!double.IsFinite(values[(g * slots) + s]))
                {
                    return g;
                }
            }
        }

        return -1;
    }

    /// <summary>Throws, naming the first worker whose values are not finite and its column, or its channel of <paramref name="positions"/> columns.</summary>
    private static void ThrowForPeer(Channel channel, int slots, int checkedSlots, string what, string verb, int positions)
    {
        for (int r = 0; r < channel.Workers; r++)
        {
            int bad = FirstNonFinite(channel.Of(r), slots, checkedSlots);
            if (bad >= 0)
            {
                string where = positions == 1
                    ? string.Create(CultureInfo.InvariantCulture, $"Column {bad}")
                    : string.Create(CultureInfo.InvariantCulture, $"Channel {bad} (columns {bad * positions}–{((bad + 1) * positions) - 1})");
                throw new InvalidOperationException(
                    string.Create(CultureInfo.InvariantCulture, $"{where} of worker {r}'s {what} cannot be {verb}: it holds NaN or infinity, or values so large that its sums overflow. The synchronized step fails on every worker."));
            }
        }
    }

    /// <summary>The buffers of one kind of exchange: this worker's values with a status slot behind them, and what is gathered.</summary>
    private sealed class Channel
    {
        private double[] _local = [], _gathered = [];

        /// <summary>Gets the number of workers of the last exchange.</summary>
        public int Workers => _gathered.Length / _local.Length;

        /// <summary>The local values of the next exchange, <paramref name="length"/> of them.</summary>
        public Span<double> Local(int length)
        {
            if (_local.Length != length + 1)
            {
                _local = new double[length + 1];
            }

            return _local.AsSpan(0, length);
        }

        /// <summary>The local values and the status behind them, as sent.</summary>
        public ReadOnlySpan<double> Sent(double status)
        {
            _local[^1] = status;
            return _local;
        }

        /// <summary>The buffer for every worker's values and status.</summary>
        public Span<double> Receive(int workers)
        {
            if (_gathered.Length != workers * _local.Length)
            {
                _gathered = new double[workers * _local.Length];
            }

            return _gathered;
        }

        /// <summary>Worker r's gathered values, without its status.</summary>
        public ReadOnlySpan<double> Of(int r) => _gathered.AsSpan(r * _local.Length, _local.Length - 1);

        public double StatusOf(int r) => _gathered[((r + 1) * _local.Length) - 1];
    }
}
