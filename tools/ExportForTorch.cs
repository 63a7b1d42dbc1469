// Trains the library's layers for a few steps, then writes what tools/load_in_torch.py checks in PyTorch:
//   dotnet run tools/ExportForTorch.cs -- <output directory>
// library_state.safetensors: the layers' state in PyTorch's names (PyTorchState.ExportSafetensors), under bn., bn_cma.,
// gn. and ln. (6 features), bn_sp. and gn_sp. (channels × positions: 3 × 2 and 2 × 3 of the same 6 columns), in. (instance
// norm, 3 channels × 2 positions, affine and tracked) and bn_bare. (no affine, no running statistics);
// library_outputs.json: a batch x, an upstream gradient dy, and for each prefix the layer's eval-mode output and one
// training step's output, gradients and running statistics, as the library computed them.
#:project ../src/BatchNorm/BatchNorm.csproj

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

string directory = args.Length > 0 ? args[0] : ".";
Directory.CreateDirectory(directory);
var random = new Random(7);
double[] offsets = [0, 3, -2, 10, 0.5, 100], scales = [1, 2, 0.5, 3, 0.1, 5];
Matrix<double> Batch(int rows) => Matrix<double>.Build.Dense(rows, 6, (_, j) => offsets[j] + (scales[j] * ((random.NextDouble() * 2) - 1)));
Matrix<double> Noise(int rows) => Matrix<double>.Build.Dense(rows, 6, (_, _) => (random.NextDouble() * 2) - 1);

var layers = new Dictionary<string, NormalizationLayer>
{
    ["bn."] = new BatchNormLayer(6, epsilon: 1e-3, momentum: 0.2),
    ["bn_cma."] = new BatchNormLayer(6, epsilon: 1e-5, momentum: null),
    ["gn."] = new GroupNormLayer(6, groups: 3, epsilon: 1e-4),
    ["ln."] = new LayerNormLayer(6, epsilon: 1e-5),
    ["bn_sp."] = BatchNormLayer.Spatial(channels: 3, spatialSize: 2, epsilon: 1e-5, momentum: 0.3),
    ["gn_sp."] = GroupNormLayer.Spatial(channels: 2, groups: 1, spatialSize: 3, epsilon: 1e-5),
    ["in."] = new InstanceNormLayer(3, 2, epsilon: 1e-5, momentum: 0.2, affine: true, trackRunningStatistics: true),
    ["bn_bare."] = new BatchNormLayer(6, epsilon: 1e-5, affine: false, trackRunningStatistics: false),
};
foreach (NormalizationLayer layer in layers.Values)
{
    for (int step = 0; step < 5; step++)
    {
        Matrix<double> y = layer.Forward(Batch(16));
        layer.Backward(y - Noise(16));
        foreach (LayerParameter p in layer.Parameters)
        {
            p.Value.Subtract(p.Gradient * 0.1, p.Value);
        }
    }
}

File.WriteAllBytes(Path.Combine(directory, "library_state.safetensors"), PyTorchState.ExportSafetensors(layers));

Matrix<double> x = Batch(8), dy = Noise(8);
using var stream = File.Create(Path.Combine(directory, "library_outputs.json"));
using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
json.WriteStartObject();
Write("x", x);
Write("dy", dy);
foreach ((string prefix, NormalizationLayer layer) in layers)
{
    layer.IsTraining = false;
    Write(prefix + "eval.y", layer.Forward(x));
    layer.IsTraining = true;
    Write(prefix + "train.y", layer.Forward(x));
    Write(prefix + "train.dx", layer.Backward(dy));
    Write(prefix + "train.dweight", layer.GammaGradient.ToRowMatrix());
    Write(prefix + "train.dbias", layer.BetaGradient.ToRowMatrix());
    if (layer is RunningStatisticsLayer { TracksRunningStatistics: true } running)
    {
        Write(prefix + "train.running_mean", running.RunningMean.ToRowMatrix());
        Write(prefix + "train.running_var", running.RunningVariance.ToRowMatrix());
        json.WriteNumber(prefix + "train.num_batches_tracked", running.BatchesTracked);
    }
}

json.WriteEndObject();
Console.WriteLine($"wrote library_state.safetensors and library_outputs.json to {Path.GetFullPath(directory)}");

// Rows of doubles in their shortest round-trip form, which Python's json reads back exactly.
void Write(string name, Matrix<double> m)
{
    json.WriteStartArray(name);
    foreach (double[] row in m.ToRowArrays())
    {
        json.WriteStartArray();
        row.ToList().ForEach(json.WriteNumberValue);
        json.WriteEndArray();
    }

    json.WriteEndArray();
}
