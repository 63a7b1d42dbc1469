using System;
using System.Collections.Generic;
using System.Globalization;
using System.Threading;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The base of the library's normalization layers: γ, β and their gradients, the mode and the backward strategy, the
/// argument checks, the double-buffered cache, and the shared engine that every layer runs on. A layer type adds only
/// how it cuts a batch into segments and where its statistics come from.
/// </summary>
/// <remarks>
/// <para><b>Bad input</b> throws before anything is written: the running statistics, the cache, γ, β and the gradients
/// stay as they were. The cache is switched only once a step's output has been written, so a step that fails late
/// (a non-finite column, or a destination that refuses the write) leaves the previous Forward's cache.</para>
/// <para><b>Threads:</b> a layer is not thread-safe: call it from one thread at a time (different layers may run on
/// different threads). Large batches are split across worker threads inside Forward and Backward; the call still
/// returns only when all of the work is done. See <see cref="MaxDegreeOfParallelism"/>.</para>
/// <para><b>Allocation:</b> the destination overloads allocate nothing once the caches exist for the batch shape
/// (after two steps of that shape); the allocating overloads allocate their result only. Non-dense arguments are
/// copied into scratch matrices that are kept and reused.</para>
/// </remarks>
public abstract class NormalizationLayer : INormalizationLayer
{
    /// <summary>The version <see cref="ExportState"/> writes and the only one <see cref="ImportState"/> reads.</summary>
    public const int StateFormatVersion = LayerState.FormatVersion;

    private readonly NormalizationEngine _engine;
    private readonly double[] _scale, _scaleGradient, _shiftGradient;
    private BackwardStrategy _backwardStrategy;
    private NormalizationCache? _cache, _spareCache;
    private int _busy;
    private readonly StepScratch<double> _scratch = new();
    private StepScratch<float>? _singleScratch;
    private double[]? _columnGamma, _columnBeta, _columnScale, _columnScaleGradient, _columnShiftGradient;

    /// <summary>Checks and stores what every layer has, with γ = 1 and β = 0.</summary>
    /// <param name="channels">C, the number of channels, each with its own γ and β (and statistics, for column layouts).</param>
    /// <param name="spatialSize">S, the positions of each channel: the input has C·S columns, channel c being columns [c·S, (c + 1)·S).</param>
    /// <param name="epsilon">ε.</param>
    /// <param name="backward">The backward strategy, or null for the closed form.</param>
    /// <param name="affine">Whether γ (and β) are learnable parameters; when false they are fixed at 1 and 0.</param>
    /// <param name="shift">Whether the layer type has β at all (RMS norm has none).</param>
    /// <param name="channelsName">The name of the constructor's channel-count parameter, for its messages.</param>
    /// <param name="centered">Whether the layer subtracts the mean; false for RMS norm, which then takes only strategies
    /// that handle uncentered segments (<see cref="BackwardStrategy.SupportsUncentered"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException">C or S ≤ 0, C·S beyond the range of int, or ε not positive and finite.</exception>
    /// <exception cref="ArgumentException">A strategy whose <see cref="BackwardStrategy.SumCount"/> is below 2.</exception>
    private protected NormalizationLayer(
        int channels, int spatialSize, double epsilon, BackwardStrategy? backward, bool affine, bool shift = true, string channelsName = "features", bool centered = true)
    {
        Guard.Features(channels, channelsName);
        Guard.SpatialSize(channels, spatialSize);
        Guard.Epsilon(epsilon);
        Channels = channels;
        SpatialSize = spatialSize;
        Features = channels * spatialSize;
        Epsilon = epsilon;
        IsAffine = affine;
        HasShift = shift;
        Centered = centered;
        _backwardStrategy = CheckedStrategy(backward ?? BackwardStrategy.ClosedForm, nameof(backward));
        _engine = new NormalizationEngine(new ColumnRunner());
        _scale = new double[channels];
        _scaleGradient = new double[channels];
        _shiftGradient = new double[channels];
        Gamma = Vector<double>.Build.Dense(channels);
        Beta = Vector<double>.Build.Dense(channels);
        GammaGradient = Vector<double>.Build.Dense(channels);
        BetaGradient = Vector<double>.Build.Dense(channels);
        Parameters = (affine, shift) switch
        {
            (false, _) => [],
            (true, false) => [new LayerParameter("gamma", Gamma, GammaGradient)],
            (true, true) => [new LayerParameter("gamma", Gamma, GammaGradient), new LayerParameter("beta", Beta, BetaGradient)],
        };
        ResetParameters();
    }

