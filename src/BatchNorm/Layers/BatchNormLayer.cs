using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// Batch normalization over a mini-batch held as an N×D matrix: rows are samples, columns are features,
/// and the statistics are per column (Ioffe and Szegedy, 2015). It matches PyTorch's BatchNorm1d.
/// </summary>
/// <remarks>
/// <para><b>Training Forward</b> (<see cref="NormalizationLayer.IsTraining"/> true), per feature:</para>
/// <list type="bullet">
/// <item>μ = (1/N)·Σᵢ xᵢ and the biased variance σ² = (1/N)·Σᵢ (xᵢ − μ)², computed in two passes, never as E[x²] − E[x]².</item>
/// <item>x̂ = (x − μ)/√(σ² + ε) and y = γ·x̂ + β.</item>
/// <item>The running statistics are updated as <see cref="RunningStatisticsLayer"/> describes, and
/// <see cref="RunningStatisticsLayer.BatchesTracked"/> grows by one.</item>
/// </list>
/// <para><b>Inference Forward</b>: x̂ = (x − running_mean)/√(running_var + ε). It changes no state but the cache, and works
/// on a single row.</para>
/// <para><b>Backward</b> after a training Forward is the full gradient through μ and σ²; after an inference Forward it is
/// the frozen-statistics gradient dx = dy·γ/√(running_var + ε). Both write γ's and β's gradients.</para>
/// <para>Ghost batches (<see cref="VirtualBatchSize"/>) and statistics synchronized across workers
/// (<see cref="StatisticsExchange"/>) are ways of cutting the batch into segments on the same engine. Bad input,
/// threads and allocation follow <see cref="NormalizationLayer"/>.</para>
/// </remarks>
public sealed class BatchNormLayer : RunningStatisticsLayer
{
    private int? _virtualBatchSize;
    private StatisticsSynchronizer? _synchronizer;

    /// <summary>Creates a layer for <paramref name="features"/> columns, with γ = 1, β = 0, running mean 0 and running variance 1.</summary>
    /// <param name="features">D, the number of columns of every input; at least 1.</param>
    /// <param name="epsilon">ε, added to the variance before the square root; positive and finite. PyTorch's default is 1e-5.</param>
    /// <param name="momentum">m in [0, 1], the weight of the new batch in the running statistics (PyTorch's convention;
    /// Keras' momentum is 1 − m). Null gives a cumulative moving average.</param>
    /// <param name="backward">The backward strategy; <see cref="BackwardStrategy.ClosedForm"/> when null.</param>
    /// <param name="affine">Whether γ and β are learnable (PyTorch's <c>affine</c>); when false they stay 1 and 0 and
    /// <see cref="NormalizationLayer.Parameters"/> is empty.</param>
    /// <param name="trackRunningStatistics">Whether to keep running statistics (PyTorch's <c>track_running_stats</c>); when
    /// false, inference uses each batch's own statistics (see <see cref="RunningStatisticsLayer.TracksRunningStatistics"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> ≤ 0, <paramref name="epsilon"/> is not
    /// positive and finite, or <paramref name="momentum"/> is outside [0, 1] or NaN.</exception>
    /// <remarks>Allocates the parameter, gradient and statistics vectors (a few D-length arrays); the caches come with the first Forward.</remarks>
    public BatchNormLayer(int features, double epsilon = 1e-5, double? momentum = 0.1, BackwardStrategy? backward = null, bool affine = true, bool trackRunningStatistics = true)
        : base(features, 1, epsilon, momentum, backward, affine, trackRunningStatistics)
    {
    }

