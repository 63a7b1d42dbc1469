using System;
using System.Collections.Generic;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Storage;

namespace BatchNorm.Tests;

/// <summary>Every layer keeps the whole contract of <see cref="INormalizationLayer"/>, so any can replace any other.</summary>
public class ContractTests
{
    public static readonly string[] Kinds =
    [
        "batch norm", "ghost batches", "batch renorm", "layer norm", "group norm",
        "spatial batch norm", "spatial group norm", "instance norm", "rms norm", "bare batch norm",
    ];

    public static TheoryData<string> AllKinds => [.. Kinds];

    public static TheoryData<string, string> KindsAndStrategies
    {
        get
        {
            var data = new TheoryData<string, string>();
            foreach (string kind in Kinds)
            {
                foreach (string strategy in StrategiesFor(kind))
                {
                    data.Add(kind, strategy);
                }
            }

            return data;
        }
    }

    /// <summary>
    /// A layer of each kind for 6 features (columns); batches have 8 rows, so ghost batches of 4 and groups of 3 fit.
    /// The spatial kinds cut the columns into channels of 2 or 3 positions; instance norm has γ, β and running
    /// statistics (PyTorch's defaults have neither, tested apart); the bare batch norm has neither.
    /// </summary>
    internal static INormalizationLayer Create(string kind, BackwardStrategy? strategy = null, int features = 6) => kind switch
    {
        "batch norm" => new BatchNormLayer(features, backward: strategy),
        "ghost batches" => new BatchNormLayer(features, backward: strategy) { VirtualBatchSize = 4 },
        "batch renorm" => new BatchRenormLayer(features, backward: strategy) { RMax = 1.5, DMax = 0.5 },
        "layer norm" => new LayerNormLayer(features, backward: strategy),
        "group norm" => new GroupNormLayer(features, features / 3, backward: strategy),
        "spatial batch norm" => Ghost(BatchNormLayer.Spatial(channels: features / 2, spatialSize: 2, backward: strategy), 4),
        "spatial group norm" => GroupNormLayer.Spatial(channels: features / 3, groups: 1, spatialSize: 3, backward: strategy),
        "instance norm" => new InstanceNormLayer(features / 2, 2, backward: strategy, affine: true, trackRunningStatistics: true),
        "rms norm" => new RMSNormLayer(features, backward: strategy),
        "bare batch norm" => new BatchNormLayer(features, backward: strategy, affine: false, trackRunningStatistics: false),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown kind"),
    };

    private static BatchNormLayer Ghost(BatchNormLayer layer, int size)
    {
        layer.VirtualBatchSize = size;
        return layer;
    }

    /// <summary>The learnable parameters a kind has, by name.</summary>
    internal static string[] ParameterNames(string kind) => kind switch
    {
        "rms norm" => ["gamma"],
        "bare batch norm" => [],
        _ => ["gamma", "beta"],
    };

    /// <summary>The strategies a kind takes: a user's strategy written for batch norm's graph does not say it handles RMS norm's.</summary>
    internal static string[] StrategiesFor(string kind) => kind == "rms norm" ? ["staged", "closed"] : ["staged", "closed", "textbook"];

