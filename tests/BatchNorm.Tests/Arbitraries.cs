using System;
using System.Globalization;
using System.Linq;
using System.Text.Json.Nodes;
using FsCheck;
using FsCheck.Fluent;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm.Tests;

/// <summary>
/// The test data FsCheck generates for the suite's properties, registered once through <see cref="BatchNormPropertyAttribute"/>:
/// a property asks for a value by the type of its parameter.
/// </summary>
public static class Arbitraries
{
    /// <summary>Batches of 2 to 12 rows and 1 to 5 features (see <see cref="BatchCase"/>).</summary>
    public static Arbitrary<BatchCase> Batches() => BatchCase.Arbitrary();

    /// <summary>Batches of up to 40 rows, for properties that central differences do not slow down.</summary>
    public static Arbitrary<TallBatch> TallBatches() => Map(BatchCase.Arbitrary(maxRows: 40), c => new TallBatch(c), t => t.Case);

    /// <summary>The staged and closed-form strategies and one written by a user (<see cref="TextbookBackward"/>).</summary>
    public static Arbitrary<BackwardStrategy> Strategies() => Gen.Elements(BackwardStrategy.Staged, BackwardStrategy.ClosedForm, new TextbookBackward()).ToArbitrary();

    /// <summary>Every layer type, each made by <see cref="ContractTests.Create"/>.</summary>
    public static Arbitrary<LayerKind> Kinds() => Gen.Elements(ContractTests.Kinds).Select(k => new LayerKind(k)).ToArbitrary();

    /// <summary>Batches of 2 to 140 rows and 1 to 11 features: segments on both sides of the four-at-a-time kernels' limit of 128 rows.</summary>
    public static Arbitrary<WideBatch> WideBatches() => Map(BatchCase.Arbitrary(maxRows: 140, maxFeatures: 11), c => new WideBatch(c), w => w.Case);

    /// <summary>Two to four ghost batches of three to six rows.</summary>
    public static Arbitrary<GhostCase> GhostCases() => (
        from blocks in Gen.Choose(2, 4)
        from size in Gen.Choose(3, 6)
        from c in BatchCase.Arbitrary(minRows: blocks * size, maxRows: blocks * size, maxFeatures: 4).Generator
        select new GhostCase(c, size)).ToArbitrary();

    /// <summary>Group-norm batches with groups of 1, 3, 4 or 5 features (see <see cref="RowCase"/>).</summary>
    public static Arbitrary<RowCase> RowCases() => RowCase.Generate(allowTwo: false).ToArbitrary();

    /// <summary>Group-norm batches with two features per group, values within ±10 of zero.</summary>
    public static Arbitrary<TwoPerGroup> TwoPerGroupCases() => RowCase.Generate(allowTwo: true).Select(c => new TwoPerGroup(c)).ToArbitrary();

    /// <summary>A batch of 8 to 24 rows cut among 2 to 4 workers; cuts may coincide or sit at either end, leaving a worker no rows.</summary>
    public static Arbitrary<ShardedCase> ShardedCases() => (
        from workers in Gen.Choose(2, 4)
        from c in BatchCase.Arbitrary(minRows: 8, maxRows: 24, maxFeatures: 4).Generator
        from cuts in Gen.Choose(0, c.Rows).ArrayOf(workers - 1)
        select new ShardedCase(c, [.. cuts.Order()])).ToArbitrary();

    /// <summary>One to six batches of one feature and 2 to 9 rows.</summary>
    public static Arbitrary<BatchSequence> Sequences() => (
        from count in Gen.Choose(1, 6)
        from batches in BatchCase.Arbitrary(minRows: 2, maxRows: 9, maxFeatures: 1).Generator.ArrayOf(count)
        select new BatchSequence(batches)).ToArbitrary();

    /// <summary>Three batches of up to three features and changing row counts.</summary>
    public static Arbitrary<ResizingBatches> Resizing() => BatchCase.Arbitrary(maxFeatures: 3).Generator.ArrayOf(3).Select(c => new ResizingBatches(c)).ToArbitrary();

    /// <summary>A batch, an input width for a Linear layer before it, and a seed for its weights.</summary>
    public static Arbitrary<FoldCase> FoldCases() => (
        from inputs in Gen.Choose(1, 6)
        from c in BatchCase.Arbitrary(maxFeatures: 5).Generator
        from seed in Gen.Choose(0, 1_000_000)
        select new FoldCase(inputs, c, seed)).ToArbitrary();

