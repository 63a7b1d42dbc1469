using System.IO;
using System.Linq;
using ScottPlot;
using ScottPlot.Plottables;

namespace DigitsMlp.Tests;

public class ChartTests
{
    private static RunResult[] Runs() =>
    [
        new(new RunSettings(Normalization.Parse("batch"), 0.05), [new(1, 1.2, 0.7, 0.91), new(2, 0.4, 0.93, 0.96), new(3, 0.2, 0.97, 0.975)]),
        new(new RunSettings(Normalization.Parse("none"), 0.05), [new(1, 1.9, 0.5, 0.6), new(2, 0.9, 0.8, 0.88), new(3, 0.5, 0.9, 0.92)]),
        new(new RunSettings(Normalization.Parse("none"), 1.5), [new(1, double.NaN, 0.1, 0.1), new(2, double.NaN, 0.1, 0.1), new(3, double.NaN, 0.1, 0.1)]),
    ];

    [Fact]
    public void The_chart_has_an_error_panel_and_a_loss_panel_with_a_series_per_run()
    {
        Multiplot chart = LearningCurveChart.Build(Runs());
        Plot error = chart.GetPlot(0), loss = chart.GetPlot(1);
        Scatter[] errors = [.. error.GetPlottables().OfType<Scatter>()], losses = [.. loss.GetPlottables().OfType<Scatter>()];
        Assert.Equal(["BatchNorm, rate 0.05", "plain, rate 0.05", "plain, rate 1.5"], errors.Select(s => s.LegendText));
        Assert.Equal(3, losses.Length);
        Assert.Empty(losses[2].Data.GetScatterPoints());      // a run that diverged has no loss to draw
        Assert.Equal([LinePattern.Solid, LinePattern.Dashed, LinePattern.Dashed], errors.Select(s => s.LinePattern));
        Assert.Equal(3, errors.Select(s => s.Color).Distinct().Count());

        // Test error on a log axis: 91% accuracy is 9% error, drawn at log10(0.09).
        Assert.Equal(System.Math.Log10(0.09), errors[0].Data.GetScatterPoints()[0].Y, 12);
        HorizontalLine[] guides = [.. error.GetPlottables().OfType<HorizontalLine>()];
        Assert.Equal([System.Math.Log10(0.10), System.Math.Log10(0.05)], guides.Select(g => g.Y).ToArray(), new Tolerance());
        Assert.All(guides, g => Assert.Equal(LinePattern.Dashed, g.LinePattern));
        Assert.Equal(["90% accuracy", "95% accuracy"], error.GetPlottables().OfType<Text>().Select(t => t.LabelText));
        Assert.Equal("test error", error.Axes.Left.Label.Text);
        Assert.Equal("epoch", loss.Axes.Bottom.Label.Text);

        // A tick for every epoch.
        Assert.IsType<ScottPlot.TickGenerators.NumericFixedInterval>(error.Axes.Bottom.TickGenerator);
        Assert.Equal(1, ((ScottPlot.TickGenerators.NumericFixedInterval)error.Axes.Bottom.TickGenerator).Interval);
    }

    [Fact]
    public void The_png_and_the_svg_are_written_at_the_stated_size_with_dashed_plain_runs()
    {
        Multiplot chart = LearningCurveChart.Build(Runs());
        string folder = Directory.CreateTempSubdirectory().FullName, png = Path.Combine(folder, "c.png"), svg = Path.Combine(folder, "c.svg");
        LearningCurveChart.SavePng(chart, png);
        LearningCurveChart.SaveSvg(chart, svg);

        // The PNG header holds the width and height, big-endian, at bytes 16 to 23.
        byte[] header = File.ReadAllBytes(png)[..24];
        Assert.Equal(0x89, header[0]);
        Assert.Equal(LearningCurveChart.Width, (header[16] << 24) | (header[17] << 16) | (header[18] << 8) | header[19]);
        Assert.Equal(LearningCurveChart.Height, (header[20] << 24) | (header[21] << 16) | (header[22] << 8) | header[23]);

        var document = System.Xml.Linq.XDocument.Load(svg);    // throws if not well-formed
        Assert.Equal(LearningCurveChart.Width.ToString(System.Globalization.CultureInfo.InvariantCulture), document.Root!.Attribute("width")!.Value);
        string xml = File.ReadAllText(svg);
        Scatter[] errors = [.. chart.GetPlot(0).GetPlottables().OfType<Scatter>()];
        Assert.Contains($"stroke=\"{errors[1].Color.ToHex()}\" stroke-dasharray", xml, System.StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain($"stroke=\"{errors[0].Color.ToHex()}\" stroke-dasharray", xml, System.StringComparison.OrdinalIgnoreCase);
        Assert.Equal(LinePattern.Dashed, errors[1].LinePattern);      // the chart itself is left as it was
    }

    private sealed class Tolerance : System.Collections.Generic.IEqualityComparer<double>
    {
        public bool Equals(double a, double b) => System.Math.Abs(a - b) < 1e-12;

        public int GetHashCode(double value) => 0;
    }
}
