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
/// Splits the feature columns of one step across threads without allocating. The calling thread takes the first
/// range; each other range goes to an idle worker of a small process-wide set of background threads
/// (<see cref="ColumnWorkers"/>), or runs on the calling thread when none is idle. A range that its worker has not
/// started by the time the caller has finished its own share is taken back and run by the caller, so a step never
/// waits for a thread that the machine has not scheduled yet. Nothing is queued anywhere that could outlive the step.
/// </summary>
/// <remarks>Not thread-safe: one runner serves one layer, which serves one thread at a time.</remarks>
internal sealed class ColumnRunner
{
    /// <summary>
    /// Elements (N·D) each extra thread must have before it pays for itself; below 2× this a step stays on
    /// the calling thread. Measured with benchmarks/BatchNorm.Benchmarks (see README).
    /// </summary>
    public const int MinElementsPerThread = 1 << 15;

    private readonly Job _job = new();

    /// <summary>Gets or sets the most threads a step may use, 1 for the calling thread only.</summary>
    public int MaxDegreeOfParallelism { get; set; } = Environment.ProcessorCount;

    /// <summary>The number of threads a step over an N×D batch of <paramref name="units"/> units of work (columns, or channels) uses.</summary>
    public int ThreadsFor(int rows, int features, int units)
    {
        long perThread = Math.Max(1, (long)rows * features / MinElementsPerThread);
        return (int)Math.Min(Math.Min(MaxDegreeOfParallelism, ColumnWorkers.Count + 1), Math.Min(units, perThread));
    }

    /// <summary>
    /// Runs <paramref name="work"/> over units [0, <paramref name="units"/>) of an N×D batch (its columns, or its channels
    /// of several columns each), split by <see cref="ThreadsFor"/>.
    /// </summary>
    /// <exception cref="AggregateException">The work threw on a worker thread.</exception>
    public void Run(IColumnWork work, int rows, int features, int units)
    {
        int threads = ThreadsFor(rows, features, units);
        if (threads <= 1)
        {
            work.Run(0, units);
            return;
        }

        Job job = _job;
        job.Prepare(work, units, threads);
        for (int k = 1; k < threads; k++)
        {
            ColumnWorkers.TryAssign(job, k);
        }

        job.RunRange(0);
        for (int k = 1; k < threads; k++)
        {
            job.TryRunRange(k);
        }

        job.WaitAndFinish();
    }

    /// <summary>One split step: its ranges, which of them have been claimed, and how many are still running.</summary>
    internal sealed class Job
    {
        private readonly object _gate = new();
        private readonly int[] _claimed = new int[ColumnWorkers.Count + 1];
        private IColumnWork? _work;
        private int _features, _threads, _pending;
        private Exception? _error;

        public void Prepare(IColumnWork work, int features, int threads)
        {
            _work = work;
            _features = features;
            _threads = threads;
            _error = null;
            _pending = threads - 1;
            for (int k = 1; k < _claimed.Length; k++)
            {
                // Ranges beyond this step's count stay claimed, so that a late worker cannot take one.
                Volatile.Write(ref _claimed[k], k < threads ? 0 : 1);
            }
        }

        /// <summary>The caller's own range, which no worker can claim.</summary>
        public void RunRange(int k) => _work!.Run(_features * k / _threads, _features * (k + 1) / _threads);

        /// <summary>Runs range k unless someone has claimed it; whoever runs it counts it done.</summary>
        public void TryRunRange(int k)
        {
            if (Interlocked.Exchange(ref _claimed[k], 1) != 0)
            {
                return;
            }

            try
            {
                RunRange(k);
            }
            catch (Exception e)
            {
                _error = e;
            }
            finally
            {
                if (Interlocked.Decrement(ref _pending) == 0)
                {
                    lock (_gate)
                    {
                        Monitor.PulseAll(_gate);
                    }
                }
            }
        }

        /// <summary>Waits until every range has run (a short spin first, since the others are usually nearly done) and rethrows a worker's exception.</summary>
        public void WaitAndFinish()
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

            _work = null;
            if (_error is { } error)
            {
                _error = null;
                throw new AggregateException(error);
            }
        }
    }
}

/// <summary>
/// The background threads that run the ranges of split steps: one fewer than the processor count, started on first
/// use and shared by all layers. Each waits on its own monitor for a range; a step that finds no idle worker runs
/// the range itself.
/// </summary>
internal static class ColumnWorkers
{
    private static readonly Worker[] Workers = CreateWorkers();

    private static long _allocatedBytes;

    /// <summary>Gets the number of worker threads.</summary>
    public static int Count => Workers.Length;

    /// <summary>
    /// Gets the bytes the workers have allocated while running ranges, summed since the process started: the
    /// allocation of the runner's own work, which the steady-state allocation tests hold to zero.
    /// </summary>
    public static long AllocatedBytes => Interlocked.Read(ref _allocatedBytes);

    /// <summary>Hands range <paramref name="range"/> of <paramref name="job"/> to an idle worker, if there is one.</summary>
    public static void TryAssign(ColumnRunner.Job job, int range)
    {
        foreach (Worker worker in Workers)
        {
            if (worker.TryAssign(job, range))
            {
                return;
            }
        }
    }

    private static Worker[] CreateWorkers()
    {
        var workers = new Worker[Math.Max(0, Environment.ProcessorCount - 1)];
        for (int i = 0; i < workers.Length; i++)
        {
            workers[i] = new Worker(i);
        }

        return workers;
    }

    private sealed class Worker
    {
        private readonly object _gate = new();
        private readonly Thread _thread;
        private bool _signaled;
        private int _busy;
        private bool _started;
        private ColumnRunner.Job? _job;
        private int _range;

        public Worker(int index)
        {
            _thread = new Thread(Loop) { IsBackground = true, Name = $"BatchNorm worker {index}" };
        }

        public bool TryAssign(ColumnRunner.Job job, int range)
        {
            if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
            {
                return false;
            }

            if (!_started)
            {
                _started = true;
                _thread.Start();
            }

            _job = job;
            _range = range;
            lock (_gate)
            {
                _signaled = true;
                Monitor.Pulse(_gate);
            }

            return true;
        }

        private void Loop()
        {
            while (true)
            {
                lock (_gate)
                {
                    while (!_signaled)
                    {
                        Monitor.Wait(_gate);
                    }

                    _signaled = false;
                }

                long before = GC.GetAllocatedBytesForCurrentThread();
                _job!.TryRunRange(_range);
                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                if (allocated != 0)
                {
                    Interlocked.Add(ref _allocatedBytes, allocated);
                }

                _job = null;
                Volatile.Write(ref _busy, 0);
            }
        }
    }
}
