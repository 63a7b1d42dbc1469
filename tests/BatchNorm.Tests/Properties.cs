using FsCheck;
using FsCheck.Fluent;

namespace BatchNorm.Tests;

/// <summary>The one FsCheck configuration every property in the suite runs with.</summary>
internal static class Properties
{
    /// <summary>100 cases per property; a failure throws with the shrunk counter-example and the seed to replay it.</summary>
    public static readonly Config Config = Config.QuickThrowOnFailure.WithMaxTest(100);

    public static void Check(Property property) => FsCheck.Check.One(Config, property);

    public static void Check<T>(Arbitrary<T> arbitrary, System.Action<T> assertion)
        => Check(Prop.ForAll(arbitrary, assertion));
}