    /// <inheritdoc/>
    /// <remarks>C·S: <see cref="Channels"/> times <see cref="SpatialSize"/>; for a layer without positions, the channels themselves.</remarks>
    public int Features { get; }

    /// <summary>Gets C, the number of channels: the length of γ, β and their gradients (and of the running statistics).</summary>
    public int Channels { get; }

    /// <summary>
    /// Gets S, the positions of each channel: a row holds C channels of S values each, channel-major, as
    /// <c>x.reshape(N, -1)</c> flattens PyTorch's (N, C, S). 1 for a layer over plain features.
    /// </summary>
    public int SpatialSize { get; }

    /// <summary>
    /// Gets whether γ (and β, where the type has it) are learnable parameters (PyTorch's <c>affine</c> and
    /// <c>elementwise_affine</c>). When false, <see cref="Parameters"/> is empty, γ stays 1 and β 0 (a Forward refuses
    /// them changed), and Backward leaves <see cref="GammaGradient"/> and <see cref="BetaGradient"/> at 0.
    /// </summary>
    public bool IsAffine { get; }

    /// <summary>Gets whether the layer type has a shift β; RMS norm has none, so its β stays 0.</summary>
    internal bool HasShift { get; }

    /// <inheritdoc/>
    public double Epsilon { get; private set; }

    /// <inheritdoc/>
    /// <remarks>True at start. Reading or setting it allocates nothing. Set it between steps.</remarks>
    public bool IsTraining { get; set; } = true;

    /// <summary>Gets or sets how Backward computes the gradients. <see cref="BackwardStrategy.ClosedForm"/> by default.</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    /// <exception cref="ArgumentException">The strategy's <see cref="BackwardStrategy.SumCount"/> is below 2.</exception>
    /// <remarks>Strategies are stateless and may be shared by any number of layers.</remarks>
    public BackwardStrategy BackwardStrategy
    {
        get => _backwardStrategy;
        set => _backwardStrategy = CheckedStrategy(value, nameof(value));
    }

    /// <summary>Gets γ, the per-channel scale, 1 at start. The layer owns it; an optimizer updates it in place.</summary>
    /// <remarks>The same vector for the layer's lifetime; reading the property allocates nothing. Fixed at 1 when <see cref="IsAffine"/> is false.</remarks>
    public Vector<double> Gamma { get; }

    /// <summary>Gets β, the per-channel shift, 0 at start. The layer owns it; an optimizer updates it in place.</summary>
    /// <remarks>Fixed at 0 when <see cref="IsAffine"/> is false, and for RMS norm, which has no shift.</remarks>
    public Vector<double> Beta { get; }

    /// <summary>Gets dL/dγ, overwritten by each Backward; 0 before the first.</summary>
    public Vector<double> GammaGradient { get; }

    /// <summary>Gets dL/dβ = Σᵢ dyᵢ, overwritten by each Backward; 0 before the first.</summary>
    public Vector<double> BetaGradient { get; }

    /// <summary>
    /// Gets γ and β with their gradients, as named pairs: ("gamma", Gamma, GammaGradient) and ("beta", Beta, BetaGradient);
    /// only γ for RMS norm, and none when <see cref="IsAffine"/> is false.
    /// </summary>
    /// <remarks>The list and its vectors are the layer's own and never change identity; reading it allocates nothing.</remarks>
    public IReadOnlyList<LayerParameter> Parameters { get; }

    /// <summary>Gets what the last Forward kept for Backward; null before the first Forward and after an import.</summary>
    /// <remarks>Allocates nothing. The layer alternates between two cache objects of the same shape: a cache you hold keeps its values through the next Forward and is overwritten by the one after.</remarks>
    public NormalizationCache? Cache => _cache;

    /// <summary>
    /// Gets or sets the most threads one Forward or Backward over column segments may use; 1 keeps every step on the
    /// calling thread. The default is <see cref="Environment.ProcessorCount"/>. Whatever the setting, a batch with fewer
    /// than 2·32768 elements runs on the calling thread, and no thread gets fewer than 32768. Row groups (layer and group
    /// norm) run on the calling thread.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 1.</exception>
    public int MaxDegreeOfParallelism
    {
        get => _engine.Runner.MaxDegreeOfParallelism;
        set
        {
            if (value < 1)
            {
                throw new ArgumentOutOfRangeException(nameof(value), value, "At least one thread is needed.");
            }

            _engine.Runner.MaxDegreeOfParallelism = value;
        }
    }

    /// <summary>The engine, for the layer types' statistics.</summary>
    private protected NormalizationEngine Engine => _engine;

