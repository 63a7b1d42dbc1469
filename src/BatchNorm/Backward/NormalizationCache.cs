using System;
using System.Globalization;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// What a layer's Forward keeps for its Backward: the normalized input x̂, the statistics μ and σ² of every segment,
/// 1/√(σ² + ε), the mode, and how the batch was cut into segments.
/// </summary>
/// <remarks>
/// <para>
/// A <b>segment</b> is a run of values normalized together with one μ and σ²: a column (batch norm), a block of rows of
/// a column (ghost batches), or a group of adjacent columns of one row (layer and group norm). The batch is a grid of
/// <see cref="RowBlocks"/> × <see cref="ColumnBlocks"/> segments of <see cref="SegmentRows"/> × <see cref="SegmentColumns"/>
/// values each, and the statistics of segment (rowBlock, columnBlock) are at index columnBlock·RowBlocks + rowBlock of
/// <see cref="Mean"/>, <see cref="Variance"/> and <see cref="InverseStandardDeviation"/>; <see cref="SegmentOf"/> computes it.
/// For batch norm that is one value per feature, for ghost batches feature j, block b is at j·B + b, and for group norm
/// group g of row i is at g·N + i.
/// </para>
/// <para>
/// After a training Forward of batch norm, μ and σ² are the batch's (biased, divided by the count). After an inference
/// Forward they are copies of the running statistics and <see cref="FrozenStatistics"/> is true, so Backward treats them
/// as constants. Layer and group norm always use the statistics of the input.
/// </para>
/// <para>
/// Everything is read-only from outside. While the batch shape stays the same a layer alternates between two cache
/// objects, writing the next step into the one it is not currently exposing and switching only once the step has
/// succeeded. So a cache you hold keeps its values through the next Forward and is overwritten by the one after; copy
/// them (for example with <see cref="NormalizedInputToMatrix"/>) to keep them. Reading a cache allocates nothing except
/// <see cref="NormalizedInputToMatrix"/>, and any number of threads may read it while its layer is not running a Forward.
/// </para>
/// </remarks>
public sealed class NormalizationCache
{
    private readonly Matrix<double>? _normalized;
    private readonly Matrix<float>? _normalizedSingle;
    private readonly double[] _mean, _variance, _inverseStd;

    private NormalizationCache(SegmentLayout layout, bool singlePrecision)
    {
        Layout = layout;
        if (singlePrecision)
        {
            _normalizedSingle = Matrix<float>.Build.Dense(layout.Rows, layout.Columns);
        }
        else
        {
            _normalized = Matrix<double>.Build.Dense(layout.Rows, layout.Columns);
        }

        _mean = new double[layout.Count];
        _variance = new double[layout.Count];
        _inverseStd = new double[layout.Count];
    }

    /// <summary>Gets N, the number of rows of the input the cache was made from.</summary>
    public int BatchSize => Layout.Rows;

    /// <summary>Gets D, the number of features (columns).</summary>
    public int Features => Layout.Columns;

    /// <summary>Gets whether the layer was in training mode (<see cref="INormalizationLayer.IsTraining"/>) when it ran the Forward.</summary>
    public bool IsTraining { get; internal set; }

    /// <summary>
    /// Gets whether μ and σ² were the layer's running statistics (an inference Forward of batch norm or renorm): constants
    /// that do not depend on the input, so Backward is the frozen-statistics gradient dx = dy·γ/√(σ² + ε). False when
    /// the statistics were computed from the input, and Backward goes through μ and σ².
    /// </summary>
    public bool FrozenStatistics { get; internal set; }

    /// <summary>
    /// Gets whether the Forward subtracted the mean: true for every layer but <see cref="RMSNormLayer"/>, whose
    /// <see cref="Mean"/> is 0 and whose <see cref="Variance"/> holds the mean square, ms = mean(x²).
    /// </summary>
    public bool Centered { get; internal set; } = true;

    /// <summary>Gets the ε the layer normalized with.</summary>
    public double Epsilon { get; internal set; }

    /// <summary>Gets the number of segments down a column: 1 for batch norm, N/G with ghost batches of G rows, N for layer and group norm.</summary>
    public int RowBlocks => Layout.RowBlocks;