    /// <summary>A layer type, a seed to train it, and a way to damage its saved state (see <see cref="StateMutation"/>).</summary>
    public static Arbitrary<StateMutation> StateMutations()
    {
        Gen<JsonNode?> values = Gen.OneOf(
            Gen.Constant<JsonNode?>(null),
            Gen.Elements<JsonNode?>(JsonValue.Create(true), JsonValue.Create("text"), JsonValue.Create(0), JsonValue.Create(-1), JsonValue.Create(2.5), JsonValue.Create(1e300)),
            Gen.Choose(-5, 5).Select(k => (JsonNode?)JsonValue.Create(k / 2.0)),
            Gen.Choose(0, 4).Select(n => (JsonNode?)new JsonArray([.. Enumerable.Range(0, n).Select(i => (JsonNode?)JsonValue.Create(i * 0.5))])),
            Gen.Constant<JsonNode?>(new JsonObject()));
        return (
            from kind in Gen.Elements(ContractTests.Kinds)
            from seed in Gen.Choose(0, 1000)
            from mutation in Gen.Choose(0, 4)
            from position in Gen.Choose(0, 10_000)
            from value in values
            select new StateMutation(kind, seed, mutation, position, value?.ToJsonString())).ToArbitrary();
    }

    /// <summary>A layer type with a PyTorch counterpart, a seed to train it, and a way to damage its safetensors export (see <see cref="SafetensorsDamage"/>).</summary>
    public static Arbitrary<SafetensorsDamage> SafetensorsDamages() => (
        from kind in Gen.Elements(PyTorchStateTests.MappedKindNames)
        from seed in Gen.Choose(0, 1000)
        from damage in Gen.Choose(0, 3)
        from position in Gen.Choose(0, 10_000)
        from value in Gen.Choose(0, 1000)
        select new SafetensorsDamage(kind, seed, damage, position, value)).ToArbitrary();

    /// <summary>
    /// Two-row columns for the accuracy bounds: means from 1e-6 to 1e10 of either sign, spreads from 1e-14 of the mean
    /// plus 1e-6 to 1, ε of 1e-5 or from 1e-15 to 1e5, γ in [−2, 2] and dy in [−1, 1].
    /// </summary>
    public static Arbitrary<TwoRowColumn> TwoRowColumns()
    {
        Gen<double> unit = Gen.Choose(0, int.MaxValue - 1).Select(k => k / (double)int.MaxValue);
        return (
            from sign in Gen.Elements(-1.0, 1.0)
            from logMean in unit
            from logRelativeSpread in unit
            from logAbsoluteSpread in unit
            from a in unit
            from b in unit
            from defaultEpsilon in Gen.Choose(0, 2).Select(k => k == 0)
            from logEpsilon in unit
            from gamma in unit
            from dy1 in unit
            from dy2 in unit
            let mean = sign * Math.Pow(10, (logMean * 16) - 6)
            let spread = (Math.Abs(mean) * Math.Pow(10, -logRelativeSpread * 14)) + Math.Pow(10, (logAbsoluteSpread * 6) - 6)
            select new TwoRowColumn(
                [mean + (spread * (a - 0.5)), mean + (spread * (b - 0.5))],
                [(dy1 * 2) - 1, (dy2 * 2) - 1],
                (gamma * 4) - 2,
                defaultEpsilon ? 1e-5 : Math.Pow(10, (logEpsilon * 20) - 15))).ToArbitrary();
    }

    private static Arbitrary<TOut> Map<TIn, TOut>(Arbitrary<TIn> arbitrary, Func<TIn, TOut> to, Func<TOut, TIn> back)
        => Arb.From(arbitrary.Generator.Select(to), o => arbitrary.Shrinker(back(o)).Select(to));
}

/// <summary>One feature of a two-row batch, with its upstream gradient, γ and ε.</summary>
/// <param name="X">The two values.</param>
/// <param name="Dy">Their upstream gradients.</param>
/// <param name="Gamma">γ.</param>
/// <param name="Epsilon">ε.</param>
public sealed record TwoRowColumn(double[] X, double[] Dy, double Gamma, double Epsilon)
{
    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"x = [{X[0]:R}, {X[1]:R}], dy = [{Dy[0]:R}, {Dy[1]:R}], γ = {Gamma:R}, ε = {Epsilon:R}");
}