    /// <summary>Sets γ to 1 and β to 0.</summary>
    /// <remarks>In place; allocates nothing.</remarks>
    public void ResetParameters()
    {
        using var call = new Call(this);
        DenseColumns.Data(Gamma).Fill(1.0);
        DenseColumns.Data(Beta).Clear();
    }

    /// <summary>Normalizes a mini-batch and returns y in a new N×D matrix.</summary>
    /// <param name="input">x, N×D.</param>
    /// <returns>y, a new dense N×D matrix.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    /// <exception cref="ArgumentException">The column count is not <see cref="Features"/>, the layer type's row rule is
    /// broken, or a segment holds NaN or infinity or overflows its statistics (the message names it).</exception>
    /// <remarks>Allocates the result, and the cache when the batch shape changes.</remarks>
    public Matrix<double> Forward(Matrix<double> input) => ForwardNew(input);

    /// <summary>Normalizes a mini-batch and returns y in a new N×D matrix.</summary>
    /// <param name="input">x, N×D.</param>
    /// <returns>y, a new dense N×D matrix.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Forward(Matrix{double})"/>, or y overflows the range of float (the message names the column).</exception>
    /// <remarks>
    /// Single precision: the statistics are computed in double from the exact values of <paramref name="input"/>, and
    /// x̂ and y in double, each rounded to float once as it is stored. The cache holds x̂ in float; γ, β and the running
    /// statistics stay double. Allocates the result, and the cache when the batch shape changes.
    /// </remarks>
    public Matrix<float> Forward(Matrix<float> input) => ForwardNew(input);

    /// <summary>Normalizes a mini-batch into <paramref name="output"/>.</summary>
    /// <param name="input">x, N×D.</param>
    /// <param name="output">Receives y; N×D. It may be <paramref name="input"/> itself. If a non-finite segment makes the
    /// call throw, parts of it may already have been written (the layer's own state is untouched).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Forward(Matrix{double})"/>, or <paramref name="output"/>'s shape differs from <paramref name="input"/>'s.</exception>
    /// <remarks>Allocates nothing when both matrices are dense and the shape is that of the previous Forward.</remarks>
    public void Forward(Matrix<double> input, Matrix<double> output) => ForwardInto(input, output);

    /// <summary>Normalizes a mini-batch of floats into <paramref name="output"/>, as <see cref="Forward(Matrix{float})"/>.</summary>
    /// <param name="input">x, N×D.</param>
    /// <param name="output">Receives y; N×D. It may be <paramref name="input"/> itself, and parts of it may have been
    /// written when the call throws (the layer's own state is untouched).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Forward(Matrix{float})"/>, or <paramref name="output"/>'s shape differs from <paramref name="input"/>'s.</exception>
    /// <remarks>Allocates nothing when both matrices are dense and the shape and precision are those of the previous Forward.</remarks>
    public void Forward(Matrix<float> input, Matrix<float> output) => ForwardInto(input, output);

    /// <summary>Back-propagates dL/dy through the last Forward and returns dL/dx in a new matrix.</summary>
    /// <param name="outputGradient">dL/dy, of the shape of the last Forward's input.</param>
    /// <returns>dL/dx, a new dense N×D matrix. <see cref="GammaGradient"/> and <see cref="BetaGradient"/> are overwritten.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="outputGradient"/> is null.</exception>
    /// <exception cref="ArgumentException">The shape differs from the last Forward's, or the last Forward was over floats,
    /// or a column holds NaN or infinity or overflows Σdy or Σdy·x̂ (the message names it).</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    public Matrix<double> Backward(Matrix<double> outputGradient) => BackwardNew(outputGradient);

    /// <summary>Back-propagates dL/dy through the last Forward, which was over floats, and returns dL/dx in a new matrix.</summary>
    /// <param name="outputGradient">dL/dy, of the shape of the last Forward's input.</param>
    /// <returns>dL/dx, a new dense N×D matrix of floats. <see cref="GammaGradient"/> and <see cref="BetaGradient"/> (doubles) are overwritten.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="outputGradient"/> is null.</exception>
    /// <exception cref="ArgumentException">The shape differs from the last Forward's, or the last Forward was over doubles,
    /// or a column holds NaN or infinity, overflows Σdy or Σdy·x̂, or its dx overflows the range of float (the message names it).</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    /// <remarks>Every sum (Σdy, Σdy·x̂, and the strategy's own) is taken in double, and dx rounded to float once. The
    /// closed form reads the floats in place; any other strategy gets the step widened to double (exactly).</remarks>
    public Matrix<float> Backward(Matrix<float> outputGradient) => BackwardNew(outputGradient);