    /// <summary>Gets the number of segments across a row: D for batch norm, G for group norm, 1 for layer norm.</summary>
    public int ColumnBlocks => Layout.ColumnBlocks;

    /// <summary>Gets the number of rows of one segment.</summary>
    public int SegmentRows => Layout.SegmentRows;

    /// <summary>Gets the number of columns of one segment.</summary>
    public int SegmentColumns => Layout.SegmentColumns;

    /// <summary>Gets the number of segments, <see cref="RowBlocks"/> × <see cref="ColumnBlocks"/>: the length of <see cref="Mean"/>.</summary>
    public int SegmentCount => Layout.Count;

    /// <summary>Gets μ per segment: the mean of the segment's values in training, the running mean in inference.</summary>
    public ReadOnlySpan<double> Mean => _mean;

    /// <summary>Gets σ² per segment: the biased variance of the segment's values in training, the running variance in inference.</summary>
    public ReadOnlySpan<double> Variance => _variance;

    /// <summary>Gets 1/√(σ² + ε) per segment.</summary>
    public ReadOnlySpan<double> InverseStandardDeviation => _inverseStd;

    /// <summary>
    /// Gets whether the Forward was over <c>Matrix&lt;float&gt;</c>: then x̂ is held in float (<see cref="NormalizedInputSingle"/>),
    /// while μ, σ² and 1/√(σ² + ε) are doubles as always.
    /// </summary>
    public bool SinglePrecision => _normalizedSingle is not null;

    /// <summary>Gets the whole of x̂ in column-major order: feature j occupies elements [j·N, (j+1)·N).</summary>
    /// <exception cref="InvalidOperationException">The cache is of a single-precision Forward (<see cref="SinglePrecision"/>): read <see cref="NormalizedInputSingle"/>.</exception>
    public ReadOnlySpan<double> NormalizedInput => DenseColumns.Data(_normalized ?? throw WrongPrecision("double", nameof(NormalizedInputSingle)));

    /// <summary>Gets the whole of x̂ of a single-precision Forward, in column-major order as <see cref="NormalizedInput"/>.</summary>
    /// <exception cref="InvalidOperationException">The cache is of a double-precision Forward: read <see cref="NormalizedInput"/>.</exception>
    public ReadOnlySpan<float> NormalizedInputSingle => DenseColumns.Data(_normalizedSingle ?? throw WrongPrecision("float", nameof(NormalizedInput)));

    /// <summary>The layout the Forward cut the batch into.</summary>
    internal SegmentLayout Layout { get; }

    /// <summary>
    /// The number of values each segment's statistics were taken over: the segment's own, or with synchronized workers
    /// those of all workers together.
    /// </summary>
    internal int SegmentValues { get; set; }

    /// <summary>With synchronized workers, the index of this worker's first row among all workers' rows; otherwise 0.</summary>
    internal int SegmentOffset { get; set; }

    /// <summary>
    /// Gets whether the Forward was synchronized across workers (<see cref="BatchNormLayer.StatisticsExchange"/>), so that its
    /// Backward exchanges its sums too and the layer's γ and β gradients are those of all workers' rows together; after any
    /// other Forward they are this worker's alone.
    /// </summary>
    public bool Synchronized { get; internal set; }

    internal Span<double> WritableMean => _mean;

    internal Span<double> WritableVariance => _variance;

    internal Span<double> WritableInverseStd => _inverseStd;

    /// <summary>Gets the index of the segment holding element (row, column) in <see cref="Mean"/>, <see cref="Variance"/> and <see cref="InverseStandardDeviation"/>.</summary>
    /// <param name="row">The row, 0 ≤ row &lt; N.</param>
    /// <param name="column">The column, 0 ≤ column &lt; D.</param>
    /// <returns>columnBlock·RowBlocks + rowBlock.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The row or the column lies outside the batch.</exception>
    public int SegmentOf(int row, int column)
    {
        if ((uint)row >= (uint)BatchSize)
        {
            throw new ArgumentOutOfRangeException(nameof(row), row, string.Create(CultureInfo.InvariantCulture, $"The row must lie in [0, {BatchSize})."));
        }

        if ((uint)column >= (uint)Features)
        {
            throw new ArgumentOutOfRangeException(nameof(column), column, string.Create(CultureInfo.InvariantCulture, $"The column must lie in [0, {Features})."));
        }

        return Layout.IndexOf(row, column);
    }

