using FsCheck;
using FsCheck.Fluent;

namespace BatchNorm.Tests;

/// <summary>The one FsCheck configuration every property in the suite runs with.</summary>
internal static class Properties
{
    /// <summary>
    /// 100 cases per property, or as many as the environment variable BATCHNORM_PROPERTY_CASES asks for a longer soak;
    /// a failure throws with the shrunk counter-example and the seed to replay it.
    /// </summary>
    public static readonly Config Config = Config.QuickThrowOnFailure.WithMaxTest(CaseCount());

    private static int CaseCount()
    {
        string? value = System.Environment.GetEnvironmentVariable("BATCHNORM_PROPERTY_CASES");
        return string.IsNullOrEmpty(value) ? 100
            : int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int cases) && cases > 0 ? cases
            : throw new System.InvalidOperationException($"BATCHNORM_PROPERTY_CASES must be a positive integer, not '{value}'.");
    }

    public static void Check(Property property) => FsCheck.Check.One(Config, property);

    public static void Check<T>(Arbitrary<T> arbitrary, System.Action<T> assertion)
        => Check(Prop.ForAll(arbitrary, assertion));
}