    /// <summary>
    /// Creates a layer for <paramref name="channels"/> channels of <paramref name="spatialSize"/> positions each, the
    /// convolution layout of PyTorch's BatchNorm1d on (N, C, S) (or BatchNorm2d with S = H·W, CS231n's spatial batch
    /// norm): the input has C·S columns, each row one sample flattened channel-major (channel c is columns
    /// [c·S, (c + 1)·S)), and γ, β and the statistics are per channel, over the N·S values of its columns.
    /// </summary>
    /// <param name="channels">C, at least 1.</param>
    /// <param name="spatialSize">S, at least 1; with S = 1 the layer is the per-feature layer of <paramref name="channels"/> features.</param>
    /// <param name="epsilon">ε, as for the constructor.</param>
    /// <param name="momentum">m, as for the constructor; the running variance is unbiased over the N·S values.</param>
    /// <param name="backward">The backward strategy; <see cref="BackwardStrategy.ClosedForm"/> when null.</param>
    /// <param name="affine">As for the constructor.</param>
    /// <param name="trackRunningStatistics">As for the constructor.</param>
    /// <returns>The layer, in training mode.</returns>
    /// <exception cref="ArgumentOutOfRangeException">C or S ≤ 0, C·S too large, or ε or the momentum out of range.</exception>
    /// <remarks>A factory rather than a second constructor, so that <c>new BatchNormLayer(64, 1)</c> cannot mean 64
    /// channels of one position when ε = 1 was meant.</remarks>
    public static BatchNormLayer Spatial(int channels, int spatialSize, double epsilon = 1e-5, double? momentum = 0.1, BackwardStrategy? backward = null, bool affine = true, bool trackRunningStatistics = true)
        => new(channels, spatialSize, epsilon, momentum, backward, affine, trackRunningStatistics, nameof(channels));

    private BatchNormLayer(int channels, int spatialSize, double epsilon, double? momentum, BackwardStrategy? backward, bool affine, bool trackRunningStatistics, string channelsName)
        : base(channels, spatialSize, epsilon, momentum, backward, affine, trackRunningStatistics, channelsName)
    {
    }

