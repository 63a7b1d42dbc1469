using System.Linq;
using System.Xml.Linq;

namespace DigitsMlp.Tests;

public class SvgChartTests
{
    [Fact]
    public void The_chart_is_a_well_formed_svg_with_axes_lines_and_a_legend()
    {
        ChartSeries[] series =
        [
            new("BatchNorm <fast> & \"good\"", [(1, 0.5), (2, 0.9), (3, 0.97)]),
            new("plain", [(1, 0.2), (2, double.NaN), (3, 0.4)]),
        ];
        string svg = SvgChart.Render("Test accuracy", "epoch", "test accuracy", series, 0, 1);

        XDocument document = XDocument.Parse(svg);   // throws if not well-formed
        XNamespace ns = "http://www.w3.org/2000/svg";
        Assert.Equal(ns + "svg", document.Root!.Name);
        string[] texts = document.Descendants(ns + "text").Select(t => t.Value).ToArray();
        Assert.Contains("epoch", texts);
        Assert.Contains("test accuracy", texts);
        Assert.Contains("BatchNorm <fast> & \"good\"", texts);
        Assert.Contains("plain", texts);
        // One polyline for the first series; the NaN splits the second into two pieces.
        Assert.Equal(3, document.Descendants(ns + "polyline").Count());
    }
}
