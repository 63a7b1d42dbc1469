using System;
using System.Collections.Generic;
using System.IO;
using System.Text.Json;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <content>Saved state, optimizer-friendly parameters and folding into a preceding affine map.</content>
public sealed partial class BatchNormLayer
{
    /// <summary>The version written by <see cref="ExportState"/> and the only one <see cref="ImportState"/> reads.</summary>
    public const int StateFormatVersion = 1;

    private const string StateFormat = "BatchNorm.BatchNormLayer";

    /// <summary>Gets γ and β with their gradients, as named pairs: ("gamma", Gamma, GammaGradient) and ("beta", Beta, BetaGradient).</summary>
    /// <remarks>The list and its vectors are the layer's own and never change identity; reading it allocates nothing.</remarks>
    public IReadOnlyList<LayerParameter> Parameters { get; }

    /// <summary>
    /// Writes everything the layer needs to resume as JSON: format version, features, ε, momentum, γ, β, the
    /// running statistics and <see cref="BatchesTracked"/>. Doubles are written in their shortest round-trip
    /// form, so <see cref="ImportState"/> restores them bit for bit.
    /// </summary>
    /// <returns>The JSON text.</returns>
    /// <remarks>Allocates the text. Gradients and the cache are not saved: they belong to a step, not to the layer.</remarks>
    public string ExportState()
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("format", StateFormat);
            json.WriteNumber("version", StateFormatVersion);
            json.WriteNumber("features", Features);
            json.WriteNumber("epsilon", Epsilon);
            if (Momentum is double m)
            {
                json.WriteNumber("momentum", m);
            }
            else
            {
                json.WriteNull("momentum");
            }

            WriteArray(json, "gamma", Gamma);
            WriteArray(json, "beta", Beta);
            WriteArray(json, "runningMean", RunningMean);
            WriteArray(json, "runningVariance", RunningVariance);
            json.WriteNumber("batchesTracked", BatchesTracked);
            json.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>
    /// Restores a state written by <see cref="ExportState"/>: ε, momentum, γ, β, the running statistics and the
    /// batch count. The cache is dropped, since it came from the old parameters; gradients are left as they are.
    /// </summary>
    /// <param name="json">The JSON text.</param>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">The text is not valid JSON (for example truncated), is of another format
    /// or version, lacks a field, or holds a non-finite or out-of-range value. The message names the problem.</exception>
    /// <exception cref="ArgumentException">The state is for a different number of features.</exception>
    /// <remarks>Everything is checked before anything is written, so a failed import leaves the layer untouched.</remarks>
    public void ImportState(string json)
    {
        Guard.NotNull(json, nameof(json));
        SavedState state = SavedState.Parse(json);
        if (state.Features != Features)
        {
            throw new ArgumentException($"The saved state is for {state.Features} features, but this layer has {Features}.", nameof(json));
        }

        Epsilon = state.Epsilon;
        Momentum = state.Momentum;
        state.Gamma.CopyTo(DenseColumns.Data(Gamma));
        state.Beta.CopyTo(DenseColumns.Data(Beta));
        state.RunningMean.CopyTo(DenseColumns.Data(RunningMean));
        state.RunningVariance.CopyTo(DenseColumns.Data(RunningVariance));
        BatchesTracked = state.BatchesTracked;
        _cache = null;
        _spareCache = null;
    }

    /// <summary>Creates a layer from a state written by <see cref="ExportState"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>A new layer in training mode with the default backward strategy.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="json"/> is null.</exception>
    /// <exception cref="FormatException">As for <see cref="ImportState"/>.</exception>
    public static BatchNormLayer FromState(string json)
    {
        Guard.NotNull(json, nameof(json));
        SavedState state = SavedState.Parse(json);
        var layer = new BatchNormLayer(state.Features, state.Epsilon, state.Momentum);
        layer.ImportState(json);
        return layer;
    }

    /// <summary>
    /// Folds this layer's inference transform into a preceding affine map z = x·W + b: returns W′ and b′ with
    /// x·W′ + b′ = BN(x·W + b) in inference mode, where W′ = W·diag(s), b′ = (b − running_mean)⊙s + β and
    /// s = γ/√(running_var + ε).
    /// </summary>
    /// <param name="weights">W, in×D, where D is <see cref="Features"/>.</param>
    /// <param name="bias">b, D values.</param>
    /// <returns>New W′ (in×D) and b′ (D values); the arguments are not modified.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="weights"/> does not have D columns or <paramref name="bias"/> D elements.</exception>
    /// <remarks>Uses the running statistics whatever <see cref="IsTraining"/> is, and changes no state. Allocates the results.</remarks>
    public (Matrix<double> Weights, Vector<double> Bias) FoldInto(Matrix<double> weights, Vector<double> bias)
    {
        Guard.NotNull(weights, nameof(weights));
        Guard.NotNull(bias, nameof(bias));
        Guard.Columns(weights, Features, nameof(weights));
        Guard.Length(bias, Features, nameof(bias));
        Vector<double> scale = Vector<double>.Build.Dense(Features, j => Gamma[j] / Math.Sqrt(RunningVariance[j] + Epsilon));
        Matrix<double> foldedWeights = weights.Multiply(Matrix<double>.Build.DiagonalOfDiagonalVector(scale));
        Vector<double> foldedBias = Vector<double>.Build.Dense(Features, j => ((bias[j] - RunningMean[j]) * scale[j]) + Beta[j]);
        return (foldedWeights, foldedBias);
    }

