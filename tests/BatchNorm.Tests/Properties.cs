using System;
using System.Globalization;
using FsCheck.Xunit;

namespace BatchNorm.Tests;

/// <summary>
/// The one FsCheck configuration every property in the suite runs with: FsCheck.Xunit's <see cref="PropertyAttribute"/>
/// with the test data of <see cref="Arbitraries"/> registered, 100 cases, and two environment variables:
/// <c>BATCHNORM_PROPERTY_CASES</c> sets the case count for a longer soak, and <c>BATCHNORM_PROPERTY_SEED</c>
/// ("seed,gamma", as a failure prints it) replays one random sequence in every property, as mutation testing needs
/// for verdicts that can be repeated. Without it each run draws new seeds, and a failure prints the seed and the shrunk
/// counter-example.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class BatchNormPropertyAttribute : PropertyAttribute
{
    private int _factor = 1;

    /// <summary>Applies the shared configuration.</summary>
    public BatchNormPropertyAttribute()
    {
        MaxTest = Properties.CaseCount;
        Arbitrary = [typeof(Arbitraries)];
        QuietOnSuccess = true;
        if (Properties.Seed is string seed)
        {
            Replay = seed;
        }
    }

    /// <summary>
    /// Gets or sets how many times the configured case count this property runs: for one that draws its strategy or mode
    /// among several, so that each still gets its share of cases.
    /// </summary>
    public int CasesFactor
    {
        get => _factor;
        set
        {
            _factor = value;
            MaxTest = Properties.CaseCount * value;
        }
    }
}

/// <summary>The environment the property configuration reads.</summary>
internal static class Properties
{
    /// <summary>Gets the case count: 100, or BATCHNORM_PROPERTY_CASES.</summary>
    public static int CaseCount { get; } = Read("BATCHNORM_PROPERTY_CASES", 100);

    /// <summary>Gets the seed every property replays, or null to draw new ones.</summary>
    public static string? Seed { get; } = Environment.GetEnvironmentVariable("BATCHNORM_PROPERTY_SEED") is { Length: > 0 } seed ? CheckedSeed(seed) : null;

    private static int Read(string name, int fallback)
    {
        string? value = Environment.GetEnvironmentVariable(name);
        return string.IsNullOrEmpty(value) ? fallback
            : int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int cases) && cases > 0 ? cases
            : throw new InvalidOperationException($"{name} must be a positive integer, not '{value}'.");
    }

    private static string CheckedSeed(string seed)
    {
        string[] parts = seed.Trim('(', ')', ' ').Split(',');
        return parts.Length is 2 or 3 && Array.TrueForAll(parts, p => ulong.TryParse(p.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out _))
            ? string.Join(",", parts[..2])
            : throw new InvalidOperationException($"BATCHNORM_PROPERTY_SEED must be two unsigned integers as a failure prints them, \"seed,gamma\", not '{seed}'.");
    }
}
