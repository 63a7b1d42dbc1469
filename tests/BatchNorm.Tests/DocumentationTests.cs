using System.IO;
using System.Text.RegularExpressions;

namespace BatchNorm.Tests;

/// <summary>
/// The documents say what the code does: docs/derivation.md quotes the code each equation links to, the quick start
/// of both READMEs is the sample that runs, the repository README's links lead somewhere, and the package README
/// (shown by NuGet without the repository around it) links only absolutely.
/// </summary>
public partial class DocumentationTests
{
    [Theory]
    [InlineData("README.md")]
    [InlineData("src/BatchNorm/PACKAGE.md")]
    public void The_quick_start_is_the_sample_that_runs(string document)
    {
        string root = Repository();
        string[] sample = File.ReadAllLines(Path.Combine(root, "samples", "QuickStart", "Program.cs"));
        int first = System.Array.FindIndex(sample, l => l.StartsWith("var layer", System.StringComparison.Ordinal));
        int last = System.Array.FindIndex(sample, l => l.StartsWith("Matrix<double> single", System.StringComparison.Ordinal));
        string expected = string.Join("\n", sample[first..(last + 1)]);
        Match block = CSharpBlock().Match(File.ReadAllText(Path.Combine(root, document)));
        Assert.True(block.Success, $"{document} has no C# block");
        Assert.Equal(expected, block.Groups["code"].Value.ReplaceLineEndings("\n").TrimEnd());
    }

    [Fact]
    public void Every_relative_link_of_the_readme_leads_to_a_file()
    {
        string root = Repository();
        MatchCollection links = MarkdownLink().Matches(File.ReadAllText(Path.Combine(root, "README.md")));
        Assert.True(links.Count >= 10, $"only {links.Count} links found");
        foreach (Match link in links)
        {
            string target = link.Groups["target"].Value;
            if (target.StartsWith("http", System.StringComparison.Ordinal) || target.StartsWith('#'))
            {
                continue;
            }

            string path = Path.Combine(root, target.Split('#')[0]);
            Assert.True(File.Exists(path) || Directory.Exists(path), $"README links to {target}, which does not exist");
        }
    }

    [Fact]
    public void The_package_readme_links_only_absolutely()
    {
        MatchCollection links = MarkdownLink().Matches(File.ReadAllText(Path.Combine(Repository(), "src", "BatchNorm", "PACKAGE.md")));
        Assert.NotEmpty(links);
        Assert.All(links, link => Assert.StartsWith("https://", link.Groups["target"].Value, System.StringComparison.Ordinal));
    }

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

    [GeneratedRegex(@"```csharp\r?\n(?<code>.*?)```", RegexOptions.Singleline)]
    private static partial Regex CSharpBlock();

    [GeneratedRegex(@"\]\((?<target>[^)\s]+)\)")]
    private static partial Regex MarkdownLink();

    [GeneratedRegex(@"\[`(?<code>[^`]+)`\]\((?<path>\.\./(?:src|tests)/[^#)]+)#L(?<line>\d+)\)")]
    private static partial Regex CodeLink();
}
