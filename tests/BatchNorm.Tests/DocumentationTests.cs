using System.IO;
using System.Text.RegularExpressions;

namespace BatchNorm.Tests;

/// <summary>docs/derivation.md quotes the code each equation links to; the quote must be on the linked line.</summary>
public partial class DocumentationTests
{
    [Fact]
    public void Every_derivation_link_points_at_the_code_it_quotes()
    {
        string root = Repository();
        string doc = File.ReadAllText(Path.Combine(root, "docs", "derivation.md"));
        MatchCollection links = CodeLink().Matches(doc);
        Assert.True(links.Count >= 20, $"only {links.Count} code links found");
        foreach (Match link in links)
        {
            string[] lines = File.ReadAllLines(Path.Combine(root, "docs", link.Groups["path"].Value));
            int line = int.Parse(link.Groups["line"].Value, System.Globalization.CultureInfo.InvariantCulture);
            Assert.True(line <= lines.Length && lines[line - 1].Contains(link.Groups["code"].Value, System.StringComparison.Ordinal), $"{link.Value} does not point at its code");
        }
    }

    private static string Repository()
    {
        string? directory = System.AppContext.BaseDirectory;
        while (directory is not null && !File.Exists(Path.Combine(directory, "BatchNorm.sln")))
        {
            directory = Path.GetDirectoryName(directory);
        }

        return directory ?? throw new DirectoryNotFoundException("BatchNorm.sln not found above the test assembly.");
    }

    [GeneratedRegex(@"\[`(?<code>[^`]+)`\]\((?<path>\.\./(?:src|tests)/[^#)]+)#L(?<line>\d+)\)")]
    private static partial Regex CodeLink();
}
