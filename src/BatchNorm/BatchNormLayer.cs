using System;
using System.Globalization;
using System.Threading;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Batch normalization over a mini-batch held as an N×D matrix: rows are samples, columns are features,
/// and the statistics are per column (Ioffe and Szegedy, 2015). It matches PyTorch's BatchNorm1d.
/// </summary>
/// <remarks>
/// <para><b>Training Forward</b> (<see cref="IsTraining"/> true), per feature:</para>
/// <list type="bullet">
/// <item>μ = (1/N)·Σᵢ xᵢ and the biased variance σ² = (1/N)·Σᵢ (xᵢ − μ)², computed in two passes, never as E[x²] − E[x]².</item>
/// <item>x̂ = (x − μ)/√(σ² + ε) and y = γ·x̂ + β.</item>
/// <item>running_mean ← (1 − m)·running_mean + m·μ and running_var ← (1 − m)·running_var + m·σ²·N/(N − 1):
/// the running variance is unbiased, as in PyTorch. Then <see cref="BatchesTracked"/> grows by one.</item>
/// <item>With <see cref="Momentum"/> null, m = 1/BatchesTracked (after the increment): a cumulative moving average.</item>
/// <item>Keras' momentum is the weight of the old value: Keras 0.99 is m = 0.01 here, and PyTorch's 0.1 is 0.1 here.</item>
/// </list>
/// <para><b>Inference Forward</b> (<see cref="IsTraining"/> false): x̂ = (x − running_mean)/√(running_var + ε).
/// It changes no state but the cache, and works on a single row.</para>
/// <para><b>Backward</b> after a training Forward is the full gradient through μ and σ²; after an inference
/// Forward it is the frozen-statistics gradient dx = dy·γ/√(running_var + ε). Both write
/// <see cref="GammaGradient"/> and <see cref="BetaGradient"/>.</para>
/// <para><b>Bad input</b> throws before anything is written: the running statistics, <see cref="BatchesTracked"/>,
/// <see cref="Cache"/>, γ, β and the gradients stay as they were.</para>
/// <para><b>Threads:</b> a layer is not thread-safe: call it from one thread at a time (different layers may run on
/// different threads). Large batches are split across thread-pool threads inside Forward and Backward; the call
/// still returns only when all of the work is done. See <see cref="MaxDegreeOfParallelism"/>.</para>
/// <para><b>Allocation:</b> the destination overloads allocate nothing once the caches exist for the batch shape
/// (after two steps of that shape); the allocating overloads allocate their result only. Non-dense arguments are
/// copied into scratch matrices that are kept and reused.</para>
/// </remarks>
public sealed partial class BatchNormLayer
{
    private readonly ColumnRunner _runner = new();
    private readonly ForwardWork _forwardWork;
    private BackwardStrategy _backwardStrategy;
    private BatchNormCache? _cache;
    private BatchNormCache? _spareCache;
    private int? _virtualBatchSize;
    private IStatisticsExchange? _exchange;
    private double[] _localStatistics = [], _gatheredStatistics = [];
    private readonly Vector<double> _gammaGradientScratch;
    private readonly Vector<double> _betaGradientScratch;
    private Matrix<double>? _inputScratch;
    private Matrix<double>? _outputScratch;
    private Matrix<double>? _outputGradientScratch;
    private Matrix<double>? _inputGradientScratch;

    /// <summary>Creates a layer for <paramref name="features"/> columns, with γ = 1, β = 0, running mean 0 and running variance 1.</summary>
    /// <param name="features">D, the number of columns of every input; at least 1.</param>
    /// <param name="epsilon">ε, added to the variance before the square root; positive and finite. PyTorch's default is 1e-5.</param>
    /// <param name="momentum">m in [0, 1], the weight of the new batch in the running statistics (PyTorch's convention;
    /// Keras' momentum is 1 − m). Null gives a cumulative moving average.</param>
    /// <param name="backward">The backward strategy; <see cref="BackwardStrategy.ClosedForm"/> when null.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> ≤ 0, <paramref name="epsilon"/> is not
    /// positive and finite, or <paramref name="momentum"/> is outside [0, 1] or NaN.</exception>
    /// <remarks>Allocates the parameter, gradient and statistics vectors (a few D-length arrays); the caches come with the first Forward.</remarks>
    public BatchNormLayer(int features, double epsilon = 1e-5, double? momentum = 0.1, BackwardStrategy? backward = null)
    {
        if (features <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(features), features, "The number of features must be at least 1.");
        }

