// The README's quick start, as a program that compiles and runs.
using System;
using System.Linq;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

var layer = new BatchNormLayer(features: 3);                 // γ = 1, β = 0, momentum 0.1, ε = 1e-5
var x = Matrix<double>.Build.Random(32, 3) * 5 + 100;        // 32 samples (rows) × 3 features (columns)

Matrix<double> y = layer.Forward(x);                         // training mode: batch statistics
var dy = Matrix<double>.Build.Random(32, 3);                 // dL/dy from the layer above
Matrix<double> dx = layer.Backward(dy);                      // dL/dx; also fills GammaGradient, BetaGradient

const double learningRate = 0.1;                             // one SGD step, in place
layer.Gamma.Subtract(layer.GammaGradient * learningRate, layer.Gamma);
layer.Beta.Subtract(layer.BetaGradient * learningRate, layer.Beta);

layer.IsTraining = false;                                    // inference: running statistics, any batch size
Matrix<double> single = layer.Forward(x.SubMatrix(0, 1, 0, 3));

Console.WriteLine($"column means of y (β was 0):       {Show(y.ColumnSums() / 32)}");
Console.WriteLine($"column sums of dx (≈ 0 in training): {Show(dx.ColumnSums())}");
Console.WriteLine($"dL/dγ:                               {Show(layer.GammaGradient)}");
Console.WriteLine($"running mean after one batch:        {Show(layer.RunningMean)}");
Console.WriteLine($"one row in inference mode:           {Show(single.Row(0))}");

static string Show(Vector<double> v) => string.Join("  ", v.Select(e => e.ToString("G6", System.Globalization.CultureInfo.InvariantCulture)));