    /// <summary>Gets x̂ for one feature: the normalized values of column <paramref name="feature"/>, one per row.</summary>
    /// <param name="feature">The column index, 0 ≤ feature &lt; <see cref="Features"/>.</param>
    /// <returns>A read-only view of N values.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="feature"/> is outside [0, D).</exception>
    /// <exception cref="InvalidOperationException">The cache is of a single-precision Forward (read <see cref="NormalizedInputSingle"/>).</exception>
    public ReadOnlySpan<double> NormalizedColumn(int feature)
    {
        if ((uint)feature >= (uint)Features)
        {
            throw new ArgumentOutOfRangeException(nameof(feature), feature, string.Create(CultureInfo.InvariantCulture, $"The feature index must lie in [0, {Features})."));
        }

        return NormalizedInput.Slice(feature * BatchSize, BatchSize);
    }

    /// <summary>Copies x̂ into a new N×D matrix, for inspection or for a strategy written with MathNet operators.</summary>
    /// <returns>A new dense matrix that the caller owns; of a single-precision Forward, x̂ widened to double (exactly).</returns>
    public Matrix<double> NormalizedInputToMatrix() => _normalized?.Clone() ?? _normalizedSingle!.Map(value => (double)value);

    /// <summary>A cache whose x̂ is held in element type T.</summary>
    internal static NormalizationCache Create<T>(SegmentLayout layout)
        where T : unmanaged
        => new(layout, typeof(T) == typeof(float));

    /// <summary>
    /// This cache with x̂ widened to double (exactly), in <paramref name="scratch"/>, which is made or reused: for a
    /// strategy that reads only doubles (see <see cref="BackwardStrategy"/>), after a single-precision Forward.
    /// </summary>
    internal NormalizationCache WidenInto(ref NormalizationCache? scratch)
    {
        if (scratch is null || scratch.Layout != Layout)
        {
            scratch = new NormalizationCache(Layout, singlePrecision: false);
        }

        // The statistics a strategy reads (σ² and 1/√(σ² + ε)); the mean enters no backward pass.
        Elements<float>.Widen(NormalizedInputSingle, DenseColumns.Data(scratch._normalized!));
        _variance.CopyTo(scratch._variance);
        _inverseStd.CopyTo(scratch._inverseStd);
        (scratch.IsTraining, scratch.FrozenStatistics, scratch.Centered, scratch.Epsilon) = (IsTraining, FrozenStatistics, Centered, Epsilon);
        (scratch.SegmentValues, scratch.SegmentOffset, scratch.Synchronized) = (SegmentValues, SegmentOffset, Synchronized);
        return scratch;
    }

    /// <summary>Gets whether x̂ is held in element type T.</summary>
    internal bool Holds<T>() => typeof(T) == typeof(float) ? _normalizedSingle is not null : _normalized is not null;

    /// <summary>The dense data behind x̂ in its element type T; for the engine, which never writes to it outside a Forward.</summary>
    internal Span<T> Normalized<T>()
        where T : unmanaged, IEquatable<T>, IFormattable
        => DenseColumns.Data((Matrix<T>)(object)((object?)_normalizedSingle ?? _normalized)!);

    /// <summary>x̂ of column <paramref name="column"/> in element type T.</summary>
    internal Span<T> NormalizedColumnOf<T>(int column)
        where T : unmanaged, IEquatable<T>, IFormattable
        => Normalized<T>().Slice(column * BatchSize, BatchSize);

    private InvalidOperationException WrongPrecision(string asked, string instead)
        => new($"This cache is of a {(SinglePrecision ? "single" : "double")}-precision Forward, so x̂ is not held in {asked}: read {instead}, or NormalizedInputToMatrix().");
}