    /// <summary>
    /// Gets or sets the ghost batch size G (Hoffer et al., 2017), or null (the default) to normalize the whole batch
    /// together. With G set, a training Forward splits the N rows into N/G consecutive blocks, normalizes each block
    /// with its own statistics, and updates the running statistics once per block (BatchesTracked grows by N/G);
    /// Backward is the batch-norm gradient of each block. N must be a multiple of G. Inference ignores it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 2.</exception>
    /// <exception cref="InvalidOperationException">Set while <see cref="StatisticsExchange"/> is set: the two do not combine.</exception>
    /// <remarks>The cache shows the blocks as <see cref="NormalizationCache.RowBlocks"/>.</remarks>
    public int? VirtualBatchSize
    {
        get => _virtualBatchSize;
        set
        {
            if (value is not null && _synchronizer is not null)
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
    /// statistics with them (the Bessel factor uses the total row count). The Backward after it adds up every
    /// worker's strategy sums before its second step, so each worker's dx is its rows of the gradient of the whole
    /// batch, and γ's and β's gradients are the whole batch's. Inference needs no exchange and makes no call to it.
    /// </summary>
    /// <exception cref="InvalidOperationException">Set while <see cref="VirtualBatchSize"/> is set: the two do not combine.</exception>
    /// <remarks>
    /// Any strategy works synchronized, the built-in ones and your own, since a strategy's sums are all that couples the
    /// rows of a segment. A worker may hold any number of rows, none included, as long as all hold at least 2 together.
    /// </remarks>
    public IStatisticsExchange? StatisticsExchange
    {
        get => _synchronizer?.Exchange;
        set
        {
            if (value is not null && _virtualBatchSize is not null)
            {
                throw new InvalidOperationException("Ghost batches and synchronized statistics do not combine; clear VirtualBatchSize first.");
            }

            _synchronizer = value is null ? null : new StatisticsSynchronizer(value);
        }
    }

    /// <summary>Creates a layer from a state written by <see cref="NormalizationLayer.ExportState"/> of a <see cref="BatchNormLayer"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="NormalizationLayer.ImportState"/>, or the state is of another layer type.</exception>
    public static new BatchNormLayer FromState(string json) => (BatchNormLayer)LayerState.Create(json, typeof(BatchNormLayer));

    private protected override bool AcceptsFewerThanTwoRows => _synchronizer is not null;

    private protected override string Describe()
        => (_virtualBatchSize is int g ? string.Create(CultureInfo.InvariantCulture, $", virtual batch size: {g}") : string.Empty) + base.Describe();

    private protected override int TrainingRowBlocks(int rows) => _virtualBatchSize is int g ? rows / g : 1;

    private protected override string? RowRuleBroken(int rows, int columns)
        => IsTraining && _virtualBatchSize is int g && rows % g != 0
            ? string.Create(CultureInfo.InvariantCulture, $"input is {Guard.Shape(rows, columns)}, but with VirtualBatchSize = {g} the number of rows must be a multiple of {g}.")
            : base.RowRuleBroken(rows, columns);

    private protected override StepFault NormalizeTraining(Matrix<double> x, Matrix<double> y, NormalizationCache next) => NormalizeTrainingSynchronized(x, y, next);

    /// <inheritdoc/>
    private protected override StepFault NormalizeTraining(Matrix<float> x, Matrix<float> y, NormalizationCache next) => NormalizeTrainingSynchronized(x, y, next);

    /// <summary>The batch's statistics: of this worker's rows, or merged with every worker's.</summary>
    private StepFault NormalizeTrainingSynchronized<T>(Matrix<T> x, Matrix<T> y, NormalizationCache next)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (_synchronizer is not { } synchronizer)
        {
            return NormalizeTrainingDefault(x, y, next);
        }

        // The statistics of all workers' rows: exchanged and merged, then used as given statistics.
        Engine.GivenStatistics(Channels, out Span<double> center, out Span<double> correction, out Span<double> variance);
        (int total, int offset, int bad) = synchronizer.MergeMoments(x, Channels, center, correction, variance);
        if (bad >= 0)
        {
            return new StepFault(bad, FaultCause.Statistics);
        }

        next.Synchronized = true;
        next.SegmentValues = total;
        next.SegmentOffset = offset;
        return Engine.ForwardColumns(x, y, next, Gamma, Beta, affine: null, given: true);
    }

    private protected override void OnStepRejected(NormalizationCache? backwardOf)
    {
        // A synchronized worker that rejects its arguments still takes part in the exchange its peers are waiting in.
        if (backwardOf is null && IsTraining && _synchronizer is { } forward)
        {
            forward.RejectForward(Channels);
        }
        else if (backwardOf is { Synchronized: true } && _synchronizer is { } backward)
        {
            backward.RejectBackward(backwardOf.SegmentCount * BackwardStrategy.SumCount);
        }
    }

    internal override void WriteStateFields(LayerState.Writer writer)
    {
        base.WriteStateFields(writer);
        writer.NullableNumber("virtualBatchSize", _virtualBatchSize);
    }

    internal override Action? ReadStateFields(LayerState state)
    {
        Action? applyRunningStatistics = base.ReadStateFields(state);
        int? virtualBatchSize = state.OptionalInteger("virtualBatchSize", minimum: 2);
        if (virtualBatchSize is not null && _synchronizer is not null)
        {
            throw new FormatException("The saved state uses ghost batches ('virtualBatchSize'), which do not combine with this layer's StatisticsExchange.");
        }

        return () =>
        {
            applyRunningStatistics?.Invoke();
            _virtualBatchSize = virtualBatchSize;
        };
    }

    private protected override StepFault Differentiate(NormalizationCache cache, double[] scale, Matrix<double> dy, Matrix<double> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        => DifferentiateSynchronized(cache, scale, dy, dx, scaleGradient, shiftGradient);

    /// <inheritdoc/>
    private protected override StepFault Differentiate(NormalizationCache cache, double[] scale, Matrix<float> dy, Matrix<float> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        => DifferentiateSynchronized(cache, scale, dy, dx, scaleGradient, shiftGradient);

    /// <summary>This worker's backward pass, with the sums of every worker added up when the Forward was synchronized.</summary>
    private StepFault DifferentiateSynchronized<T>(NormalizationCache cache, double[] scale, Matrix<T> dy, Matrix<T> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (!cache.Synchronized)
        {
            return DifferentiateDefault(cache, scale, dy, dx, scaleGradient, shiftGradient);
        }

        StatisticsSynchronizer synchronizer = _synchronizer
            ?? throw new InvalidOperationException("The last Forward was synchronized across workers, so its Backward needs StatisticsExchange, which has been cleared since.");
        return Engine.BackwardSynchronized(BackwardStrategy, cache, scale, dy, dx, scaleGradient, shiftGradient, synchronizer);
    }
}
