// The package smoke test's consumer (.ci/package-smoke-test copies it into a fresh console app).
using System;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using BatchNorm;
using MathNet.Numerics.LinearAlgebra;

var layer = new BatchNormLayer(2);
var x = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 10 }, { 2, 20 }, { 6, 60 } });
Matrix<double> y = layer.Forward(x);
// Column 0: mean 3, biased variance 14/3, so y = (x − 3)/√(14/3 + 1e-5).
double expected = (1 - 3) / Math.Sqrt(14.0 / 3 + 1e-5);
var dy = Matrix<double>.Build.DenseOfArray(new[,] { { 1.0, 0 }, { 0, 2 }, { -3, 1 } });
Matrix<double> dx = layer.Backward(dy);
bool computes = Math.Abs(y[0, 0] - expected) < 1e-14
    && Math.Abs(dx.Column(0).Sum()) < 1e-14 && Math.Abs(dx.Column(1).Sum()) < 1e-14
    && layer.BetaGradient[0] == -2 && layer.BetaGradient[1] == 3
    && Math.Abs(layer.RunningMean[0] - 0.3) < 1e-15;
Console.WriteLine($"  y[0,0] = {y[0, 0]:R} (expected {expected:R}), Σdx = {dx.ColumnSums()[0]:E1}, {dx.ColumnSums()[1]:E1}");

// The consumer gets the package's build for its own framework.
string? library = typeof(BatchNormLayer).Assembly.GetCustomAttribute<System.Runtime.Versioning.TargetFrameworkAttribute>()?.FrameworkName;
string? consumer = Assembly.GetEntryAssembly()?.GetCustomAttribute<System.Runtime.Versioning.TargetFrameworkAttribute>()?.FrameworkName;
bool matching = library is not null && library == consumer;
Console.WriteLine($"  library built for {library}, consumer for {consumer}");

// The DLL embeds its portable PDB, and the PDB embeds every source file under a deterministic path.
string dll = typeof(BatchNormLayer).Assembly.Location;
using var pe = new PEReader(File.OpenRead(dll));
DebugDirectoryEntry entry = pe.ReadDebugDirectory().Single(e => e.Type == DebugDirectoryEntryType.EmbeddedPortablePdb);
using MetadataReaderProvider pdb = pe.ReadEmbeddedPortablePdbDebugDirectoryData(entry);
MetadataReader reader = pdb.GetMetadataReader();
var embeddedSource = new Guid("0E8A571B-6926-466E-B4AD-8AB04611F5FE");
string[] documents = [.. reader.Documents.Select(d => reader.GetString(reader.GetDocument(d).Name)).Where(n => n.EndsWith(".cs", StringComparison.Ordinal))];
int embedded = reader.CustomDebugInformation
    .Select(reader.GetCustomDebugInformation)
    .Count(c => c.Parent.Kind == HandleKind.Document && reader.GetGuid(c.Kind) == embeddedSource);
bool debuggable = documents.Any(d => d.EndsWith("/Layers/BatchNormLayer.cs", StringComparison.Ordinal))
    && documents.All(d => d.StartsWith("/_/", StringComparison.Ordinal))
    && embedded >= documents.Length;
Console.WriteLine($"  {Path.GetFileName(dll)}: embedded PDB with {documents.Length} source documents, {embedded} sources embedded, first {documents.FirstOrDefault()}");

// A stack trace out of the library names the file and the line.
string trace = "";
try
{
    layer.Forward(Matrix<double>.Build.Dense(3, 5));
}
catch (ArgumentException e)
{
    trace = e.StackTrace ?? "";
}

bool lines = trace.Contains("/_/src/BatchNorm/", StringComparison.Ordinal) && trace.Contains(":line ", StringComparison.Ordinal);
Console.WriteLine($"  stack trace with file and line: {lines}");
Console.WriteLine($"  {(computes && matching && debuggable && lines ? "OK" : "WRONG")} on .NET {Environment.Version}");
return computes && matching && debuggable && lines ? 0 : 1;
