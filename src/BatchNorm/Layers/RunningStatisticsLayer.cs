using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The base of the layers that keep running statistics (batch norm, batch renorm, and instance norm when it tracks
/// them): in training they normalize with the batch's statistics and fold those into the running mean and variance; in
/// inference they normalize with the running statistics, a per-channel affine map that folds into a preceding Linear
/// layer.
/// </summary>
/// <remarks>
/// <para>Per channel (a feature, or C channels of S positions each), after a training Forward over n values (N·S, or
/// (N/G)·S per ghost batch, once per block in block order): running_mean ← (1 − m)·running_mean + m·μ and
/// running_var ← (1 − m)·running_var + m·σ²·n/(n − 1). The running variance is unbiased, as in PyTorch; the variance used
/// to normalize is biased (÷n). With <see cref="Momentum"/> null, m = 1/BatchesTracked (after the increment): a
/// cumulative moving average. Keras' momentum is the weight of the old value: Keras 0.99 is m = 0.01 here. Instance
/// norm averages its per-instance statistics instead (see <see cref="InstanceNormLayer"/>).</para>
/// <para>Inference changes no state but the cache, and works on any number of rows, including one. Backward after an
/// inference Forward is the frozen-statistics gradient dx = dy·γ/√(running_var + ε). Without running statistics
/// (<see cref="TracksRunningStatistics"/> false) both modes use the batch's statistics.</para>
/// </remarks>
public abstract class RunningStatisticsLayer : NormalizationLayer
{
    private readonly double[] _nextMean, _nextVariance;
    private long _nextBatches;

    /// <summary>Checks and stores the settings, with running mean 0 and running variance 1.</summary>
    /// <exception cref="ArgumentOutOfRangeException">As for <see cref="NormalizationLayer"/>, or the momentum lies outside [0, 1].</exception>
    private protected RunningStatisticsLayer(
        int channels, int spatialSize, double epsilon, double? momentum, BackwardStrategy? backward, bool affine, bool trackRunningStatistics, string channelsName = "features")
        : base(channels, spatialSize, epsilon, backward, affine, channelsName: channelsName)
    {
        Guard.Momentum(momentum);
        Momentum = momentum;
        TracksRunningStatistics = trackRunningStatistics;
        _nextMean = new double[channels];
        _nextVariance = new double[channels];
        RunningMean = Vector<double>.Build.Dense(channels);
        RunningVariance = Vector<double>.Build.Dense(channels);
        ResetRunningStatistics();
    }

    /// <summary>
    /// Gets whether the layer keeps running statistics (PyTorch's <c>track_running_stats</c>, true by default). When
    /// false, inference normalizes with the batch's own statistics as training does, nothing is averaged into
    /// <see cref="RunningMean"/> and <see cref="RunningVariance"/> (they stay 0 and 1 and are not saved), and
    /// <see cref="FoldInto(Matrix{double}, Vector{double})"/> refuses: inference is then no fixed affine map.
    /// </summary>
    public bool TracksRunningStatistics { get; }

    /// <summary>The running mean a training step will commit, worked out by <see cref="PrepareCommit"/>.</summary>
    private protected Span<double> NextMean => _nextMean;

    /// <summary>The running variance a training step will commit.</summary>
    private protected Span<double> NextVariance => _nextVariance;

    /// <summary>Sets the batch count a training step will commit.</summary>
    private protected long NextBatches
    {
        set => _nextBatches = value;
    }

    /// <summary>Whether the momentum may be null, a cumulative moving average (instance norm's may not, as in PyTorch).</summary>
    private protected virtual bool AcceptsCumulativeAverage => true;

    /// <summary>Gets m, the weight of each new batch in the running statistics; null for a cumulative moving average.</summary>
    public double? Momentum { get; private set; }

    /// <summary>Gets the running mean, 0 at start, used by inference Forward.</summary>
    /// <remarks>The same vector for the layer's lifetime; it may be edited in place between steps.</remarks>
    public Vector<double> RunningMean { get; }

    /// <summary>Gets the running (unbiased) variance, 1 at start, used by inference Forward.</summary>
    public Vector<double> RunningVariance { get; }

    /// <summary>Gets the number of training batches folded into the running statistics.</summary>
    public long BatchesTracked { get; private set; }

    /// <summary>Sets the running mean to 0, the running variance to 1 and <see cref="BatchesTracked"/> to 0.</summary>
    /// <remarks>In place; allocates nothing.</remarks>
    public void ResetRunningStatistics()
    {
        using var call = new Call(this);
        DenseColumns.Data(RunningMean).Clear();
        DenseColumns.Data(RunningVariance).Fill(1.0);
        BatchesTracked = 0;
    }

    /// <summary>
    /// Folds this layer's inference transform into a preceding affine map z = x·W + b: returns W′ and b′ with
    /// x·W′ + b′ = layer(x·W + b) in inference mode, where W′ = W·diag(s), b′ = (b − running_mean)⊙s + β and
    /// s = γ/√(running_var + ε).
    /// </summary>
    /// <param name="weights">W, in×D, where D is <see cref="NormalizationLayer.Features"/>.</param>
    /// <param name="bias">b, D values.</param>
    /// <returns>New W′ (in×D) and b′ (D values); the arguments are not modified.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="weights"/> does not have D columns or <paramref name="bias"/> D elements.</exception>
    /// <remarks>Uses the running statistics whatever <see cref="NormalizationLayer.IsTraining"/> is, and changes no state. Allocates the results.</remarks>
    public (Matrix<double> Weights, Vector<double> Bias) FoldInto(Matrix<double> weights, Vector<double> bias)
    {
        Guard.NotNull(weights, nameof(weights));
        Guard.NotNull(bias, nameof(bias));
        if (!TracksRunningStatistics)
        {
            throw new InvalidOperationException(
                $"This {GetType().Name} keeps no running statistics: its inference normalizes with each batch's own, which no fixed affine map can fold.");
        }

        Guard.Columns(weights, Features, nameof(weights));
        Guard.Length(bias, Features, nameof(bias));

        // Column j belongs to channel j / S.
        Vector<double> scale = Vector<double>.Build.Dense(Features, j => Gamma[j / SpatialSize] / Math.Sqrt(RunningVariance[j / SpatialSize] + Epsilon));
        Matrix<double> foldedWeights = weights.Multiply(Matrix<double>.Build.DiagonalOfDiagonalVector(scale));
        Vector<double> foldedBias = Vector<double>.Build.Dense(Features, j => ((bias[j] - RunningMean[j / SpatialSize]) * scale[j]) + Beta[j / SpatialSize]);
        return (foldedWeights, foldedBias);
    }

    /// <summary>
    /// Folds the inference map into a float Linear layer's weights and bias, as <see cref="FoldInto(Matrix{double}, Vector{double})"/>
    /// does: computed in double from the exact values, each result rounded to float once.
    /// </summary>
    /// <param name="weights">The preceding Linear layer's weights, M×D as <c>x·W + b</c>: column j feeds feature j.</param>
    /// <param name="bias">Its bias, D elements.</param>
    /// <returns>New float weights and bias.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The weights do not have <see cref="NormalizationLayer.Features"/> columns or the bias that many elements.</exception>
    /// <exception cref="InvalidOperationException">The layer keeps no running statistics, or a folded weight or bias lies
    /// beyond the range of float (the message names it; fold into double weights instead).</exception>
    public (Matrix<float> Weights, Vector<float> Bias) FoldInto(Matrix<float> weights, Vector<float> bias)
    {
        Guard.NotNull(weights, nameof(weights));
        Guard.NotNull(bias, nameof(bias));
        (Matrix<double> foldedWeights, Vector<double> foldedBias) = FoldInto(weights.Map(v => (double)v), bias.Map(v => (double)v));
        Matrix<float> singleWeights = foldedWeights.Map(v => (float)v);
        Vector<float> singleBias = foldedBias.Map(v => (float)v);
        for (int j = 0; j < Features; j++)
        {
            if (!float.IsFinite(singleBias[j]) || !Elements<float>.AllFinite(DenseColumns.Column(foldedWeights, j)))
            {
                string what = float.IsFinite(singleBias[j])
                    ? string.Create(CultureInfo.InvariantCulture, $"a folded weight of column {j}")
                    : string.Create(CultureInfo.InvariantCulture, $"the folded bias[{j}] = {foldedBias[j]:R}");
                throw new InvalidOperationException($"Folding into float weights: {what} lies beyond the range of float. Fold into double weights instead.");
            }
        }

        return (singleWeights, singleBias);
    }

    /// <summary>Puts back a batch count saved earlier, for helpers that must leave the layer as they found it.</summary>
    internal void RestoreBatchesTracked(long batches) => BatchesTracked = batches;

    /// <summary>Whether a training batch may have fewer than 2 rows (synchronized workers, where the total counts).</summary>
    private protected virtual bool AcceptsFewerThanTwoRows => false;

    /// <summary>The number of blocks a training batch of <paramref name="rows"/> rows is cut into: 1, or N/G with ghost batches.</summary>
    private protected virtual int TrainingRowBlocks(int rows) => 1;

    /// <summary>An affine map other than γ and β that training applies, worked out from the batch statistics; null for γ and β.</summary>
    private protected virtual ISegmentAffine? TrainingAffine => null;

    private protected override SegmentLayout Layout(int rows) => SegmentLayout.ColumnBlocksOf(rows, Features, IsTraining ? TrainingRowBlocks(rows) : 1, Channels);

    private protected override string? RowRuleBroken(int rows, int columns)
    {
        bool batchStatistics = IsTraining || !TracksRunningStatistics;
        if (batchStatistics && (long)rows * SpatialSize < 2 && !(IsTraining && AcceptsFewerThanTwoRows))
        {
            string remedy = TracksRunningStatistics
                ? "Set IsTraining = false to normalize single rows with the running statistics."
                : "This layer keeps no running statistics, so inference needs them too.";
            return $"Batch statistics need at least {(SpatialSize == 1 ? "2 rows" : "2 values per channel (rows times positions)")} to estimate a variance, but input is {Guard.Shape(rows, columns)}. {remedy}";
        }

        return null;
    }

    private protected override StepFault Normalize(Matrix<double> x, Matrix<double> y, NormalizationCache next) => NormalizeRunning(x, y, next);

    /// <inheritdoc/>
    private protected override StepFault Normalize(Matrix<float> x, Matrix<float> y, NormalizationCache next) => NormalizeRunning(x, y, next);

    /// <summary>Running statistics checked, then the batch's statistics (training) or the running ones (inference).</summary>
    private StepFault NormalizeRunning<T>(Matrix<T> x, Matrix<T> y, NormalizationCache next)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        // The running statistics are public vectors, so they are checked here rather than trusted: inference divides by
        // them, and training averages into them.
        ReadOnlySpan<double> runningMean = DenseColumns.Data(RunningMean), runningVariance = DenseColumns.Data(RunningVariance);
        for (int j = 0; TracksRunningStatistics && j < runningMean.Length; j++)
        {
            if (!double.IsFinite(runningMean[j]) || !(runningVariance[j] >= 0) || double.IsPositiveInfinity(runningVariance[j]))
            {
                return new StepFault(j, FaultCause.RunningStatistics);
            }
        }

        if (next.Layout.ByRow)
        {
            // Instance norm with batch statistics: each sample's channels, as row groups.
            return NormalizeRows(x, y, next);
        }

        if (IsTraining)
        {
            return typeof(T) == typeof(double)
                ? NormalizeTraining((Matrix<double>)(object)x, (Matrix<double>)(object)y, next)
                : NormalizeTraining((Matrix<float>)(object)x, (Matrix<float>)(object)y, next);
        }

        if (!TracksRunningStatistics)
        {
            // Inference without running statistics: the batch's own, as a plain training Forward computes them.
            return Engine.ForwardColumns(x, y, next, Gamma, Beta, affine: null, given: false);
        }

        // Inference: the running statistics, as given statistics of one segment per channel.
        Engine.GivenStatistics(Channels, out Span<double> center, out Span<double> correction, out Span<double> variance);
        DenseColumns.Data(RunningMean).CopyTo(center);
        correction.Clear();
        DenseColumns.Data(RunningVariance).CopyTo(variance);
        next.FrozenStatistics = true;
        return Engine.ForwardColumns(x, y, next, Gamma, Beta, affine: null, given: true);
    }

    /// <summary>A training Forward: by default each segment with its own statistics, computed by the engine.</summary>
    private protected virtual StepFault NormalizeTraining(Matrix<double> x, Matrix<double> y, NormalizationCache next) => NormalizeTrainingDefault(x, y, next);

    /// <inheritdoc cref="NormalizeTraining(Matrix{double}, Matrix{double}, NormalizationCache)"/>
    private protected virtual StepFault NormalizeTraining(Matrix<float> x, Matrix<float> y, NormalizationCache next) => NormalizeTrainingDefault(x, y, next);

    /// <summary>The batch's own statistics, through the layer's <see cref="TrainingAffine"/>.</summary>
    private protected StepFault NormalizeTrainingDefault<T>(Matrix<T> x, Matrix<T> y, NormalizationCache next)
        where T : unmanaged, IEquatable<T>, IFormattable
        => Engine.ForwardColumns(x, y, next, Gamma, Beta, TrainingAffine, given: false);

    /// <summary>
    /// The running statistics after a training step, worked out before anything is committed. They cannot overflow: the
    /// old ones are finite (checked), and σ²·N/(N − 1) = Σ(x − μ)²/(N − 1) is at most the sum of squares the statistics
    /// were computed from, so each update is a convex combination of finite values.
    /// </summary>
    private protected override StepFault PrepareCommit(NormalizationCache next)
    {
        if (next.FrozenStatistics || !next.IsTraining || !TracksRunningStatistics)
        {
            return StepFault.None;
        }

        int blocks = next.RowBlocks, rows = next.SegmentValues;
        double bessel = (double)rows / (rows - 1);
        DenseColumns.Data(RunningMean).CopyTo(_nextMean);
        DenseColumns.Data(RunningVariance).CopyTo(_nextVariance);
        long batches = BatchesTracked;
        ReadOnlySpan<double> mean = next.Mean, variance = next.Variance;
        for (int b = 0; b < blocks; b++)
        {
            // Saturates rather than wraps after long.MaxValue batches; the cumulative average then hardly moves anyway.
            batches = batches == long.MaxValue ? batches : batches + 1;
            double m = Momentum ?? 1.0 / batches;
            for (int j = 0; j < Channels; j++)
            {
                int k = (j * blocks) + b;
                _nextMean[j] = ((1 - m) * _nextMean[j]) + (m * mean[k]);
                _nextVariance[j] = ((1 - m) * _nextVariance[j]) + (m * variance[k] * bessel);
            }
        }

        _nextBatches = batches;
        return StepFault.None;
    }

    private protected override void OnForwardCommitted(NormalizationCache cache)
    {
        if (!cache.FrozenStatistics && cache.IsTraining && TracksRunningStatistics)
        {
            _nextMean.CopyTo(DenseColumns.Data(RunningMean));
            _nextVariance.CopyTo(DenseColumns.Data(RunningVariance));
            BatchesTracked = _nextBatches;
        }
    }

    internal override void WriteStateFields(LayerState.Writer writer)
    {
        writer.NullableNumber("momentum", Momentum);
        if (TracksRunningStatistics != DefaultTracking)
        {
            writer.Boolean("trackRunningStatistics", TracksRunningStatistics);
        }

        if (!TracksRunningStatistics)
        {
            return;
        }

        writer.Array("runningMean", RunningMean);
        writer.Array("runningVariance", RunningVariance, nonNegative: true);
        writer.Integer("batchesTracked", BatchesTracked);
    }

    internal override string? StateShapeMismatch(LayerState state)
        => base.StateShapeMismatch(state) ?? (state.OptionalBoolean("trackRunningStatistics", DefaultTracking) == TracksRunningStatistics
            ? null
            : $"The saved state is of a layer that {(TracksRunningStatistics ? "keeps no" : "keeps")} running statistics, but this layer {(TracksRunningStatistics ? "keeps them" : "keeps none")}.");

    internal override Action? ReadStateFields(LayerState state)
    {
        double? momentum = state.NullableNumber("momentum");
        if (momentum is double m ? !(m >= 0 && m <= 1) : !AcceptsCumulativeAverage)
        {
            throw new FormatException(AcceptsCumulativeAverage ? "'momentum' must be a number in [0, 1] or null." : "'momentum' must be a number in [0, 1].");
        }

        if (!TracksRunningStatistics)
        {
            return () => Momentum = momentum;
        }

        double[] mean = state.Array("runningMean"), variance = state.Array("runningVariance", nonNegative: true);

        long batches = state.Count("batchesTracked");
        return () =>
        {
            Momentum = momentum;
            mean.CopyTo(DenseColumns.Data(RunningMean));
            variance.CopyTo(DenseColumns.Data(RunningVariance));
            BatchesTracked = batches;
        };
    }

    private protected override string Describe() => base.Describe() + (TracksRunningStatistics ? string.Empty : ", no running statistics");

    /// <summary>Whether a saved state without the field "trackRunningStatistics" keeps running statistics (PyTorch's default for the type).</summary>
    private protected virtual bool DefaultTracking => true;

}
