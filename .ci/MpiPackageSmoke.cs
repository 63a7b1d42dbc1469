// The consumer of .ci/mpi-package-smoke-test: run under mpirun -n 2 after installing BatchNorm.Mpi from a local feed.
using System;
using BatchNorm;
using BatchNorm.Mpi;
using MathNet.Numerics.LinearAlgebra;

using var session = MpiSession.Start();
var exchange = new MpiStatisticsExchange();
var x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 10 }, { 2, 20 }, { 6, 60 }, { -4, 7 }, { 0.5, 3 } });
var dy = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0 }, { 0, 2 }, { -3, 1 }, { 0.25, -1 }, { 2, 0.5 } });
int[] bounds = [0, 2, 5];
int rank = exchange.Rank, rows = bounds[rank + 1] - bounds[rank];

// Rank r trains on its rows, synchronized; the reference is one layer on all five rows.
var layer = new BatchNormLayer(2) { StatisticsExchange = exchange };
Matrix<double> y = layer.Forward(x.SubMatrix(bounds[rank], rows, 0, 2)), dx = layer.Backward(dy.SubMatrix(bounds[rank], rows, 0, 2));
var whole = new BatchNormLayer(2);
Matrix<double> wholeY = whole.Forward(x), wholeDx = whole.Backward(dy);
double error = Math.Max((y - wholeY.SubMatrix(bounds[rank], rows, 0, 2)).InfinityNorm(), (dx - wholeDx.SubMatrix(bounds[rank], rows, 0, 2)).InfinityNorm());
error = Math.Max(error, (layer.GammaGradient - whole.GammaGradient).InfinityNorm());
bool good = exchange.WorkerCount == 2 && error < 1e-12;
string? framework = (Attribute.GetCustomAttribute(typeof(MpiStatisticsExchange).Assembly, typeof(System.Runtime.Versioning.TargetFrameworkAttribute)) as System.Runtime.Versioning.TargetFrameworkAttribute)?.FrameworkName;
good &= framework == ".NETCoreApp,Version=v8.0";
Console.WriteLine($"  rank {rank} of {exchange.WorkerCount} on .NET {Environment.Version}, BatchNorm.Mpi built for {framework}: "
    + $"largest difference from one layer on the whole batch {error:E1} {(good ? "OK" : "WRONG")}");
return good ? 0 : 1;
