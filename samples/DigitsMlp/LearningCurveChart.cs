using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using ScottPlot;
using ScottPlot.Plottables;
using SkiaSharp;

namespace DigitsMlp;

/// <summary>One run's learning curve, as the chart draws it.</summary>
/// <param name="Settings">The run.</param>
/// <param name="Epochs">What each epoch measured.</param>
public sealed record RunResult(RunSettings Settings, IReadOnlyList<EpochResult> Epochs);

/// <summary>
/// The demo's learning curves, drawn with ScottPlot: test error on a logarithmic axis above (so that 2% against 3%
/// stands apart as clearly as 10% against 90%), training loss below, dashed guide lines at 90% and 95% test accuracy,
/// runs without normalization dashed and normalized runs solid, and a tick for every epoch.
/// </summary>
public static class LearningCurveChart
{
    /// <summary>The image width in pixels.</summary>
    public const int Width = 1000;

    /// <summary>The image height in pixels.</summary>
    public const int Height = 800;

    /// <summary>Error rates are floored here on the log axis: an epoch with no test error shows as 0.1%.</summary>
    private const double ErrorFloor = 1e-3;

    private static readonly Color[] Palette =
    [
        new(31, 119, 180), new(214, 39, 40), new(44, 160, 44), new(148, 103, 189),
        new(255, 127, 14), new(23, 190, 207), new(140, 86, 75), new(188, 189, 34),
        new(227, 119, 194), new(80, 80, 160),
    ];

    /// <summary>The margin right of both panels, where the legend goes.</summary>
    private const int LegendWidth = 290;

    private static readonly Color GuideColor = new(120, 120, 120);

    private static readonly (double Accuracy, string Label)[] Guides = [(0.90, "90% accuracy"), (0.95, "95% accuracy")];

    /// <summary>Builds the two panels.</summary>
    /// <param name="runs">The runs, each with its epochs.</param>
    /// <returns>A multiplot: [0] test error, [1] training loss.</returns>
    public static Multiplot Build(IReadOnlyList<RunResult> runs)
    {
        ArgumentNullException.ThrowIfNull(runs);
        var chart = new Multiplot();
        chart.AddPlots(2);
        chart.Layout = new ScottPlot.MultiplotLayouts.Rows();
        Plot error = chart.GetPlot(0), loss = chart.GetPlot(1);
        int epochs = runs.Max(r => r.Epochs.Count);

        for (int k = 0; k < runs.Count; k++)
        {
            RunResult run = runs[k];
            LinePattern pattern = run.Settings.Normalization.IsNone ? LinePattern.Dashed : LinePattern.Solid;
            Color color = Palette[k % Palette.Length];
            double[] x = [.. run.Epochs.Select(e => (double)e.Epoch)];
            AddSeries(error, run.Settings.Name, x, [.. run.Epochs.Select(e => Math.Log10(Math.Max(ErrorFloor, 1 - e.TestAccuracy)))], color, pattern);

            // A run that diverged has no loss from then on.
            EpochResult[] finite = [.. run.Epochs.Where(e => double.IsFinite(e.Loss) && e.Loss > 0)];
            AddSeries(loss, run.Settings.Name, [.. finite.Select(e => (double)e.Epoch)], [.. finite.Select(e => Math.Log10(e.Loss))], color, pattern);
        }

        foreach ((double accuracy, string label) in Guides)
        {
            HorizontalLine guide = error.Add.HorizontalLine(Math.Log10(1 - accuracy));
            guide.LinePattern = LinePattern.Dashed;
            guide.Color = GuideColor;
            guide.LineWidth = 1;
            Text text = error.Add.Text(label, 0.6, Math.Log10(1 - accuracy));
            text.LabelFontSize = 11;
            text.LabelFontColor = GuideColor;
            text.LabelAlignment = Alignment.LowerLeft;
        }

        error.Title("Test error on UCI digits (log scale)");
        error.YLabel("test error");
        loss.Title("Training loss (log scale)");
        loss.YLabel("mean cross-entropy");
        loss.XLabel("epoch");
        foreach (Plot panel in new[] { error, loss })
        {
            panel.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericFixedInterval(1);
            panel.Axes.SetLimitsX(0.5, epochs + 0.5);
            panel.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
            {
                MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
                IntegerTicksOnly = true,
                LabelFormatter = panel == error ? Percent : Power,
            };
        }

        // From the decade below the lowest error to 100%.
        double lowest = runs.SelectMany(r => r.Epochs).Min(e => Math.Max(ErrorFloor, 1 - e.TestAccuracy));
        error.Axes.SetLimitsY(Math.Floor(Math.Log10(lowest)) - 0.1, 0.05);
        // The legend sits right of the data, where no curve can hide behind it, and both panels keep the same margins so
        // that their epochs line up.
        error.ShowLegend(Edge.Right);
        loss.HideLegend();
        foreach (Plot panel in new[] { error, loss })
        {
            panel.Layout.Fixed(new PixelPadding(left: 80, right: LegendWidth, bottom: 50, top: 40));
        }

        return chart;
    }

