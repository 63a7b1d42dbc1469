using System.IO;
using System.Text.RegularExpressions;

namespace BatchNorm.Mpi.Tests;

/// <summary>docs/mpi.md's links lead somewhere; the package README, shown by NuGet without the repository, links only absolutely.</summary>
public partial class DocumentationTests
{
    [Fact]
    public void Every_relative_link_of_the_MPI_documentation_leads_to_a_file()
    {
        string docs = Path.Combine(Repository(), "docs");
        MatchCollection links = MarkdownLink().Matches(File.ReadAllText(Path.Combine(docs, "mpi.md")));
        Assert.True(links.Count >= 5, $"only {links.Count} links found");
        foreach (Match link in links)
        {
            string target = link.Groups["target"].Value;
            if (!target.StartsWith("http", System.StringComparison.Ordinal) && !target.StartsWith('#'))
            {
                string path = Path.Combine(docs, target.Split('#')[0]);
                Assert.True(File.Exists(path) || Directory.Exists(path), $"docs/mpi.md links to {target}, which does not exist");
            }
        }
    }

    [Fact]
    public void The_package_readme_links_only_absolutely_and_says_how_to_install_OpenMPI()
    {
        string readme = File.ReadAllText(Path.Combine(Repository(), "src", "BatchNorm.Mpi", "PACKAGE.md"));
        MatchCollection links = MarkdownLink().Matches(readme);
        Assert.NotEmpty(links);
        Assert.All(links, link => Assert.StartsWith("https://", link.Groups["target"].Value, System.StringComparison.Ordinal));
        Assert.Contains("apt-get install openmpi-bin libopenmpi-dev", readme, System.StringComparison.Ordinal);
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

    [GeneratedRegex(@"\]\((?<target>[^)\s]+)\)")]
    private static partial Regex MarkdownLink();
}
