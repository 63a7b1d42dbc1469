using System.Reflection;
using System.Runtime.Versioning;

namespace BatchNorm.Tests;

/// <summary>The tests run once per target framework of the library, each against the library's build for it.</summary>
public class BuildTests
{
    [Fact]
    public void Each_test_build_runs_the_library_build_of_its_own_framework()
    {
        string? library = typeof(BatchNormLayer).Assembly.GetCustomAttribute<TargetFrameworkAttribute>()?.FrameworkName;
        string? tests = typeof(BuildTests).Assembly.GetCustomAttribute<TargetFrameworkAttribute>()?.FrameworkName;
        Assert.NotNull(library);
        Assert.Equal(tests, library);
    }
}