/// <summary>The name of a layer type, as <see cref="ContractTests.Create"/> takes it.</summary>
/// <param name="Name">"batch norm", "ghost batches", "batch renorm", "layer norm" or "group norm".</param>
public sealed record LayerKind(string Name)
{
    /// <summary>A layer of this kind for 6 features; batches for it have 8 rows.</summary>
    public INormalizationLayer Create(BackwardStrategy? strategy = null) => ContractTests.Create(Name, strategy);

    /// <inheritdoc/>
    public override string ToString() => Name;
}

/// <summary>A batch of up to 40 rows.</summary>
/// <param name="Case">The batch.</param>
public sealed record TallBatch(BatchCase Case);

/// <summary>A batch of up to 140 rows and 11 features (see <see cref="Arbitraries.WideBatches"/>).</summary>
public sealed record WideBatch(BatchCase Case);

/// <summary>A batch whose rows are a whole number of ghost batches.</summary>
/// <param name="Case">The batch.</param>
/// <param name="BlockSize">The ghost batch size.</param>
public sealed record GhostCase(BatchCase Case, int BlockSize);

/// <summary>A group-norm batch with two features per group.</summary>
/// <param name="Case">The batch.</param>
public sealed record TwoPerGroup(RowCase Case);

/// <summary>A batch cut among workers: worker r holds rows [bounds[r], bounds[r + 1]).</summary>
/// <param name="Case">The whole batch.</param>
/// <param name="Cuts">The inner bounds, in order.</param>
public sealed record ShardedCase(BatchCase Case, int[] Cuts)
{
    /// <summary>Gets the bounds, 0 and the row count included.</summary>
    public int[] Bounds => [0, .. Cuts, Case.Rows];

    /// <inheritdoc/>
    public override string ToString() => $"cuts [{string.Join(", ", Cuts)}] of {Case}";
}

/// <summary>Batches fed to one layer in turn.</summary>
/// <param name="Batches">The batches, all of one width.</param>
public sealed record BatchSequence(BatchCase[] Batches)
{
    /// <inheritdoc/>
    public override string ToString() => string.Join(" | ", Batches.Select(b => b.ToString()));
}

/// <summary>Batches of changing row counts, cut to the narrowest's width.</summary>
/// <param name="Cases">The batches.</param>
public sealed record ResizingBatches(BatchCase[] Cases)
{
    /// <inheritdoc/>
    public override string ToString() => string.Join(" | ", Cases.Select(b => b.ToString()));
}

/// <summary>A batch norm after a Linear layer of <paramref name="Inputs"/> inputs whose weights come from <paramref name="Seed"/>.</summary>
/// <param name="Inputs">The Linear layer's input width.</param>
/// <param name="Case">The batch that sets the running statistics.</param>
/// <param name="Seed">The seed of the weights and inputs.</param>
public sealed record FoldCase(int Inputs, BatchCase Case, int Seed);

/// <summary>
/// A damaged saved state: a layer of <paramref name="Kind"/> trained from <paramref name="Seed"/>, whose export is
/// truncated (0), loses a field (1), has a field set to <paramref name="Value"/> (2) or doubled with it (3), or has a
/// character changed (4), at <paramref name="Position"/>.
/// </summary>
/// <param name="Kind">The layer type.</param>
/// <param name="Seed">The training seed.</param>
/// <param name="Mutation">The kind of damage.</param>
/// <param name="Position">Where, modulo the length or the field count.</param>
/// <param name="Value">A JSON value, or null.</param>
public sealed record StateMutation(string Kind, int Seed, int Mutation, int Position, string? Value)
{
    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Kind}, seed {Seed}, mutation {Mutation} at {Position}, value {Value ?? "null"}");
}

/// <summary>
/// A damaged safetensors file: the export of a layer of <paramref name="Kind"/> trained from <paramref name="Seed"/>,
/// truncated (0), with a byte changed by <paramref name="Value"/> (1), set to a JSON character (2) or removed (3), at
/// <paramref name="Position"/>.
/// </summary>
/// <param name="Kind">The layer type.</param>
/// <param name="Seed">The training seed.</param>
/// <param name="Damage">The kind of damage.</param>
/// <param name="Position">Where, modulo the file's length.</param>
/// <param name="Value">What the byte becomes.</param>
public sealed record SafetensorsDamage(string Kind, int Seed, int Damage, int Position, int Value);

/// <summary>Shorthand for <see cref="Arb.From{T}(Gen{T})"/>.</summary>
internal static class GenExtensions
{
    public static Arbitrary<T> ToArbitrary<T>(this Gen<T> gen) => Arb.From(gen);
}
