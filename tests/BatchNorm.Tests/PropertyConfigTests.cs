using FsCheck.Fluent;

namespace BatchNorm.Tests;

/// <summary>The shared FsCheck configuration does what it says.</summary>
public class PropertyConfigTests
{
    [Fact]
    public void Every_property_runs_the_configured_number_of_cases()
    {
        int cases = 0;
        Properties.Check(FsCheck.Fluent.ArbMap.Default.ArbFor<int>(), _ => cases++);
        Assert.Equal(Properties.Config.MaxTest, cases);
    }
}
