using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Security;
using System.Text;

namespace DigitsMlp;

/// <summary>One line of a chart: a name for the legend and its points. NaN values leave a gap.</summary>
/// <param name="Name">The legend text.</param>
/// <param name="Points">(x, y) pairs in data units.</param>
public sealed record ChartSeries(string Name, IReadOnlyList<(double X, double Y)> Points);

/// <summary>A minimal SVG line chart: axes with ticks and labels, one coloured line per series, and a legend.</summary>
public static class SvgChart
{
    private static readonly string[] Colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

    /// <summary>Renders the chart as a standalone SVG document.</summary>
    /// <param name="title">The title above the plot.</param>
    /// <param name="xLabel">The x-axis label.</param>
    /// <param name="yLabel">The y-axis label.</param>
    /// <param name="series">The lines.</param>
    /// <param name="yMin">The bottom of the y axis.</param>
    /// <param name="yMax">The top of the y axis.</param>
    /// <returns>The SVG text.</returns>
    public static string Render(string title, string xLabel, string yLabel, IReadOnlyList<ChartSeries> series, double yMin, double yMax)
    {
        ArgumentNullException.ThrowIfNull(series);
        const double width = 760, height = 460, left = 70, right = 200, top = 40, bottom = 60;
        double plotWidth = width - left - right, plotHeight = height - top - bottom;
        double xMax = Math.Max(1, series.SelectMany(s => s.Points).Select(p => p.X).DefaultIfEmpty(1).Max());
        double X(double x) => left + (plotWidth * (x - 1) / Math.Max(1, xMax - 1));
        double Y(double y) => top + (plotHeight * (1 - ((Math.Clamp(y, yMin, yMax) - yMin) / (yMax - yMin))));

        var svg = new StringBuilder();
        svg.Append(Invariant($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n"));
        svg.Append(Invariant($"  <rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n"));
        svg.Append(Invariant($"  <text x=\"{left + (plotWidth / 2)}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{Escape(title)}</text>\n"));
        for (int k = 0; k <= 5; k++)
        {
            double value = yMin + ((yMax - yMin) * k / 5);
            svg.Append(Invariant($"  <line x1=\"{left}\" y1=\"{Y(value):F1}\" x2=\"{left + plotWidth}\" y2=\"{Y(value):F1}\" stroke=\"#e0e0e0\"/>\n"));
            svg.Append(Invariant($"  <text x=\"{left - 8}\" y=\"{Y(value) + 4:F1}\" text-anchor=\"end\">{value:0.##}</text>\n"));
        }

        int step = Math.Max(1, (int)Math.Ceiling(xMax / 10));
        for (int x = 1; x <= xMax; x += step)
        {
            svg.Append(Invariant($"  <line x1=\"{X(x):F1}\" y1=\"{top + plotHeight}\" x2=\"{X(x):F1}\" y2=\"{top + plotHeight + 5}\" stroke=\"black\"/>\n"));
            svg.Append(Invariant($"  <text x=\"{X(x):F1}\" y=\"{top + plotHeight + 18}\" text-anchor=\"middle\">{x}</text>\n"));
        }

        svg.Append(Invariant($"  <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{top + plotHeight}\" stroke=\"black\"/>\n"));
        svg.Append(Invariant($"  <line x1=\"{left}\" y1=\"{top + plotHeight}\" x2=\"{left + plotWidth}\" y2=\"{top + plotHeight}\" stroke=\"black\"/>\n"));
        svg.Append(Invariant($"  <text x=\"{left + (plotWidth / 2)}\" y=\"{height - 15}\" text-anchor=\"middle\">{Escape(xLabel)}</text>\n"));
        svg.Append(Invariant($"  <text transform=\"translate(18 {top + (plotHeight / 2)}) rotate(-90)\" text-anchor=\"middle\">{Escape(yLabel)}</text>\n"));

        for (int s = 0; s < series.Count; s++)
        {
            string colour = Colours[s % Colours.Length];
            foreach (IEnumerable<(double X, double Y)> segment in FiniteSegments(series[s].Points))
            {
                string points = string.Join(" ", segment.Select(p => Invariant($"{X(p.X):F1},{Y(p.Y):F1}")));
                svg.Append(Invariant($"  <polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>\n"));
            }

            double legendY = top + 10 + (s * 22);
            svg.Append(Invariant($"  <line x1=\"{width - right + 15}\" y1=\"{legendY}\" x2=\"{width - right + 40}\" y2=\"{legendY}\" stroke=\"{colour}\" stroke-width=\"3\"/>\n"));
            svg.Append(Invariant($"  <text x=\"{width - right + 46}\" y=\"{legendY + 4}\">{Escape(series[s].Name)}</text>\n"));
        }

        svg.Append("</svg>\n");
        return svg.ToString();
    }

    private static IEnumerable<IEnumerable<(double X, double Y)>> FiniteSegments(IReadOnlyList<(double X, double Y)> points)
    {
        var current = new List<(double X, double Y)>();
        foreach ((double X, double Y) p in points)
        {
            if (double.IsFinite(p.Y))
            {
                current.Add(p);
            }
            else if (current.Count > 0)
            {
                yield return current;
                current = [];
            }
        }

        if (current.Count > 0)
        {
            yield return current;
        }
    }

    private static string Escape(string text) => SecurityElement.Escape(text) ?? string.Empty;

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
