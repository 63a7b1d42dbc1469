using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.IO.Compression;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;

namespace DigitsMlp;

/// <summary>
/// The UCI optical handwritten digits (1,797 images of 8×8 pixels, 10 classes), read from the CSV that ships with the
/// sample, gzip-compressed or plain: 64 pixel counts 0–16, then the label 0–9, one image per line.
/// </summary>
public sealed class DigitsData
{
    /// <summary>Pixels per image.</summary>
    public const int Pixels = 64;

    /// <summary>Number of classes.</summary>
    public const int Classes = 10;

    private DigitsData(double[][] images, int[] labels)
    {
        Images = images;
        Labels = labels;
    }

    /// <summary>Gets the images, each 64 pixel counts in [0, 16].</summary>
    public IReadOnlyList<double[]> Images { get; }

    /// <summary>Gets the label, 0–9, of each image.</summary>
    public IReadOnlyList<int> Labels { get; }

    /// <summary>Gets the number of images.</summary>
    public int Count => Labels.Count;

    /// <summary>Gets the path of the copy next to the program.</summary>
    public static string DefaultPath => Path.Combine(AppContext.BaseDirectory, "data", "digits.csv.gz");

    /// <summary>Reads the data set from a .csv or .csv.gz file (told apart by content, not by name).</summary>
    /// <param name="path">The file.</param>
    /// <returns>The images and labels.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist, or the path is a folder.</exception>
    /// <exception cref="InvalidDataException">The gzip stream is damaged, or a line is malformed; the message gives the line.</exception>
    public static DigitsData Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
        {
            throw new FileNotFoundException($"'{path}' is a folder; --data needs the digits file itself (.csv or .csv.gz).", path);
        }

        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The digits data file was not found at '{path}'.", path);
        }

        var images = new List<double[]>();
        var labels = new List<int>();
        using FileStream file = File.OpenRead(path);
        bool gzipped = file.ReadByte() == 0x1f && file.ReadByte() == 0x8b;
        file.Position = 0;
        using Stream text = gzipped ? new GZipStream(file, CompressionMode.Decompress) : file;
        using var reader = new StreamReader(text);
        int lineNumber = 0;
        while (ReadLine(reader, path) is { } line)
        {
            lineNumber++;
            if (line.Length == 0)
            {
                continue;
            }

            (double[] image, int label) = ParseLine(line, lineNumber, path);
            images.Add(image);
            labels.Add(label);
        }

        if (images.Count == 0)
        {
            throw new InvalidDataException($"{path}: the file holds no images.");
        }

        return new DigitsData(images.ToArray(), labels.ToArray());
    }

    /// <summary>
    /// Splits the indices into a training and a test part, taking the same fraction of every class (stratified),
    /// in an order fixed by <paramref name="seed"/>.
    /// </summary>
    /// <param name="testFraction">The share of each class that goes to the test part, in (0, 1).</param>
    /// <param name="seed">The random seed.</param>
    /// <returns>Training and test indices, each shuffled.</returns>
    public (int[] Train, int[] Test) StratifiedSplit(double testFraction, int seed)
    {
        if (!(testFraction > 0 && testFraction < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(testFraction), testFraction, "The test fraction must lie in (0, 1).");
        }

        var random = new Random(seed);
        var train = new List<int>();
        var test = new List<int>();
        foreach (IGrouping<int, int> group in Enumerable.Range(0, Count).GroupBy(i => Labels[i]).OrderBy(g => g.Key))
        {
            int[] members = group.ToArray();
            random.Shuffle(members);
            int testCount = (int)Math.Round(members.Length * testFraction);
            test.AddRange(members.Take(testCount));
            train.AddRange(members.Skip(testCount));
        }

        int[] trainArray = train.ToArray(), testArray = test.ToArray();
        random.Shuffle(trainArray);
        random.Shuffle(testArray);
        return (trainArray, testArray);
    }

    /// <summary>The images at <paramref name="indices"/> as the rows of a matrix, pixels scaled to [0, 1].</summary>
    /// <param name="indices">Which images.</param>
    /// <returns>An indices.Length × 64 matrix.</returns>
    public Matrix<double> Features(IReadOnlyList<int> indices)
    {
        ArgumentNullException.ThrowIfNull(indices);
        return Matrix<double>.Build.Dense(indices.Count, Pixels, (i, j) => Images[indices[i]][j] / 16.0);
    }

    /// <summary>The labels at <paramref name="indices"/>.</summary>
    /// <param name="indices">Which images.</param>
    /// <returns>The labels, in order.</returns>
    public int[] LabelsOf(IReadOnlyList<int> indices)
    {
        ArgumentNullException.ThrowIfNull(indices);
        return indices.Select(i => Labels[i]).ToArray();
    }

    private static string? ReadLine(StreamReader reader, string path)
    {
        try
        {
            return reader.ReadLine();
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: the gzip-compressed data is damaged ({e.Message})", e);
        }
    }

    private static (double[] Image, int Label) ParseLine(string line, int lineNumber, string path)
    {
        string[] fields = line.Split(',');
        if (fields.Length != Pixels + 1)
        {
            throw new InvalidDataException($"{path}, line {lineNumber}: expected {Pixels + 1} comma-separated values (64 pixels and a label), found {fields.Length}.");
        }

        var image = new double[Pixels];
        for (int k = 0; k < Pixels; k++)
        {
            if (!double.TryParse(fields[k], NumberStyles.Float, CultureInfo.InvariantCulture, out double pixel) || !(pixel >= 0 && pixel <= 16))
            {
                throw new InvalidDataException($"{path}, line {lineNumber}: pixel {k + 1} is '{fields[k]}', but pixels are numbers from 0 to 16.");
            }

            image[k] = pixel;
        }

        if (!int.TryParse(fields[Pixels], NumberStyles.Integer, CultureInfo.InvariantCulture, out int label) || label < 0 || label >= Classes)
        {
            throw new InvalidDataException($"{path}, line {lineNumber}: the label is '{fields[Pixels]}', but labels are integers from 0 to 9.");
        }

        return (image, label);
    }
}
