namespace BatchNorm.Tests;

/// <summary>The shared FsCheck configuration does what it says.</summary>
public class PropertyConfigTests
{
    [Fact]
    public void The_attribute_carries_the_case_count_the_arbitraries_and_the_seed()
    {
        var attribute = new BatchNormPropertyAttribute();
        Assert.Equal(Properties.CaseCount, attribute.MaxTest);
        Assert.Equal([typeof(Arbitraries)], attribute.Arbitrary);
        Assert.Equal(Properties.Seed, attribute.Replay);
        Assert.Equal(3 * Properties.CaseCount, new BatchNormPropertyAttribute { CasesFactor = 3 }.MaxTest);
        Assert.Equal(7, new BatchNormPropertyAttribute { MaxTest = 7 }.MaxTest);
    }

    [BatchNormProperty(MaxTest = 17)]
    public void A_property_runs_its_cases_with_registered_arbitraries(LayerKind kind, BackwardStrategy strategy)
    {
        Assert.Contains(kind.Name, ContractTests.Kinds);
        Assert.NotNull(strategy.Name);
    }
}