    /// <summary>Writes the chart as a PNG of <see cref="Width"/> × <see cref="Height"/> pixels.</summary>
    /// <param name="chart">The chart.</param>
    /// <param name="path">The file.</param>
    public static void SavePng(Multiplot chart, string path)
    {
        ArgumentNullException.ThrowIfNull(chart);
        chart.SavePng(path, Width, Height);
    }

    /// <summary>
    /// Writes the chart as SVG. Skia's SVG backend drops dash patterns, so the dashed lines are drawn solid and then
    /// marked dashed by their colour, which is unique to each series.
    /// </summary>
    /// <param name="chart">The chart.</param>
    /// <param name="path">The file.</param>
    public static void SaveSvg(Multiplot chart, string path)
    {
        ArgumentNullException.ThrowIfNull(chart);
        var dashed = new List<IHasLine>();
        foreach (IHasLine line in chart.GetPlots().SelectMany(p => p.GetPlottables()).OfType<IHasLine>().Where(l => l.LinePattern.Equals(LinePattern.Dashed)))
        {
            dashed.Add(line);
            line.LinePattern = LinePattern.Solid;
        }

        string xml;
        try
        {
            chart.Render(Width, Height).Dispose();     // lays the panels out, as the PNG has them
            using var memory = new MemoryStream();
            using (SKCanvas canvas = SKSvgCanvas.Create(new SKRect(0, 0, Width, Height), memory))
            {
                using var background = new SKPaint { Color = SKColors.White };
                canvas.DrawRect(new SKRect(0, 0, Width, Height), background);
                PixelRect[] panels = chart.Layout.GetSubplotRectangles(chart.Subplots, new PixelRect(0, Width, Height, 0));
                for (int i = 0; i < chart.Subplots.Count; i++)
                {
                    Plot panel = chart.Subplots.GetPlot(i);
                    panel.RenderManager.ClearCanvasBeforeEachRender = false;
                    panel.Render(canvas, panels[i]);
                }
            }

            xml = System.Text.Encoding.UTF8.GetString(memory.ToArray());
        }
        finally
        {
            dashed.ForEach(l => l.LinePattern = LinePattern.Dashed);
        }

        foreach (string stroke in dashed.Select(l => $"stroke=\"{l.LineColor.ToHex()}\"").Distinct())
        {
            xml = xml.Replace(stroke, stroke + " stroke-dasharray=\"8 5\"", StringComparison.OrdinalIgnoreCase);
        }

        File.WriteAllText(path, xml);
    }

    private static void AddSeries(Plot plot, string name, double[] x, double[] y, Color color, LinePattern pattern)
    {
        Scatter series = plot.Add.Scatter(x, y);
        series.LegendText = name;
        series.Color = color;
        series.LinePattern = pattern;
        series.LineWidth = 2;
        series.MarkerSize = 4;
    }

    private static string Percent(double log10) => (Math.Pow(10, log10) * 100).ToString("0.#", CultureInfo.InvariantCulture) + "%";

    private static string Power(double log10) => Math.Pow(10, log10).ToString("G3", CultureInfo.InvariantCulture);
}