    internal static BackwardStrategy Strategy(string name) => name switch
    {
        "staged" => BackwardStrategy.Staged,
        "closed" => BackwardStrategy.ClosedForm,
        _ => new TextbookBackward(),
    };

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Every_layer_keeps_the_whole_contract(string kind)
    {
        INormalizationLayer layer = Create(kind), twin = Create(kind);
        (Matrix<double> x, Matrix<double> dy) = Batch(8, 6, seed: 1);
        Assert.Equal(6, layer.Features);
        Assert.Equal(kind == "rms norm" ? RMSNormLayer.DefaultEpsilon : 1e-5, layer.Epsilon);
        Assert.True(layer.IsTraining);
        Assert.Same(BackwardStrategy.ClosedForm, layer.BackwardStrategy);
        Assert.Null(layer.Cache);
        Assert.Equal(ParameterNames(kind), layer.Parameters.Select(p => p.Name));
        Assert.Same(layer.Parameters, layer.Parameters);

        // The allocating and the destination overloads give the same results.
        Matrix<double> y = layer.Forward(x), y2 = Matrix<double>.Build.Dense(8, 6);
        twin.Forward(x, y2);
        Assert.Equal(y, y2);
        Assert.NotNull(layer.Cache);
        Assert.Equal(8, layer.Cache!.BatchSize);
        Matrix<double> dx = layer.Backward(dy), dx2 = Matrix<double>.Build.Dense(8, 6);
        twin.Backward(dy, dx2);
        Assert.Equal(dx, dx2);
        for (int k = 0; k < layer.Parameters.Count; k++)
        {
            Assert.Equal(layer.Parameters[k].Gradient, twin.Parameters[k].Gradient);
            Assert.NotEqual(0, layer.Parameters[k].Gradient.AbsoluteMaximum());
        }

        // Both modes run, and a strategy swaps in.
        layer.IsTraining = false;
        Assert.Equal(8, layer.Forward(x).RowCount);
        Assert.False(layer.Cache.IsTraining);
        layer.BackwardStrategy = BackwardStrategy.Staged;
        Assert.Equal(8, layer.Backward(dy).RowCount);

        // Parameters reset in place: γ to 1, β to 0, one value per channel.
        foreach (LayerParameter p in layer.Parameters)
        {
            p.Value[1] = 3;
        }

        layer.ResetParameters();
        foreach (LayerParameter p in layer.Parameters)
        {
            Assert.Equal(Enumerable.Repeat(p.Name == "gamma" ? 1.0 : 0.0, ((NormalizationLayer)layer).Channels), p.Value);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Saved_state_restores_every_layer_type_bit_for_bit(string kind)
    {
        INormalizationLayer trained = Create(kind);
        for (int step = 0; step < 3; step++)
        {
            (Matrix<double> x, Matrix<double> dy) = Batch(8, 6, seed: step);
            trained.Forward(x);
            trained.Backward(dy);
            foreach (LayerParameter p in trained.Parameters)
            {
                p.Value.Subtract(p.Gradient * 0.1, p.Value);
            }
        }

        string json = trained.ExportState();
        INormalizationLayer imported = Create(kind);
        imported.ImportState(json);
        NormalizationLayer created = NormalizationLayer.FromState(json);
        Assert.Equal(trained.GetType(), created.GetType());
        Assert.Equal(json, imported.ExportState());
        Assert.Equal(json, created.ExportState());

        (Matrix<double> next, _) = Batch(8, 6, seed: 9);
        foreach (bool training in new[] { false, true })
        {
            trained.IsTraining = imported.IsTraining = created.IsTraining = training;
            Matrix<double> expected = trained.Forward(next);
            Assert.Equal(expected, imported.Forward(next));
            Assert.Equal(expected, created.Forward(next));
        }
    }

    [Fact]
    public void Each_type_reads_its_own_state_only()
    {
        string norm = new BatchNormLayer(4).ExportState(), group = new GroupNormLayer(4, 2).ExportState();
        Assert.IsType<BatchNormLayer>(BatchNormLayer.FromState(norm));
        Assert.IsType<GroupNormLayer>(GroupNormLayer.FromState(group));
        Assert.IsType<LayerNormLayer>(LayerNormLayer.FromState(new LayerNormLayer(4).ExportState()));
        Assert.IsType<BatchRenormLayer>(BatchRenormLayer.FromState(new BatchRenormLayer(4).ExportState()));
        Assert.Contains("not 'BatchNorm.BatchNormLayer'", Assert.Throws<FormatException>(() => BatchNormLayer.FromState(group)).Message);
        Assert.Contains("not 'BatchNorm.LayerNormLayer'", Assert.Throws<FormatException>(() => new LayerNormLayer(4).ImportState(norm)).Message);
        Assert.Contains("2 groups, but this layer has 4", Assert.Throws<ArgumentException>(() => new GroupNormLayer(4, 4).ImportState(group)).Message);
        string foreign = norm.Replace("BatchNorm.BatchNormLayer", "BatchNorm.Dropout", StringComparison.Ordinal);
        Assert.Contains("not a layer of this library", Assert.Throws<FormatException>(() => NormalizationLayer.FromState(foreign)).Message);
        string badGroups = group.Replace("\"groups\": 2", "\"groups\": 3", StringComparison.Ordinal);
        Assert.Contains("groups must divide", Assert.Throws<FormatException>(() => NormalizationLayer.FromState(badGroups)).Message);
    }

    [Fact]
    public void A_network_swaps_one_normalization_for_another_by_changing_only_the_constructor()
    {
        // The same three-layer regression network with each kind in the middle slot; every one trains.
        (Matrix<double> x, _) = Batch(8, 4, seed: 3);
        Matrix<double> target = Matrix<double>.Build.Dense(8, 1, (i, _) => Math.Sin(x[i, 0]) + (x[i, 1] * x[i, 2]));
        foreach (string kind in Kinds)
        {
            var network = new TinyNetwork(Create(kind, features: 6));
            double first = network.TrainStep(x, target), last = first;
            for (int step = 0; step < 40; step++)
            {
                last = network.TrainStep(x, target);
            }

            Assert.True(last < first / 2, $"{kind}: loss went from {first} to {last}");
        }
    }

    public static TheoryData<string, string, bool> CheckCases
    {
        get
        {
            var data = new TheoryData<string, string, bool>();
            foreach (string kind in Kinds)
            {
                foreach (string strategy in StrategiesFor(kind))
                {
                    data.Add(kind, strategy, true);
                    data.Add(kind, strategy, false);
                }
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(CheckCases))]
    public void GradientCheck_works_on_any_layer_through_the_contract(string kind, string strategy, bool training)
        => CheckGradients(Create(kind, Strategy(strategy)), kind, training, seed: 4);

    /// <summary>
    /// Every kind with every strategy it takes, in both modes, on generated batches (8 rows of 6 columns whose offsets
    /// and spreads differ per column, from the seed).
    /// </summary>
    [BatchNormProperty]
    public void Every_layer_kind_passes_GradientCheck_on_generated_batches(LayerKind kind, BackwardStrategy strategy, bool training, int seed)
    {
        // A strategy written for batch norm's graph does not say it handles RMS norm's: the staged one stands in.
        bool refused = kind.Name == "rms norm" && !strategy.SupportsUncentered;
        CheckGradients(kind.Create(refused ? BackwardStrategy.Staged : strategy), kind.Name, training, seed);
    }

    private static void CheckGradients(INormalizationLayer layer, string kind, bool training, int seed)
    {
        (Matrix<double> x, Matrix<double> dy) = Batch(8, 6, seed);
        layer.Forward(x * 1.5);     // running statistics away from their initial values
        layer.IsTraining = training;
        if (layer is BatchRenormLayer renorm && training)
        {
            // Renorm's Backward holds r and d constant: its true gradient only where they are clipped at their limits.
            renorm.RunningVariance.SetValues([.. Enumerable.Repeat(1e6, 6)]);
            renorm.RunningMean.SetValues([.. Enumerable.Range(0, 6).Select(j => j % 2 == 0 ? 1e5 : -1e5)]);
        }

        string before = layer.ExportState();
        GradientCheckResult errors = GradientCheck.Check(layer, x, dy);
        Assert.True(errors.Max < 1e-6, $"{kind}, {layer.BackwardStrategy.Name}, training {training}: {errors}");
        Assert.Equal(ParameterNames(kind), errors.Parameters.Select(p => p.Name));
        Assert.Equal(training, layer.IsTraining);
        Assert.Equal(before, layer.ExportState());
    }

    [Theory]
    [MemberData(nameof(KindsAndStrategies))]
    public void Every_strategy_works_on_every_layer_and_agrees_with_the_closed_form(string kind, string strategy)
    {
        INormalizationLayer layer = Create(kind, Strategy(strategy)), closed = Create(kind);
        (Matrix<double> x, Matrix<double> dy) = Batch(8, 6, seed: 5);
        Matrix<double> dx = Step(layer, x, dy), expected = Step(closed, x, dy);
        Assert.True((dx - expected).InfinityNorm() <= 1e-12 * (1 + expected.InfinityNorm()), $"{kind}, {strategy}: differ by {(dx - expected).InfinityNorm():E2}");
        for (int k = 0; k < layer.Parameters.Count; k++)
        {
            Assert.True((layer.Parameters[k].Gradient - closed.Parameters[k].Gradient).InfinityNorm() <= 1e-12 * (1 + closed.Parameters[k].Gradient.InfinityNorm()));
        }

        static Matrix<double> Step(INormalizationLayer l, Matrix<double> x, Matrix<double> dy)
        {
            l.Forward(x);
            return l.Backward(dy);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void A_strategy_with_fewer_than_two_sums_is_refused_and_changes_nothing(string kind)
    {
        INormalizationLayer layer = Create(kind);
        Assert.Contains("at least Σdy·x̂ and Σdy", Assert.Throws<ArgumentException>(() => layer.BackwardStrategy = new OneSum()).Message);
        Assert.Same(BackwardStrategy.ClosedForm, layer.BackwardStrategy);
        Assert.Throws<ArgumentException>(() => new BatchNormLayer(3, backward: new OneSum()));
        Assert.Throws<ArgumentNullException>(() => layer.BackwardStrategy = null!);
        if (kind == "rms norm")
        {
            // A strategy written for batch norm's graph says so, and RMS norm refuses it by name.
            Assert.Contains("does not handle segments normalized without centering", Assert.Throws<ArgumentException>(() => layer.BackwardStrategy = new TextbookBackward()).Message);
            Assert.Throws<ArgumentException>(() => new RMSNormLayer(3, backward: new TextbookBackward()));
            Assert.Same(BackwardStrategy.ClosedForm, layer.BackwardStrategy);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void The_cache_is_committed_only_after_the_output_is_written(string kind)
    {
        INormalizationLayer layer = Create(kind);
        (Matrix<double> x, Matrix<double> dy) = Batch(8, 6, seed: 6);
        layer.Forward(x);
        NormalizationCache cache = layer.Cache!;
        double[] xHat = cache.NormalizedInput.ToArray(), mean = cache.Mean.ToArray();
        string state = layer.ExportState();
        (Matrix<double> other, _) = Batch(8, 6, seed: 7);

        Assert.Equal("refused", Assert.Throws<InvalidOperationException>(() => layer.Forward(other, new RefusingMatrix(8, 6))).Message);
        Assert.Same(cache, layer.Cache);
        Assert.Equal(xHat, layer.Cache!.NormalizedInput.ToArray());
        Assert.Equal(mean, layer.Cache.Mean.ToArray());
        Assert.Equal(state, layer.ExportState());

        // Backward likewise leaves the gradients of the last good step when its destination refuses.
        Matrix<double> dx = layer.Backward(dy);
        Vector<double>[] gradients = [.. layer.Parameters.Select(p => p.Gradient.Clone())];
        Assert.Throws<InvalidOperationException>(() => layer.Backward(dy * 3, new RefusingMatrix(8, 6)));
        Assert.All(layer.Parameters.Zip(gradients), t => Assert.Equal(t.Second, t.First.Gradient));
        Assert.Equal(dx, layer.Backward(dy));
    }

    [Theory]
    [InlineData("batch norm")]
    [InlineData("batch renorm")]
    [InlineData("spatial batch norm")]
    [InlineData("instance norm")]
    public void Layers_with_running_statistics_fold_into_a_preceding_linear_layer(string kind)
    {
        var layer = (RunningStatisticsLayer)Create(kind);
        (Matrix<double> batch, _) = Batch(8, 6, seed: 8);
        layer.Forward(batch);
        layer.Forward(batch * 2);
        layer.Parameters[0].Value.SetValues([.. Enumerable.Range(0, layer.Channels).Select(c => 0.5 - (c * 1.5))]);
        layer.IsTraining = false;
        Matrix<double> w = Matrix<double>.Build.Dense(2, 6, (i, j) => i - (0.5 * j) + (0.1 * j * j)), x = Matrix<double>.Build.Dense(4, 2, (i, j) => i + j);
        Vector<double> b = Vector<double>.Build.DenseOfArray([1, -2, 0.5, 3, -1, 0.25]);
        (Matrix<double> w2, Vector<double> b2) = layer.FoldInto(w, b);
        Matrix<double> expected = layer.Forward((x * w) + Matrix<double>.Build.Dense(4, 6, (_, j) => b[j]));
        Matrix<double> folded = (x * w2) + Matrix<double>.Build.Dense(4, 6, (_, j) => b2[j]);
        Assert.True((expected - folded).InfinityNorm() < 1e-12 * expected.InfinityNorm(), $"{kind}: differ by {(expected - folded).InfinityNorm():E2}");
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void ToString_names_the_type_features_mode_and_strategy(string kind)
    {
        INormalizationLayer layer = Create(kind, BackwardStrategy.Staged);
        layer.IsTraining = false;
        string text = layer.ToString()!;
        var shaped = (NormalizationLayer)layer;
        Assert.StartsWith(layer.GetType().Name + (shaped.SpatialSize == 1 ? "(features: 6" : $"(channels: {shaped.Channels}, positions: {shaped.SpatialSize}"), text, StringComparison.Ordinal);
        Assert.Contains("inference", text);
        Assert.Contains("strategy: staged", text);
        if (layer is GroupNormLayer)
        {
            Assert.Contains(kind == "spatial group norm" ? "groups: 1" : "groups: 2", text);
        }

        Assert.Equal(kind == "bare batch norm", text.Contains(", not affine, no running statistics", StringComparison.Ordinal));
    }

    internal static (Matrix<double> X, Matrix<double> Dy) Batch(int rows, int features, int seed)
    {
        var random = new Random(seed);
        Matrix<double> x = Matrix<double>.Build.Dense(rows, features, (_, j) => (j * 3.0) + ((1 + (j % 3)) * (random.NextDouble() - 0.5)));
        Matrix<double> dy = Matrix<double>.Build.Dense(rows, features, (_, _) => random.NextDouble() - 0.5);
        return (x, dy);
    }

    private static TheoryData<string, string> Cross(IEnumerable<string> first, IEnumerable<string> second)
    {
        var data = new TheoryData<string, string>();
        foreach (string a in first)
        {
            foreach (string b in second)
            {
                data.Add(a, b);
            }
        }

        return data;
    }

    /// <summary>Linear(4→6) → normalization → tanh → Linear(6→1) with a bias, squared error, SGD over every parameter list.</summary>
    private sealed class TinyNetwork(INormalizationLayer norm)
    {
        private readonly Matrix<double> _w1 = Matrix<double>.Build.Dense(4, 6, (i, j) => Math.Sin((i * 6) + j + 1));
        private readonly Matrix<double> _w2 = Matrix<double>.Build.Dense(6, 1, (i, _) => Math.Cos(i + 1) / 2);
        private double _b2;

        public double TrainStep(Matrix<double> x, Matrix<double> target)
        {
            Matrix<double> h = x * _w1, z = norm.Forward(h), a = z.Map(Math.Tanh), output = (a * _w2) + _b2;
            Matrix<double> error = output - target;
            double loss = error.Enumerate().Sum(e => e * e) / x.RowCount;
            Matrix<double> dOutput = error * (2.0 / x.RowCount);
            Matrix<double> dW2 = a.TransposeThisAndMultiply(dOutput);
            Matrix<double> dA = dOutput.TransposeAndMultiply(_w2);
            Matrix<double> dZ = dA.PointwiseMultiply(a.Map(v => 1 - (v * v)));
            Matrix<double> dH = norm.Backward(dZ);
            Matrix<double> dW1 = x.TransposeThisAndMultiply(dH);
            const double rate = 0.05;
            _w1.Subtract(dW1 * rate, _w1);
            _w2.Subtract(dW2 * rate, _w2);
            _b2 -= dOutput.ColumnSums()[0] * rate;
            foreach (LayerParameter p in norm.Parameters)
            {
                p.Value.Subtract(p.Gradient * rate, p.Value);
            }

            return loss;
        }
    }

    /// <summary>A strategy that breaks the rule that Σdy·x̂ and Σdy come first.</summary>
    internal sealed class OneSum : BackwardStrategy
    {
        public override string Name => "one sum";

        public override int SumCount => 1;

        protected override void SegmentSumsCore(in BackwardSegment segment, Span<double> sums, Span<double> inputGradient) => throw new NotSupportedException();

        protected override void SegmentInputGradientCore(in BackwardSegment segment, ReadOnlySpan<double> sums, Span<double> inputGradient) => throw new NotSupportedException();
    }

    /// <summary>A matrix whose storage refuses every write, as a destination that fails late.</summary>
    private sealed class RefusingMatrix(int rows, int columns) : MathNet.Numerics.LinearAlgebra.Double.Matrix(new RefusingStorage(rows, columns))
    {
        private sealed class RefusingStorage(int rows, int columns) : MatrixStorage<double>(rows, columns)
        {
            public override bool IsDense => false;

            public override bool IsFullyMutable => true;

            public override bool IsMutableAt(int row, int column) => true;

            public override double At(int row, int column) => 0;

            public override void At(int row, int column, double value) => throw new InvalidOperationException("refused");
        }
    }
}