    /// <summary>Back-propagates dL/dy through the last Forward, writing dL/dx into <paramref name="inputGradient"/>.</summary>
    /// <param name="outputGradient">dL/dy, of the shape of the last Forward's input.</param>
    /// <param name="inputGradient">Receives dL/dx; same shape. It may be <paramref name="outputGradient"/> itself.
    /// If an exception is thrown for a non-finite column, its contents are unspecified (the layer's own state is untouched).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Backward(Matrix{double})"/>, or <paramref name="inputGradient"/> has another shape.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    /// <remarks>Allocates nothing when both matrices are dense.</remarks>
    public void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient) => BackwardInto(outputGradient, inputGradient);

    /// <summary>Back-propagates dL/dy of floats through the last Forward, writing dL/dx into <paramref name="inputGradient"/>, as <see cref="Backward(Matrix{float})"/>.</summary>
    /// <param name="outputGradient">dL/dy, of the shape of the last Forward's input.</param>
    /// <param name="inputGradient">Receives dL/dx; same shape. It may be <paramref name="outputGradient"/> itself, and its
    /// contents are unspecified when the call throws (the layer's own state is untouched).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">As for <see cref="Backward(Matrix{float})"/>, or <paramref name="inputGradient"/> has another shape.</exception>
    /// <exception cref="InvalidOperationException">No Forward has run yet.</exception>
    /// <remarks>Allocates nothing when both matrices are dense and the closed form is the strategy.</remarks>
    public void Backward(Matrix<float> outputGradient, Matrix<float> inputGradient) => BackwardInto(outputGradient, inputGradient);

    /// <summary>Writes the layer's state as JSON: its type, a format version, its settings, γ, β and (where it has them) the running statistics.</summary>
    /// <returns>The JSON text.</returns>
    /// <remarks>Doubles are written in their shortest round-trip form, so an import restores them bit for bit. Gradients,
    /// the cache and the mode are not saved: they belong to a step, not to the layer. Allocates the text.</remarks>
    public string ExportState() => LayerState.Export(this);

    /// <summary>Restores a state written by <see cref="ExportState"/> of a layer of this type and feature count.</summary>
    /// <param name="json">The JSON text.</param>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">The text is not valid JSON (for example truncated), is of another layer type or
    /// version, lacks a field, or holds a non-finite or out-of-range value. The message names the problem.</exception>
    /// <exception cref="ArgumentException">The state is for another shape or setting than this layer: features or channels,
    /// positions per channel, groups, affine or not, running statistics or not.</exception>
    /// <remarks>Everything is checked before anything is written, so a failed import leaves the layer untouched. A
    /// successful one drops the cache, which came from the old parameters; gradients and the mode are left as they are.</remarks>
    public void ImportState(string json)
    {
        using var call = new Call(this);
        Guard.NotNull(json, nameof(json));
        Action apply = PrepareImport(LayerState.Parse(json, StateFormat), nameof(json));
        apply();
    }

    /// <summary>Creates a layer of whatever type a state written by <see cref="ExportState"/> holds.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the closed-form backward strategy, of the saved type.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="ImportState"/>, or the type is not one of this library's layers.</exception>
    public static NormalizationLayer FromState(string json) => LayerState.Create(json);

    /// <summary>Describes the layer: its type, features, mode and backward strategy.</summary>
    /// <returns>For example "BatchNormLayer(features: 128, training, strategy: closed)", or for channels of several
    /// positions "BatchNormLayer(channels: 16, positions: 64, training, strategy: closed)"; settings that differ from the
    /// defaults (ghost batches, groups, not affine, no running statistics) are listed after the shape.</returns>
    public override string ToString()
        => string.Create(
            CultureInfo.InvariantCulture,
            $"{GetType().Name}({(SpatialSize == 1 ? $"features: {Features}" : $"channels: {Channels}, positions: {SpatialSize}")}{Describe()}, {(IsTraining ? "training" : "inference")}, strategy: {BackwardStrategy.Name})");

    /// <summary>The format name this layer type saves under, such as "BatchNorm.BatchNormLayer".</summary>
    private string StateFormat => LayerState.FormatOf(GetType());

    /// <summary>What <see cref="ToString"/> adds after the feature count, such as ", groups: 4".</summary>
    private protected virtual string Describe() => IsAffine ? string.Empty : ", not affine";

    /// <summary>How a batch of <paramref name="rows"/> rows is cut into segments in the current mode.</summary>
    private protected abstract SegmentLayout Layout(int rows);

    /// <summary>Why an input whose column count is right breaks the layer type's rules (for example a minimum row count), or null.</summary>
    private protected virtual string? RowRuleBroken(int rows, int columns) => null;

    /// <summary>
    /// Computes the statistics, x̂ and y of a step into <paramref name="next"/> and <paramref name="y"/>, with the engine:
    /// by default each segment with its own statistics. Returns what went wrong, if anything.
    /// </summary>
    private protected virtual StepFault Normalize(Matrix<double> x, Matrix<double> y, NormalizationCache next) => NormalizeDefault(x, y, next);

    /// <inheritdoc cref="Normalize(Matrix{double}, Matrix{double}, NormalizationCache)"/>
    private protected virtual StepFault Normalize(Matrix<float> x, Matrix<float> y, NormalizationCache next) => NormalizeDefault(x, y, next);

    /// <summary>What <see cref="Normalize(Matrix{double}, Matrix{double}, NormalizationCache)"/> does unless a layer type overrides it.</summary>
    private protected StepFault NormalizeDefault<T>(Matrix<T> x, Matrix<T> y, NormalizationCache next)
        where T : unmanaged, IEquatable<T>, IFormattable
        => next.Layout.ByRow
            ? NormalizeRows(x, y, next)
            : _engine.ForwardColumns(x, y, next, Gamma, Beta, affine: null, given: false);

    /// <summary>A row-group Forward: each group of each row with its own statistics, γ and β spread over each channel's positions.</summary>
    private protected StepFault NormalizeRows<T>(Matrix<T> x, Matrix<T> y, NormalizationCache next)
        where T : unmanaged, IEquatable<T>, IFormattable
        => _engine.ForwardRows(x, y, next, PerColumn(Gamma, ref _columnGamma), PerColumn(Beta, ref _columnBeta));

    /// <summary>Whether the layer subtracts the mean; RMS norm does not.</summary>
    private protected bool Centered { get; }

    /// <summary>A per-channel vector as one value per column: the vector itself when S = 1, else spread into scratch.</summary>
    private ReadOnlySpan<double> PerColumn(Vector<double> perChannel, ref double[]? scratch)
        => SpatialSize == 1 ? DenseColumns.Data(perChannel) : SpreadOverPositions(DenseColumns.Data(perChannel), ref scratch);

    /// <summary>Each channel's value repeated over its S positions, into <paramref name="scratch"/> (C·S values, allocated once).</summary>
    private double[] SpreadOverPositions(ReadOnlySpan<double> perChannel, ref double[]? scratch)
    {
        scratch ??= new double[Features];
        for (int c = 0; c < Channels; c++)
        {
            scratch.AsSpan(c * SpatialSize, SpatialSize).Fill(perChannel[c]);
        }

        return scratch;
    }

    /// <summary>
    /// Called when Forward (<paramref name="backwardOf"/> null) or the Backward of a cache rejects its arguments, before the
    /// exception leaves: a synchronized layer takes part in the exchange its peers wait in.
    /// </summary>
    private protected virtual void OnStepRejected(NormalizationCache? backwardOf)
    {
    }

    /// <summary>
    /// Called once a Forward's output is computed and before anything is committed: the place to work out (and check)
    /// what <see cref="OnForwardCommitted"/> will write.
    /// </summary>
    private protected virtual StepFault PrepareCommit(NormalizationCache next) => StepFault.None;

    /// <summary>Called once a Forward has succeeded and its cache is current: the place to update running statistics.</summary>
    private protected virtual void OnForwardCommitted(NormalizationCache cache)
    {
    }

    /// <summary>Fills γ′ per feature, the scale the Forward applied to x̂; γ for most layers.</summary>
    private protected virtual void BackwardScale(Span<double> scale) => DenseColumns.Data(Gamma).CopyTo(scale);

    /// <summary>
    /// Runs the backward pass with the engine: dL/dx, and dL/dγ′ and dL/dβ′ of the affine map y = γ′·x̂ + β′ that the
    /// Forward applied. Returns what went wrong, if anything.
    /// </summary>
    private protected virtual StepFault Differentiate(NormalizationCache cache, double[] scale, Matrix<double> dy, Matrix<double> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        => DifferentiateDefault(cache, scale, dy, dx, scaleGradient, shiftGradient);

    /// <inheritdoc cref="Differentiate(NormalizationCache, double[], Matrix{double}, Matrix{double}, Span{double}, Span{double})"/>
    private protected virtual StepFault Differentiate(NormalizationCache cache, double[] scale, Matrix<float> dy, Matrix<float> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        => DifferentiateDefault(cache, scale, dy, dx, scaleGradient, shiftGradient);

    /// <summary>What <see cref="Differentiate(NormalizationCache, double[], Matrix{double}, Matrix{double}, Span{double}, Span{double})"/> does unless a layer type overrides it.</summary>
    private protected StepFault DifferentiateDefault<T>(NormalizationCache cache, double[] scale, Matrix<T> dy, Matrix<T> dx, Span<double> scaleGradient, Span<double> shiftGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        if (!cache.Layout.ByRow || SpatialSize == 1)
        {
            return _engine.Backward(_backwardStrategy, cache, scale, dy, dx, scaleGradient, shiftGradient);
        }

        // Row groups over channels of several positions: the engine works per column, so γ′ is spread over each channel's
        // positions, and the gradients of a channel's positions are added up.
        _columnScaleGradient ??= new double[Features];
        _columnShiftGradient ??= new double[Features];
        double[] columnScale = SpreadOverPositions(scale, ref _columnScale);
        StepFault fault = _engine.Backward(_backwardStrategy, cache, columnScale, dy, dx, _columnScaleGradient, _columnShiftGradient);
        for (int c = 0; c < Channels; c++)
        {
            double dScale = 0, dShift = 0;
            for (int s = c * SpatialSize; s < (c + 1) * SpatialSize; s++)
            {
                dScale += _columnScaleGradient[s];
                dShift += _columnShiftGradient[s];
            }

            scaleGradient[c] = dScale;
            shiftGradient[c] = dShift;
            if (!fault.Failed && !(double.IsFinite(dScale) && double.IsFinite(dShift)))
            {
                // Every column's sums were finite, but a channel's total overflows.
                fault = NormalizationEngine.SumsFault(c * SpatialSize, SpatialSize, cache, dy);
            }
        }

        return fault;
    }

    /// <summary>Turns dL/dγ′ and dL/dβ′ into dL/dγ and dL/dβ, in place; the identity where γ′ = γ and β′ = β.</summary>
    private protected virtual void ToParameterGradients(Span<double> scaleGradient, Span<double> shiftGradient)
    {
    }

    /// <summary>Says how a parsed state does not fit this layer's shape (feature count, and whatever the type adds), or null when it fits.</summary>
    internal virtual string? StateShapeMismatch(LayerState state)
        => state.Features != Channels
            ? string.Create(CultureInfo.InvariantCulture, $"The saved state is for {state.Features} {(SpatialSize == 1 ? "features" : "channels")}, but this layer has {Channels}.")
            : state.SpatialSize != SpatialSize
            ? string.Create(CultureInfo.InvariantCulture, $"The saved state is for {state.SpatialSize} positions per channel, but this layer has {SpatialSize}.")
            : state.Affine != IsAffine
            ? $"The saved state is of a layer that is {(state.Affine ? "" : "not ")}affine, but this layer is {(IsAffine ? "" : "not ")}affine."
            : null;

    /// <summary>Writes the layer type's own saved fields (running statistics, settings) after the common ones.</summary>
    internal virtual void WriteStateFields(LayerState.Writer writer)
    {
    }

    /// <summary>
    /// Reads and checks the layer type's own fields of a state, writing nothing; returns what writes them into the
    /// layer, or null when the type has none. The import applies it only once every field has been read.
    /// </summary>
    internal virtual Action? ReadStateFields(LayerState state) => null;

    /// <summary>
    /// Checks a parsed state against this layer and reads the type's own fields, writing nothing; returns what writes the
    /// state into the layer and drops the cache. Every import goes through here, whatever format the state came in.
    /// </summary>
    /// <exception cref="ArgumentException">The state is for another shape (feature or group count).</exception>
    /// <exception cref="FormatException">A field of the type's own is missing or invalid.</exception>
    internal Action PrepareImport(LayerState state, string parameterName)
    {
        if (StateShapeMismatch(state) is string mismatch)
        {
            throw new ArgumentException(mismatch, parameterName);
        }

        Action? applyOwnFields = ReadStateFields(state);
        return () =>
        {
            state.ApplyCommon(this);
            applyOwnFields?.Invoke();
            _cache = null;
            _spareCache = null;
        };
    }

    /// <summary>Runs what <see cref="PrepareImport"/> returned, as one call on the layer.</summary>
    internal void CommitImport(Action apply)
    {
        using var call = new Call(this);
        apply();
    }

    /// <summary>Sets ε from an imported state.</summary>
    internal void SetEpsilon(double epsilon) => Epsilon = epsilon;

    private BackwardStrategy CheckedStrategy(BackwardStrategy strategy, string parameterName)
    {
        Guard.NotNull(strategy, parameterName);
        if (strategy.SumCount < BackwardStrategy.ParameterSums)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"The {strategy.Name} strategy reports {strategy.SumCount} sums per segment, but every strategy provides at least Σdy·x̂ and Σdy."),
                parameterName);
        }

        if (!Centered && !strategy.SupportsUncentered)
        {
            throw new ArgumentException(
                $"The {strategy.Name} strategy does not handle segments normalized without centering (its SupportsUncentered is false), which {GetType().Name} needs: its graph has no node μ.",
                parameterName);
        }

        return strategy;
    }

    private void CheckInput<T>(Matrix<T> input)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        Guard.NotNull(input, nameof(input));
        Guard.Columns(input, Features, nameof(input));
        if (RowRuleBroken(input.RowCount, input.ColumnCount) is string broken)
        {
            throw new ArgumentException(broken, nameof(input));
        }

        CheckFixedParameters();
    }

    /// <summary>γ of a layer that is not affine stays 1, and β of one without a learnable shift stays 0.</summary>
    /// <exception cref="ArgumentException">One was changed; the message names it (it is the layer's state, not the
    /// argument, that is wrong, but the step is refused the way bad arguments are, before anything is written).</exception>
    private void CheckFixedParameters()
    {
        if (!IsAffine && FirstOther(Gamma, 1.0) is int j)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"This {GetType().Name} is not affine: γ is fixed at 1, but gamma[{j}] = {Gamma[j]:R}."), "input");
        }

        if (!(IsAffine && HasShift) && FirstOther(Beta, 0.0) is int k)
        {
            string why = HasShift ? "is not affine" : "has no shift";
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"This {GetType().Name} {why}: β is fixed at 0, but beta[{k}] = {Beta[k]:R}."), "input");
        }

        static int? FirstOther(Vector<double> values, double fixedValue)
        {
            int at = DenseColumns.Data(values).IndexOfAnyExcept(fixedValue);
            return at < 0 ? null : at;
        }
    }

    /// <summary>
    /// Marks the layer busy for the length of a call, and throws if it already is: a layer is not thread-safe, and two
    /// threads inside it at once would corrupt its cache and scratch. One interlocked exchange per call, no lock.
    /// </summary>
    private protected readonly ref struct Call
    {
        private readonly NormalizationLayer _layer;

        public Call(NormalizationLayer layer)
        {
            if (Interlocked.CompareExchange(ref layer._busy, 1, 0) != 0)
            {
                throw new InvalidOperationException(
                    $"Two calls overlapped on one {layer.GetType().Name}: a layer is not thread-safe. Give each thread its own layer, or call it from one thread at a time.");
            }

            _layer = layer;
        }

        public void Dispose() => Volatile.Write(ref _layer._busy, 0);
    }

    private Matrix<T> ForwardNew<T>(Matrix<T> input)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        using var call = new Call(this);
        try
        {
            CheckInput(input);
        }
        catch (ArgumentException)
        {
            OnStepRejected(backwardOf: null);
            throw;
        }

        Matrix<T> output = Matrix<T>.Build.Dense(input.RowCount, input.ColumnCount);
        ForwardCore(input, output);
        return output;
    }

    private void ForwardInto<T>(Matrix<T> input, Matrix<T> output)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        using var call = new Call(this);
        try
        {
            CheckInput(input);
            Guard.NotNull(output, nameof(output));
            Guard.SameShape(output, input.RowCount, input.ColumnCount, nameof(output), nameof(input));
        }
        catch (ArgumentException)
        {
            OnStepRejected(backwardOf: null);
            throw;
        }

        ForwardCore(input, output);
    }

    private Matrix<T> BackwardNew<T>(Matrix<T> outputGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        using var call = new Call(this);
        NormalizationCache cache = _cache ?? throw NoForward();
        try
        {
            CheckOutputGradient(cache, outputGradient);
        }
        catch (ArgumentException)
        {
            OnStepRejected(cache);
            throw;
        }

        Matrix<T> inputGradient = Matrix<T>.Build.Dense(cache.BatchSize, cache.Features);
        BackwardCore(cache, outputGradient, inputGradient);
        return inputGradient;
    }

    private void BackwardInto<T>(Matrix<T> outputGradient, Matrix<T> inputGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        using var call = new Call(this);
        NormalizationCache cache = _cache ?? throw NoForward();
        try
        {
            CheckOutputGradient(cache, outputGradient);
            Guard.NotNull(inputGradient, nameof(inputGradient));
            Guard.SameShape(inputGradient, cache.BatchSize, cache.Features, nameof(inputGradient), nameof(outputGradient));
        }
        catch (ArgumentException)
        {
            OnStepRejected(cache);
            throw;
        }

        BackwardCore(cache, outputGradient, inputGradient);
    }

    private static InvalidOperationException NoForward() => new("Backward needs the cache of a Forward; call Forward first.");

    private static void CheckOutputGradient<T>(NormalizationCache cache, Matrix<T> outputGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.SameShape(outputGradient, cache.BatchSize, cache.Features, nameof(outputGradient), "the last Forward's input");
        if (!cache.Holds<T>())
        {
            (string forward, string backward) = cache.SinglePrecision ? ("float", "double") : ("double", "float");
            throw new ArgumentException(
                $"The last Forward was over Matrix<{forward}>, so its Backward takes Matrix<{forward}>, but outputGradient is a Matrix<{backward}>.", nameof(outputGradient));
        }
    }

    private void ForwardCore<T>(Matrix<T> input, Matrix<T> output)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        StepScratch<T> scratch = Scratch<T>();
        Matrix<T> x = DenseColumns.AsDense(input, ref scratch.Input);
        Matrix<T> y = DenseColumns.DenseTarget(output, ref scratch.Output);

        // The step is written into the spare cache; the current one stays as it was until the step has succeeded.
        SegmentLayout layout = Layout(input.RowCount);
        NormalizationCache next = _spareCache is { } spare && spare.Layout == layout && spare.Holds<T>() ? spare : NormalizationCache.Create<T>(layout);
        next.IsTraining = IsTraining;
        next.Epsilon = Epsilon;
        next.FrozenStatistics = false;
        next.Synchronized = false;
        next.SegmentValues = layout.SegmentRows * layout.SegmentColumns;
        next.SegmentOffset = 0;
        next.Centered = Centered;
        StepFault fault = typeof(T) == typeof(double)
            ? Normalize((Matrix<double>)(object)x, (Matrix<double>)(object)y, next)
            : Normalize((Matrix<float>)(object)x, (Matrix<float>)(object)y, next);
        _spareCache = next;
        if (!fault.Failed)
        {
            fault = PrepareCommit(next);
        }

        if (fault.Failed)
        {
            throw fault.ForwardException(layout, this, nameof(input), PrecisionName<T>());
        }

        DenseColumns.CopyBack(y, output);
        _spareCache = _cache;
        _cache = next;
        OnForwardCommitted(next);
    }

    private void BackwardCore<T>(NormalizationCache cache, Matrix<T> outputGradient, Matrix<T> inputGradient)
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        StepScratch<T> scratch = Scratch<T>();
        Matrix<T> dy = DenseColumns.AsDense(outputGradient, ref scratch.OutputGradient);
        Matrix<T> dx = DenseColumns.DenseTarget(inputGradient, ref scratch.InputGradient);
        BackwardScale(_scale);
        StepFault fault = typeof(T) == typeof(double)
            ? Differentiate(cache, _scale, (Matrix<double>)(object)dy, (Matrix<double>)(object)dx, _scaleGradient, _shiftGradient)
            : Differentiate(cache, _scale, (Matrix<float>)(object)dy, (Matrix<float>)(object)dx, _scaleGradient, _shiftGradient);
        if (fault.Failed)
        {
            throw fault.BackwardException(nameof(outputGradient), _backwardStrategy, PrecisionName<T>());
        }

        DenseColumns.CopyBack(dx, inputGradient);
        ToParameterGradients(_scaleGradient, _shiftGradient);
        if (IsAffine)
        {
            _scaleGradient.CopyTo(DenseColumns.Data(GammaGradient));
            if (HasShift)
            {
                _shiftGradient.CopyTo(DenseColumns.Data(BetaGradient));
            }
        }
    }

    /// <summary>How messages name the precision of element type T.</summary>
    private static string PrecisionName<T>() => typeof(T) == typeof(float) ? "float" : "double";

    /// <summary>The dense scratch matrices of this layer's steps in element type T.</summary>
    private StepScratch<T> Scratch<T>()
        where T : unmanaged, IEquatable<T>, IFormattable
        => typeof(T) == typeof(double) ? (StepScratch<T>)(object)_scratch : (StepScratch<T>)(object)(_singleScratch ??= new StepScratch<float>());

    /// <summary>Dense copies of arguments that are not dense, kept from step to step.</summary>
    private sealed class StepScratch<T>
        where T : unmanaged, IEquatable<T>, IFormattable
    {
        public Matrix<T>? Input;
        public Matrix<T>? Output;
        public Matrix<T>? OutputGradient;
        public Matrix<T>? InputGradient;
    }
}
