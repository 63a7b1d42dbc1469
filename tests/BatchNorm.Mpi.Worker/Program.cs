using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text.Json;
using BatchNorm.Mpi;
using BatchNorm.Mpi.Worker;

// One rank of the multi-process tests, run under mpirun: BatchNorm.Mpi.Worker OUT_DIR CASE..., where a case is
//   train:B       3 training steps with each strategy on rows B[r]..B[r+1] of the global batch (B = 0,1,5,13 say)
//   tworows:B     the two-row global batch with each strategy
//   bad:R:B       NaN and +∞ on rank R, rejected by every rank, then a good step
//   split         the world split into ranks {0, 1} and {2, ...}, each group synchronized on its own communicator
//   preinit       the program initializes MPI itself, before MpiSession.Start, and finalizes it after
// Each rank writes OUT_DIR/rank<r>.json.
string outDirectory = args[0];
string[] cases = args[1..];
bool preinit = cases.Contains("preinit");

string notInitialized = Failure(() => _ = new MpiStatisticsExchange());
if (preinit)
{
    Native.Check(Native.MPI_Init(0, 0), "MPI_Init");
}

var session = MpiSession.Start();
var world = new MpiStatisticsExchange();
var results = new List<CaseRecord>();
foreach (string c in cases.Where(c => c != "preinit"))
{
    string[] parts = c.Split(':');
    switch (parts[0])
    {
        case "train":
            results.AddRange(["closed", "staged"], s => Cases.Train(s, world, Bounds(parts[1]), world.Rank, steps: 3, seed: 1));
            break;
        case "tworows":
            results.AddRange(["closed", "staged"], s => Cases.TwoRows(s, world, Bounds(parts[1]), world.Rank));
            break;
        case "bad":
            results.Add(Cases.BadData(world, Bounds(parts[2]), world.Rank, int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture)));
            break;
        case "split":
            results.Add(SplitCase(world));
            break;
        default:
            throw new ArgumentException($"unknown case '{c}'");
    }
}

session.Dispose();
bool finalizedAfterDispose = Native.Finalized();
string usableAfterDispose = Failure(() => world.AllReduceSum(new double[1]));
if (preinit)
{
    Native.Check(Native.MPI_Finalize(), "MPI_Finalize");
}

var report = new RankReport(world.Rank, world.WorkerCount, MpiSession.LibraryVersion, notInitialized, session.OwnsInitialization, session.ThreadLevel, finalizedAfterDispose, usableAfterDispose, results);
File.WriteAllText(Path.Combine(outDirectory, $"rank{world.Rank}.json"), JsonSerializer.Serialize(report));
return 0;

static int[] Bounds(string text) => [.. text.Split(',').Select(s => int.Parse(s, System.Globalization.CultureInfo.InvariantCulture))];

// Ranks 0 and 1 train together on a communicator of their own, the others alone: a communicator the program made.
static CaseRecord SplitCase(MpiStatisticsExchange world)
{
    int color = world.Rank < 2 ? 0 : 1;
    Native.Check(Native.MPI_Comm_split(world.Communicator, color, world.Rank, out nint communicator), "MPI_Comm_split");
    try
    {
        var exchange = new MpiStatisticsExchange(communicator);
        int[] bounds = color == 0 ? [0, 3, 9] : [0, 4];
        return Cases.Train("closed", exchange, bounds, exchange.Rank, steps: 2, seed: 3 + color) with { Name = $"split {color}" };
    }
    finally
    {
        Native.Check(Native.MPI_Comm_free(ref communicator), "MPI_Comm_free");
    }
}

static string Failure(Action action)
{
    try
    {
        action();
        return "no exception";
    }
    catch (InvalidOperationException e)
    {
        return e.Message;
    }
}

/// <summary>The MPI calls a program makes on its own, beside the package: as a user's program would, through its own binding.</summary>
internal static partial class Native
{
    private const string Library = "libmpi.so.40";

    [LibraryImport(Library)]
    public static partial int MPI_Init(nint argc, nint argv);

    [LibraryImport(Library)]
    public static partial int MPI_Finalize();

    [LibraryImport(Library)]
    public static partial int MPI_Finalized(out int flag);

    [LibraryImport(Library)]
    public static partial int MPI_Comm_split(nint communicator, int color, int key, out nint result);

    [LibraryImport(Library)]
    public static partial int MPI_Comm_free(ref nint communicator);

    public static bool Finalized()
    {
        Check(MPI_Finalized(out int flag), nameof(MPI_Finalized));
        return flag != 0;
    }

    public static void Check(int code, string call)
    {
        if (code != 0)
        {
            throw new InvalidOperationException($"{call} returned {code}");
        }
    }
}

/// <summary>Adds one case per strategy.</summary>
internal static class ListExtensions
{
    public static void AddRange(this List<CaseRecord> list, string[] strategies, Func<string, CaseRecord> run)
    {
        foreach (string s in strategies)
        {
            list.Add(run(s));
        }
    }
}