        if (!(epsilon > 0) || double.IsInfinity(epsilon))
        {
            throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "Epsilon must be positive and finite.");
        }

        if (momentum is double m && !(m >= 0 && m <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(momentum), m, "Momentum must lie in [0, 1], or be null for a cumulative moving average.");
        }

        Features = features;
        Epsilon = epsilon;
        Momentum = momentum;
        _backwardStrategy = backward ?? BackwardStrategy.ClosedForm;
        Gamma = Vector<double>.Build.Dense(features);
        Beta = Vector<double>.Build.Dense(features);
        GammaGradient = Vector<double>.Build.Dense(features);
        BetaGradient = Vector<double>.Build.Dense(features);
        RunningMean = Vector<double>.Build.Dense(features);
        RunningVariance = Vector<double>.Build.Dense(features);
        _gammaGradientScratch = Vector<double>.Build.Dense(features);
        _betaGradientScratch = Vector<double>.Build.Dense(features);
        _forwardWork = new ForwardWork(this);
        Parameters = [new LayerParameter("gamma", Gamma, GammaGradient), new LayerParameter("beta", Beta, BetaGradient)];
        ResetParameters();
        ResetRunningStatistics();
    }

    /// <summary>Gets D, the number of features (columns) the layer normalizes.</summary>
    public int Features { get; }

    /// <summary>Gets ε, added to the variance before the square root.</summary>
    public double Epsilon { get; private set; }

    /// <summary>Gets m, the weight of each new batch in the running statistics; null for a cumulative moving average.</summary>
    public double? Momentum { get; private set; }

    /// <summary>Gets or sets whether Forward normalizes with the batch's statistics (true, the initial value) or the running ones.</summary>
    /// <remarks>Reading or setting it allocates nothing. Set it between steps, not while another thread is inside Forward or Backward.</remarks>
    public bool IsTraining { get; set; } = true;

    /// <summary>Gets or sets how Backward computes the gradients. <see cref="BackwardStrategy.ClosedForm"/> by default.</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    /// <remarks>The strategies are stateless and may be shared by any number of layers.</remarks>
    public BackwardStrategy BackwardStrategy
    {
        get => _backwardStrategy;
        set
        {
            Guard.NotNull(value, nameof(value));
            _backwardStrategy = value;
        }
    }

    /// <summary>Gets γ, the per-feature scale, 1 at start. The layer owns it; an optimizer updates it in place.</summary>
    /// <remarks>The same vector for the layer's lifetime; reading the property allocates nothing.</remarks>
    public Vector<double> Gamma { get; }

    /// <summary>Gets β, the per-feature shift, 0 at start. The layer owns it; an optimizer updates it in place.</summary>
    public Vector<double> Beta { get; }

    /// <summary>Gets dL/dγ = Σᵢ dyᵢ·x̂ᵢ, overwritten by each Backward; 0 before the first.</summary>
    public Vector<double> GammaGradient { get; }

    /// <summary>Gets dL/dβ = Σᵢ dyᵢ, overwritten by each Backward; 0 before the first.</summary>
    public Vector<double> BetaGradient { get; }

    /// <summary>Gets the running mean, 0 at start, used by inference Forward.</summary>
    public Vector<double> RunningMean { get; }

    /// <summary>Gets the running (unbiased) variance, 1 at start, used by inference Forward.</summary>
    public Vector<double> RunningVariance { get; }

    /// <summary>
    /// Gets or sets the most threads one Forward or closed-form Backward may use; 1 keeps every step on the
    /// calling thread. The default is <see cref="Environment.ProcessorCount"/>. Whatever the setting, a batch
    /// with fewer than 2·32768 elements runs on the calling thread, and no thread gets fewer than 32768.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 1.</exception>
    public int MaxDegreeOfParallelism
    {
        get => _runner.MaxDegreeOfParallelism;
        set
        {
            if (value < 1)
            {
                throw new ArgumentOutOfRangeException(nameof(value), value, "At least one thread is needed.");
            }

            _runner.MaxDegreeOfParallelism = value;
        }
    }

    /// <summary>
    /// Gets or sets the ghost batch size G (Hoffer et al., 2017), or null (the default) to normalize the whole batch
    /// together. With G set, a training Forward splits the N rows into N/G consecutive blocks, normalizes each block
    /// with its own statistics, and updates the running statistics once per block (BatchesTracked grows by N/G);
    /// Backward is the batch-norm gradient of each block. N must be a multiple of G. Inference ignores it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 2.</exception>
    /// <remarks>A backward strategy of your own sees the blocks through <see cref="BatchNormCache.VirtualBatches"/>.</remarks>
    public int? VirtualBatchSize
    {
        get => _virtualBatchSize;
        set
        {
            if (value is not null && _exchange is not null)
            {
                throw new InvalidOperationException("Ghost batches and synchronized statistics do not combine; clear StatisticsExchange first.");
            }

            _virtualBatchSize = value is null or >= 2 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "A virtual batch needs at least 2 rows.");
        }
    }

    /// <summary>
    /// Gets or sets the exchange that synchronizes the statistics across data-parallel workers, or null (the
    /// default) for a layer that sees only its own batch. With an exchange, a training Forward normalizes with the
    /// mean and variance of all workers' rows together, merged with Chan's parallel formula, and updates the running
    /// statistics with them (the Bessel factor uses the total row count). The Backward after it uses the global
    /// Σdy and Σdy·x̂, so each worker's dx is its rows of the gradient of the whole batch, and GammaGradient and
    /// BetaGradient are the whole batch's. Inference needs no exchange and makes no call to it.
    /// </summary>
    /// <exception cref="InvalidOperationException">Set while <see cref="VirtualBatchSize"/> is set: the two do not combine.</exception>
    /// <remarks>
    /// Both built-in strategies work synchronized: <see cref="BackwardStrategy.Staged"/> adds up its per-row sums (dγ, dβ,
    /// dσ², the direct part of dμ and Σ(x − μ)) across workers, <see cref="BackwardStrategy.ClosedForm"/> its Σdy and
    /// Σdy·x̂. A strategy defined outside the library cannot take part in the exchange; synchronized training then
    /// uses the closed form.
    /// </remarks>
    public IStatisticsExchange? StatisticsExchange
    {
        get => _exchange;
        set
        {
            if (value is not null && _virtualBatchSize is not null)
            {
                throw new InvalidOperationException("Ghost batches and synchronized statistics do not combine; clear VirtualBatchSize first.");
            }

            _exchange = value;
        }
    }

    /// <summary>Gets the number of training batches folded into the running statistics.</summary>
    public long BatchesTracked { get; private set; }

    /// <summary>Gets what the last Forward kept for Backward; null before the first Forward.</summary>
    /// <remarks>Allocates nothing. The layer alternates between two cache objects of the same shape: a cache you hold keeps its values through the next Forward and is overwritten by the one after.</remarks>
    public BatchNormCache? Cache => _cache;

    /// <summary>Puts back a batch count saved earlier, for helpers that must leave the layer as they found it.</summary>
    internal void RestoreBatchesTracked(long batches) => BatchesTracked = batches;

    /// <summary>Sets γ to 1 and β to 0.</summary>
    /// <remarks>In place; allocates nothing.</remarks>
    public void ResetParameters()
    {
        Gamma.Clear();
        Gamma.Add(1.0, Gamma);
        Beta.Clear();
    }

    /// <summary>Sets the running mean to 0, the running variance to 1 and <see cref="BatchesTracked"/> to 0.</summary>
    /// <remarks>In place; allocates nothing.</remarks>
    public void ResetRunningStatistics()
    {
        RunningMean.Clear();
        RunningVariance.Clear();
        RunningVariance.Add(1.0, RunningVariance);
        BatchesTracked = 0;
    }

    /// <summary>Normalizes a mini-batch and returns y = γ·x̂ + β in a new N×D matrix.</summary>
    /// <param name="input">x, N×D. N ≥ 2 in training; any N ≥ 1 in inference.</param>
    /// <returns>y, a new dense N×D matrix.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    /// <exception cref="ArgumentException">The column count is not <see cref="Features"/>; fewer than 2 rows in
    /// training; or, in training, a column holds NaN or infinity or overflows its statistics (the message names it).</exception>
    /// <remarks>Allocates the result, and the cache when the batch shape changes. See the class remarks for the formulas.</remarks>
    public Matrix<double> Forward(Matrix<double> input)
    {
        CheckInput(input);
        Matrix<double> output = Matrix<double>.Build.Dense(input.RowCount, input.ColumnCount);
        ForwardCore(input, output);
        return output;
    }

    /// <summary>Normalizes a mini-batch into <paramref name="output"/>: y = γ·x̂ + β.</summary>
    /// <param name="input">x, N×D. N ≥ 2 in training; any N ≥ 1 in inference.</param>
    /// <param name="output">Receives y; N×D. It may be <paramref name="input"/> itself. If a non-finite column makes the
    /// call throw, the columns before it may already have been written (the layer's own state is untouched).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Forward(Matrix{double})"/>, or <paramref name="output"/>'s shape differs from <paramref name="input"/>'s.</exception>
    /// <remarks>Allocates nothing when both matrices are dense and the shape is that of the previous Forward.</remarks>
    public void Forward(Matrix<double> input, Matrix<double> output)
    {
        CheckInput(input);
        Guard.NotNull(output, nameof(output));
        Guard.SameShape(output, input.RowCount, input.ColumnCount, nameof(output), nameof(input));
        ForwardCore(input, output);
    }

    /// <summary>Back-propagates dL/dy through the last Forward and returns dL/dx in a new matrix.</summary>
    /// <param name="outputGradient">dL/dy, of the shape of the last Forward's input.</param>
    /// <returns>dL/dx, a new dense N×D matrix. <see cref="GammaGradient"/> and <see cref="BetaGradient"/> are overwritten.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="outputGradient"/> is null.</exception>
    /// <exception cref="ArgumentException">The shape differs from the last Forward's, or a column holds NaN or infinity or overflows Σdy or Σdy·x̂ (the message names it).</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    public Matrix<double> Backward(Matrix<double> outputGradient)
    {
        BatchNormCache cache = CheckOutputGradient(outputGradient);
        Matrix<double> inputGradient = Matrix<double>.Build.Dense(cache.BatchSize, cache.Features);
        BackwardCore(cache, outputGradient, inputGradient);
        return inputGradient;
    }

    /// <summary>Back-propagates dL/dy through the last Forward, writing dL/dx into <paramref name="inputGradient"/>.</summary>
    /// <param name="outputGradient">dL/dy, of the shape of the last Forward's input.</param>
    /// <param name="inputGradient">Receives dL/dx; same shape. It may be <paramref name="outputGradient"/> itself.
    /// If an exception is thrown for a non-finite column, its contents are unspecified (the layer's own state is untouched).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Backward(Matrix{double})"/>, or <paramref name="inputGradient"/> has another shape.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    /// <remarks>Allocates nothing when both matrices are dense.</remarks>
    public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient)
    {
        BatchNormCache cache = CheckOutputGradient(outputGradient);
        Guard.NotNull(inputGradient, nameof(inputGradient));
        Guard.SameShape(inputGradient, cache.BatchSize, cache.Features, nameof(inputGradient), nameof(outputGradient));
        BackwardCore(cache, outputGradient, inputGradient);
    }

    private void CheckInput(Matrix<double> input)
    {
        Guard.NotNull(input, nameof(input));
        Guard.Columns(input, Features, nameof(input));
        if (IsTraining && _virtualBatchSize is int g && input.RowCount % g != 0)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"input is {Guard.Shape(input)}, but with VirtualBatchSize = {g} the number of rows must be a multiple of {g}."),
                nameof(input));
        }

        if (IsTraining && input.RowCount < 2 && _exchange is null)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"Training needs at least 2 rows to estimate a variance, but input is {Guard.Shape(input)}. Set IsTraining = false to normalize single rows with the running statistics."),
                nameof(input));
        }
    }

    private BatchNormCache CheckOutputGradient(Matrix<double> outputGradient)
    {
        BatchNormCache cache = _cache ?? throw new InvalidOperationException("Backward needs the cache of a Forward; call Forward first.");
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.SameShape(outputGradient, cache.BatchSize, cache.Features, nameof(outputGradient), "the last Forward's input");
        return cache;
    }

    private void ForwardCore(Matrix<double> input, Matrix<double> output)
    {
        int n = input.RowCount;
        Matrix<double> x = DenseColumns.AsDense(input, ref _inputScratch);
        Matrix<double> y = DenseColumns.DenseTarget(output, ref _outputScratch);

        // The step is written into the spare cache; the current one stays as it was until the step has succeeded.
        int blocks = IsTraining && _virtualBatchSize is int g ? n / g : 1;
        BatchNormCache next = _spareCache is { } spare && spare.BatchSize == n && spare.VirtualBatches == blocks
            ? spare
            : new BatchNormCache(n, Features, _runner, blocks);
        next.IsTraining = IsTraining;
        next.Epsilon = Epsilon;
        int badColumn;
        if (next.IsTraining && _exchange is not null)
        {
            badColumn = ForwardSynchronized(x, y, next);
        }
        else
        {
            next.GlobalBatchSize = n;
            next.Exchange = null;
            _forwardWork.Start(x, y, next);
            _runner.Run(_forwardWork, n, Features);
            badColumn = _forwardWork.Finish();
        }

        if (badColumn >= 0)
        {
            _spareCache = next;
            throw Guard.NotFinite(nameof(input), badColumn, "cannot be normalized");
        }

        DenseColumns.CopyBack(y, output);
        _spareCache = _cache;
        _cache = next;
        if (next.IsTraining)
        {
            UpdateRunningStatistics(next);
        }
    }

    /// <summary>Folds the batch statistics into the running ones: once per block with ghost batches, in block order.</summary>
    private void UpdateRunningStatistics(BatchNormCache batch)
    {
        int blocks = batch.VirtualBatches, rows = batch.VirtualBatches > 1 ? batch.VirtualBatchSize : batch.GlobalBatchSize;
        double bessel = (double)rows / (rows - 1);
        Span<double> runningMean = DenseColumns.Data(RunningMean), runningVariance = DenseColumns.Data(RunningVariance);
        for (int b = 0; b < blocks; b++)
        {
            BatchesTracked++;
            double m = Momentum ?? 1.0 / BatchesTracked;
            for (int j = 0; j < Features; j++)
            {
                int k = (j * blocks) + b;
                runningMean[j] = ((1 - m) * runningMean[j]) + (m * batch.Mean[k]);
                runningVariance[j] = ((1 - m) * runningVariance[j]) + (m * batch.Variance[k] * bessel);
            }
        }
    }

    private void BackwardCore(BatchNormCache cache, Matrix<double> outputGradient, Matrix<double> inputGradient)
    {
        Matrix<double> dy = DenseColumns.AsDense(outputGradient, ref _outputGradientScratch);
        Matrix<double> dx = DenseColumns.DenseTarget(inputGradient, ref _inputGradientScratch);
        if (cache.IsTraining && cache.Exchange is { } exchange)
        {
            // A strategy defined outside the library cannot take part in the exchange; it gets the closed form.
            if (_backwardStrategy == BackwardStrategy.Staged)
            {
                BackwardSynchronizedStaged(cache, exchange, dy, dx);
            }
            else
            {
                BackwardSynchronizedClosedForm(cache, exchange, dy, dx);
            }
        }
        else
        {
            _backwardStrategy.BackwardChecked(cache, Gamma, dy, dx, _gammaGradientScratch, _betaGradientScratch);
        }


        // dβ = Σdy and dγ = Σdy·x̂ are finite exactly when the column of dy is finite and its sums do not overflow.
        Span<double> dGamma = DenseColumns.Data(_gammaGradientScratch), dBeta = DenseColumns.Data(_betaGradientScratch);
        for (int j = 0; j < Features; j++)
        {
            if (!double.IsFinite(dBeta[j]) || !double.IsFinite(dGamma[j]))
            {
                throw Guard.NotFinite("outputGradient", j, "cannot be back-propagated");
            }
        }

        DenseColumns.CopyBack(dx, inputGradient);
        _gammaGradientScratch.CopyTo(GammaGradient);
        _betaGradientScratch.CopyTo(BetaGradient);
    }

    /// <summary>
    /// One Forward over a range of columns. Each column is finished while it is still in cache: in training its
    /// statistics (two passes), then x̂ and y in one fused pass. A column whose statistics are not finite is
    /// recorded and skipped; the caller throws for the first such column.
    /// </summary>
    private sealed class ForwardWork(BatchNormLayer layer) : IColumnWork
    {
        private Matrix<double>? _x, _y;
        private BatchNormCache? _cache;
        private int _badColumn;

        public void Start(Matrix<double> x, Matrix<double> y, BatchNormCache cache)
        {
            _x = x;
            _y = y;
            _cache = cache;
            _badColumn = int.MaxValue;
        }

        /// <summary>Releases the matrices and returns the first column whose statistics were not finite, or −1.</summary>
        public int Finish()
        {
            _x = _y = null;
            _cache = null;
            return _badColumn == int.MaxValue ? -1 : _badColumn;
        }

        public void Run(int start, int end)
        {
            BatchNormCache cache = _cache!;
            int n = cache.BatchSize;
            bool stream = (long)n * cache.Features >= ColumnKernels.StreamingThreshold;
            Span<double> mean = cache.WritableMean, variance = cache.WritableVariance, inverseStd = cache.WritableInverseStd;
            Span<double> xHat = DenseColumns.Data(cache.NormalizedMatrix);
            Span<double> gamma = DenseColumns.Data(layer.Gamma), beta = DenseColumns.Data(layer.Beta);
            Span<double> runningMean = DenseColumns.Data(layer.RunningMean), runningVariance = DenseColumns.Data(layer.RunningVariance);
            int blocks = cache.VirtualBatches, rows = n / blocks;
            for (int j = start; j < end; j++)
            {
                for (int b = 0; b < blocks; b++)
                {
                    // Block b of column j: the whole column unless ghost batches split it.
                    int k = (j * blocks) + b, offset = (j * n) + (b * rows);
                    ReadOnlySpan<double> x = DenseColumns.Column(_x!, j).Slice(b * rows, rows);
                    double center, correction;
                    if (cache.IsTraining)
                    {
                        // The batch mean is kept in two parts, center + correction: see ColumnKernels.Moments.
                        ColumnKernels.Moments(x, out center, out correction, out variance[k]);
                        mean[k] = center + correction;
                        if (!double.IsFinite(mean[k]) || !double.IsFinite(variance[k]))
                        {
                            RecordBadColumn(j);
                            break;
                        }
                    }
                    else
                    {
                        center = mean[k] = runningMean[j];
                        correction = 0;
                        variance[k] = runningVariance[j];
                    }

                    inverseStd[k] = 1.0 / Math.Sqrt(variance[k] + layer.Epsilon);
                    ColumnKernels.Normalize(x, center, correction, inverseStd[k], gamma[j], beta[j], xHat.Slice(offset, rows), DenseColumns.Column(_y!, j).Slice(b * rows, rows), stream);
                }
            }
        }

        private void RecordBadColumn(int column)
        {
            int seen;
            while (column < (seen = Volatile.Read(ref _badColumn)) && Interlocked.CompareExchange(ref _badColumn, column, seen) != seen)
            {
            }
        }
    }
}
