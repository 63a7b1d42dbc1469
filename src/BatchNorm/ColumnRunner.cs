using System;
using System.Threading;

namespace BatchNorm;

/// <summary>Work over a contiguous range of feature columns.</summary>
internal interface IColumnWork
{
    /// <summary>Processes columns [start, end).</summary>
    void Run(int start, int end);
}

/// <summary>
/// Splits the feature columns of one step across threads without allocating: the work items are created
/// once, queued to the thread pool, and any the pool has not started by the time the calling thread has
/// finished its own share are run inline by the caller. Small batches run on the calling thread alone.
/// </summary>
/// <remarks>Not thread-safe: one runner serves one layer, which serves one thread at a time.</remarks>
internal sealed class ColumnRunner
{
    /// <summary>
    /// Elements (N·D) each extra thread must have before it pays for itself; below 2× this a step stays on
    /// the calling thread. Measured with benchmarks/BatchNorm.Benchmarks (see README).
    /// </summary>
    public const int MinElementsPerThread = 1 << 15;

    private readonly WorkItem[] _items;
    private readonly object _gate = new();
    private IColumnWork? _work;
    private int _pending;
    private Exception? _error;

    public ColumnRunner()
    {
        _items = new WorkItem[Math.Max(0, Environment.ProcessorCount - 1)];
        for (int i = 0; i < _items.Length; i++)
        {
            _items[i] = new WorkItem(this);
        }
    }

    /// <summary>Gets or sets the most threads a step may use, 1 for the calling thread only.</summary>
    public int MaxDegreeOfParallelism { get; set; } = Environment.ProcessorCount;

    /// <summary>The number of threads a step over an N×D batch uses.</summary>
    public int ThreadsFor(int rows, int features)
    {
        long perThread = Math.Max(1, (long)rows * features / MinElementsPerThread);
        return (int)Math.Min(Math.Min(MaxDegreeOfParallelism, _items.Length + 1), Math.Min(features, perThread));
    }

    /// <summary>Runs <paramref name="work"/> over columns [0, features), split by <see cref="ThreadsFor"/>.</summary>
    public void Run(IColumnWork work, int rows, int features)
    {
        int threads = ThreadsFor(rows, features);
        if (threads <= 1)
        {
            work.Run(0, features);
            return;
        }

        _work = work;
        _error = null;
        _pending = threads - 1;
        for (int k = 1; k < threads; k++)
        {
            _items[k - 1].Prepare(features * k / threads, features * (k + 1) / threads);
            ThreadPool.UnsafeQueueUserWorkItem(_items[k - 1], preferLocal: false);
        }

        work.Run(0, features / threads);
        for (int k = 1; k < threads; k++)
        {
            _items[k - 1].TryRun();
        }

        WaitForPending();
        _work = null;
        if (_error is { } error)
        {
            _error = null;
            throw new AggregateException(error);
        }
    }

    /// <summary>Waits until every range has run: a short spin first, since the other threads are usually nearly done.</summary>
    private void WaitForPending()
    {
        var spinner = default(SpinWait);
        while (Volatile.Read(ref _pending) > 0 && !spinner.NextSpinWillYield)
        {
            spinner.SpinOnce();
        }

        lock (_gate)
        {
            while (Volatile.Read(ref _pending) > 0)
            {
                Monitor.Wait(_gate);
            }
        }
    }

    private void Signal()
    {
        if (Interlocked.Decrement(ref _pending) == 0)
        {
            lock (_gate)
            {
                Monitor.PulseAll(_gate);
            }
        }
    }

    private sealed class WorkItem(ColumnRunner owner) : IThreadPoolWorkItem
    {
        private int _start, _end, _claimed = 1;

        public void Prepare(int start, int end)
        {
            _start = start;
            _end = end;
            Volatile.Write(ref _claimed, 0);
        }

        public void Execute() => TryRun();

        /// <summary>Runs the range unless another thread has claimed it; whoever runs it signals.</summary>
        public void TryRun()
        {
            if (Interlocked.Exchange(ref _claimed, 1) != 0)
            {
                return;
            }

            try
            {
                owner._work!.Run(_start, _end);
            }
            catch (Exception e)
            {
                owner._error = e;
            }
            finally
            {
                owner.Signal();
            }
        }
    }
}
