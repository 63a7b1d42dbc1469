using System;
using System.Globalization;

namespace BatchNorm;

/// <summary>Why a step could not produce a finite, correct result.</summary>
internal enum FaultCause
{
    /// <summary>Nothing went wrong.</summary>
    None,

    /// <summary>A segment's input holds NaN or ±∞, or its statistics overflow.</summary>
    Statistics,

    /// <summary>γ or β (or what the layer makes of them) is not finite, so y is not.</summary>
    Parameters,

    /// <summary>y = γ·x̂ + β overflows although x̂, γ and β are finite.</summary>
    Output,

    /// <summary>The running mean is not finite, or the running variance is negative or not finite (they are public vectors).</summary>
    RunningStatistics,

    /// <summary>dy holds NaN or ±∞, or Σdy or Σdy·x̂ overflows.</summary>
    OutputGradient,

    /// <summary>The cached x̂ is not finite: the last Forward (in inference) passed NaN or ±∞ through.</summary>
    Cache,

    /// <summary>dx overflows although dy and its sums are finite.</summary>
    InputGradient,
}

/// <summary>
/// What went wrong in a step, and where: the engine's numbering of a segment (Forward) or a feature (Backward), and the
/// cause. The messages live here, so that every layer and geometry says the same thing the same way.
/// </summary>
internal readonly record struct StepFault(int Index, FaultCause Cause)
{
    /// <summary>Gets a step that went well.</summary>
    public static StepFault None => new(-1, FaultCause.None);

    /// <summary>Gets whether the step failed.</summary>
    public bool Failed => Cause != FaultCause.None;

    /// <summary>Packs a fault into one int whose order is the column's, for the lock-free minimum the threads keep.</summary>
    public int Pack() => Failed ? (Index * 16) + (int)Cause : int.MaxValue;

    /// <summary>Unpacks <see cref="Pack"/>.</summary>
    public static StepFault Unpack(int packed) => packed == int.MaxValue ? None : new StepFault(packed / 16, (FaultCause)(packed % 16));

    /// <summary>The earlier of two faults by index, the first cause at equal index.</summary>
    public static StepFault First(StepFault a, StepFault b) => Unpack(Math.Min(a.Pack(), b.Pack()));

    /// <summary>The exception for a failed Forward: segments are columns, or for row layouts group·N + row.</summary>
    /// <param name="layout">How the step was cut into segments.</param>
    /// <param name="layer">The layer, whose γ, β and running statistics the message quotes.</param>
    /// <param name="parameterName">The input's parameter name.</param>
    /// <param name="precision">"double" or "float": the precision of the step's data.</param>
    public Exception ForwardException(SegmentLayout layout, NormalizationLayer layer, string parameterName, string precision = "double")
    {
        // Column layouts number their column blocks: a feature, or a channel of S columns (positions). Row layouts number
        // rows for statistics and columns for γ and β, which belong to the column's channel.
        int positions = layer.SpatialSize, channel = layout.ByRow ? Index / positions : Index;
        string unit = positions == 1 ? "Feature" : "Channel";
        string column = layout.ByRow || positions == 1
            ? string.Create(CultureInfo.InvariantCulture, $"Column {Index} of {parameterName}")
            : string.Create(CultureInfo.InvariantCulture, $"Channel {Index} (columns {Index * positions}–{((Index + 1) * positions) - 1}) of {parameterName}");
        string where = layout.ByRow ? string.Create(CultureInfo.InvariantCulture, $"Row {Index % layout.RowBlocks} of {parameterName}") : column;
        return Cause switch
        {
            FaultCause.Statistics when layout.ByRow => new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"{where} cannot be normalized: group {Index / layout.RowBlocks} holds NaN or infinity, or values so large that its statistics overflow."), parameterName),
            FaultCause.Statistics => new ArgumentException(
                $"{where} cannot be normalized: it holds NaN or infinity, or values so large that its statistics overflow.", parameterName),
            FaultCause.Parameters => new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"{unit} {channel} cannot be normalized: γ[{channel}] = {layer.Gamma[channel]:R} and β[{channel}] = {layer.Beta[channel]:R} must be finite, and so must what the layer makes of them.")),
            FaultCause.Output => new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"{column} cannot be normalized: y = γ·x̂ + β{(precision == "double" ? "" : ", or x̂ itself,")} overflows the range of {precision} (γ[{channel}] = {layer.Gamma[channel]:R}, β[{channel}] = {layer.Beta[channel]:R})."), parameterName),
            FaultCause.RunningStatistics when layer is RunningStatisticsLayer running => new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"{unit} {channel} cannot be normalized: RunningMean[{channel}] = {running.RunningMean[channel]:R} and RunningVariance[{channel}] = {running.RunningVariance[channel]:R}, but the running mean must be finite and the running variance finite and at least 0.")),
            _ => new InvalidOperationException($"{where}: {Cause}."),
        };
    }

    /// <summary>The exception for a failed Backward: the index is a feature.</summary>
    /// <param name="parameterName">The output gradient's parameter name.</param>
    /// <param name="strategy">The strategy that ran.</param>
    /// <param name="precision">"double" or "float": the precision of the step's data.</param>
    public Exception BackwardException(string parameterName, BackwardStrategy strategy, string precision = "double") => Cause switch
    {
        FaultCause.OutputGradient => Guard.NotFinite(parameterName, Index, "cannot be back-propagated"),
        FaultCause.Cache => new InvalidOperationException(
            string.Create(CultureInfo.InvariantCulture, $"Column {Index} of the last Forward's normalized values is not finite (that Forward's input held NaN or infinity there, which inference passes through), so nothing can be back-propagated through it; the output gradient is fine.")),
        FaultCause.InputGradient => new ArgumentException(
            string.Create(CultureInfo.InvariantCulture, $"Column {Index} of {parameterName} cannot be back-propagated: dx, or an intermediate of the {strategy.Name} strategy, overflows the range of {precision} although dy and its sums are finite (γ/√(σ² + ε) times dy is too large; the staged strategy's dσ² and dμ overflow sooner than the closed form's terms)."), parameterName),
        _ => new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"Column {Index}: {Cause}.")),
    };
}
