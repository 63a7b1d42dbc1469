using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;
using BatchNorm.Mpi.Worker;

namespace BatchNorm.Mpi.Tests;

/// <summary>
/// A program run under mpirun by the tests: found beside the test assembly, started once per job, killed with all its
/// ranks if it outlives its timeout, which fails every test that needs it.
/// </summary>
internal static class MpiJob
{
    /// <summary>How to get mpirun, for a skipped or failed test.</summary>
    private const string Install = "install OpenMPI: apt-get install openmpi-bin libopenmpi-dev (.ci/run does so where mpirun is missing).";

    /// <summary>What a skipped test says, on a machine without MPI.</summary>
    public const string SkipMessage = "mpirun is not on PATH, so the multi-process MPI tests are skipped. To run them, " + Install;

    /// <summary>Gets the full path of mpirun on PATH, or null.</summary>
    public static string? Mpirun { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "")
        .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
        .Select(folder => Path.Combine(folder, "mpirun"))
        .FirstOrDefault(File.Exists);

    /// <summary>
    /// Skips the calling test where mpirun is missing, unless BATCHNORM_REQUIRE_MPI=1 (set by .ci/run), which makes a
    /// missing mpirun a failure, so that CI cannot pass by skipping.
    /// </summary>
    public static void RequireMpirun()
    {
        if (Mpirun is null && Environment.GetEnvironmentVariable("BATCHNORM_REQUIRE_MPI") == "1")
        {
            Assert.Fail("BATCHNORM_REQUIRE_MPI=1 asks for the multi-process MPI tests, but mpirun is not on PATH: " + Install);
        }

        Skip.If(Mpirun is null, SkipMessage);
    }

    /// <summary>
    /// Runs <c>mpirun -n ranks dotnet program args</c>, as root where the tests run as root, with more ranks than cores
    /// allowed and waiting ranks yielding their core (on a busy machine, spinning ranks slow each other down); fails if it does not end within <paramref name="timeout"/> (then it and every rank are killed) or ends
    /// with an exit code other than 0.
    /// </summary>
    /// <returns>What the job printed.</returns>
    public static string Run(int ranks, string program, IEnumerable<string> args, TimeSpan timeout)
    {
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        var start = new ProcessStartInfo(Mpirun!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in (string[])["-n", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture), "--oversubscribe", "--mca", "mpi_yield_when_idle", "1", dotnet, program, .. args])
        {
            start.ArgumentList.Add(a);
        }

        // OpenMPI refuses to run as root unless told twice; CI runs as root.
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
        var output = new StringBuilder();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => Append(output, e.Data);
        process.ErrorDataReceived += (_, e) => Append(output, e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"mpirun -n {ranks} {Path.GetFileName(program)} did not end within {timeout.TotalSeconds} s, so a rank hangs; it was killed. Output:\n{Text(output)}");
        }

        process.WaitForExit();   // drains the redirected output
        Assert.True(process.ExitCode == 0, $"mpirun -n {ranks} {Path.GetFileName(program)} exited with {process.ExitCode}. Output:\n{Text(output)}");
        return Text(output);
    }

    /// <summary>Runs the worker program with <paramref name="cases"/> and reads every rank's report.</summary>
    /// <returns>The reports, by rank.</returns>
    public static RankReport[] RunWorker(int ranks, params string[] cases)
    {
        string folder = Directory.CreateTempSubdirectory("batchnorm-mpi-").FullName;
        try
        {
            Run(ranks, typeof(Cases).Assembly.Location, [folder, .. cases], TimeSpan.FromSeconds(120));
            return [.. Enumerable.Range(0, ranks).Select(r =>
            {
                string file = Path.Combine(folder, $"rank{r}.json");
                Assert.True(File.Exists(file), $"rank {r} wrote no report");
                return JsonSerializer.Deserialize<RankReport>(File.ReadAllText(file))!;
            })];
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static void Append(StringBuilder output, string? line)
    {
        if (line is not null)
        {
            lock (output)
            {
                output.AppendLine(line);
            }
        }
    }

    private static string Text(StringBuilder output)
    {
        lock (output)
        {
            return output.ToString();
        }
    }
}