    private static void WriteArray(Utf8JsonWriter json, string name, Vector<double> values)
    {
        json.WriteStartArray(name);
        foreach (double v in values)
        {
            json.WriteNumberValue(v);
        }

        json.WriteEndArray();
    }

    /// <summary>A parsed and fully checked saved state.</summary>
    private sealed record SavedState(int Features, double Epsilon, double? Momentum, double[] Gamma, double[] Beta, double[] RunningMean, double[] RunningVariance, long BatchesTracked)
    {
        public static SavedState Parse(string text)
        {
            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(text);
            }
            catch (JsonException e)
            {
                throw new FormatException($"The saved state is not valid JSON (is it truncated?): {e.Message}", e);
            }

            using (document)
            {
                JsonElement root = document.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                {
                    throw new FormatException("The saved state must be a JSON object.");
                }

                string format = Required(root, "format", JsonValueKind.String).GetString()!;
                if (format != StateFormat)
                {
                    throw new FormatException($"The saved state has format '{format}', not '{StateFormat}'.");
                }

                int version = Required(root, "version", JsonValueKind.Number).TryGetInt32(out int v) ? v : -1;
                if (version != StateFormatVersion)
                {
                    throw new FormatException($"The saved state is format version {version}; this library reads version {StateFormatVersion} only.");
                }

                int features = Required(root, "features", JsonValueKind.Number).TryGetInt32(out int f) && f > 0
                    ? f
                    : throw new FormatException("'features' must be a positive integer.");
                double epsilon = Number(Required(root, "epsilon", JsonValueKind.Number), "epsilon");
                if (!(epsilon > 0))
                {
                    throw new FormatException($"'epsilon' must be positive, not {epsilon}.");
                }

                JsonElement momentumElement = Required(root, "momentum", null);
                double? momentum = momentumElement.ValueKind switch
                {
                    JsonValueKind.Null => null,
                    JsonValueKind.Number when Number(momentumElement, "momentum") is var m && m >= 0 && m <= 1 => m,
                    _ => throw new FormatException("'momentum' must be a number in [0, 1] or null."),
                };

                double[] gamma = Array(root, "gamma", features);
                double[] beta = Array(root, "beta", features);
                double[] mean = Array(root, "runningMean", features);
                double[] variance = Array(root, "runningVariance", features);
                if (System.Array.Exists(variance, x => x < 0))
                {
                    throw new FormatException("'runningVariance' holds a negative value.");
                }

                long batches = Required(root, "batchesTracked", JsonValueKind.Number).TryGetInt64(out long b) && b >= 0
                    ? b
                    : throw new FormatException("'batchesTracked' must be a non-negative integer.");
                return new SavedState(features, epsilon, momentum, gamma, beta, mean, variance, batches);
            }
        }

        private static JsonElement Required(JsonElement root, string name, JsonValueKind? kind)
        {
            if (!root.TryGetProperty(name, out JsonElement element))
            {
                throw new FormatException($"The saved state lacks the field '{name}'.");
            }

            if (kind is { } k && element.ValueKind != k)
            {
                throw new FormatException($"The field '{name}' must be a JSON {k.ToString().ToLowerInvariant()}, not {element.ValueKind.ToString().ToLowerInvariant()}.");
            }

            return element;
        }

        private static double Number(JsonElement element, string name)
        {
            if (element.ValueKind != JsonValueKind.Number || !element.TryGetDouble(out double value) || !double.IsFinite(value))
            {
                throw new FormatException($"'{name}' must be a finite number, not {element.GetRawText()}.");
            }

            return value;
        }

        private static double[] Array(JsonElement root, string name, int features)
        {
            JsonElement array = Required(root, name, JsonValueKind.Array);
            if (array.GetArrayLength() != features)
            {
                throw new FormatException($"'{name}' has {array.GetArrayLength()} values, but 'features' is {features}.");
            }

            var values = new double[features];
            int i = 0;
            foreach (JsonElement item in array.EnumerateArray())
            {
                values[i] = Number(item, $"{name}[{i}]");
                i++;
            }

            return values;
        }
    }
}
