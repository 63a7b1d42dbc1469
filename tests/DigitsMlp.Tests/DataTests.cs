using System;
using System.IO;
using System.IO.Compression;
using System.Linq;
using System.Text;

namespace DigitsMlp.Tests;

public class DataTests
{
    private static readonly DigitsData Data = DigitsData.Load(DigitsData.DefaultPath);

    [Fact]
    public void The_shipped_file_has_1797_images_in_10_balanced_classes()
    {
        Assert.Equal(1797, Data.Count);
        Assert.All(Data.Images, image => Assert.Equal(64, image.Length));
        Assert.All(Data.Images, image => Assert.All(image, p => Assert.InRange(p, 0, 16)));
        var counts = Data.Labels.GroupBy(l => l).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(Enumerable.Range(0, 10), counts.Keys.Order());
        Assert.All(counts.Values, c => Assert.InRange(c, 174, 183));
    }

    [Fact]
    public void The_split_is_stratified_disjoint_complete_and_reproducible()
    {
        (int[] train, int[] test) = Data.StratifiedSplit(0.2, seed: 5);
        Assert.Equal(Data.Count, train.Length + test.Length);
        Assert.Empty(train.Intersect(test));
        Assert.Equal(Enumerable.Range(0, Data.Count), train.Concat(test).Order());
        foreach (IGrouping<int, int> cls in Enumerable.Range(0, Data.Count).GroupBy(i => Data.Labels[i]))
        {
            int inTest = cls.Count(test.Contains);
            Assert.Equal((int)Math.Round(cls.Count() * 0.2), inTest);
        }

        (int[] again, int[] againTest) = Data.StratifiedSplit(0.2, seed: 5);
        Assert.Equal(train, again);
        Assert.Equal(test, againTest);
        Assert.NotEqual(train, Data.StratifiedSplit(0.2, seed: 6).Train);
    }

    [Fact]
    public void Features_are_scaled_to_the_unit_interval()
    {
        var x = Data.Features([0, 1, 2]);
        Assert.Equal(3, x.RowCount);
        Assert.Equal(64, x.ColumnCount);
        Assert.Equal(Data.Images[1][10] / 16, x[1, 10]);
        Assert.Equal(Data.Labels[2], Data.LabelsOf([0, 1, 2])[2]);
    }

    [Fact]
    public void A_missing_file_says_where_it_looked()
    {
        var e = Assert.Throws<FileNotFoundException>(() => DigitsData.Load("/nonexistent/digits.csv.gz"));
        Assert.Contains("/nonexistent/digits.csv.gz", e.Message);
    }

    [Fact]
    public void A_plain_csv_reads_like_the_gzipped_one()
    {
        string text = GoodLine(3) + "\n" + GoodLine(7) + "\n";
        DigitsData plain = DigitsData.Load(TempFile(Encoding.UTF8.GetBytes(text))), zipped = DigitsData.Load(Gzip(text));
        Assert.Equal(zipped.Labels, plain.Labels);
        Assert.Equal(zipped.Images[1], plain.Images[1]);
        Assert.Contains("line 1: expected 65", Assert.Throws<InvalidDataException>(() => DigitsData.Load(TempFile(Encoding.UTF8.GetBytes("0,0,0\n")))).Message);
    }

    [Fact]
    public void A_damaged_gzip_file_is_named_as_such()
    {
        byte[] zipped = File.ReadAllBytes(Gzip(GoodLine(1) + "\n" + GoodLine(2) + "\n"));
        zipped[12] ^= 0xFF;
        zipped[13] ^= 0xFF;
        Assert.Contains("gzip-compressed data is damaged", Assert.Throws<InvalidDataException>(() => DigitsData.Load(TempFile(zipped))).Message);
    }

    [Fact]
    public void A_folder_is_named_as_a_folder()
    {
        var e = Assert.Throws<FileNotFoundException>(() => DigitsData.Load(Path.GetTempPath()));
        Assert.Contains("is a folder", e.Message);
    }

    [Theory]
    [InlineData("short line", "1,2,3", "line 2: expected 65 comma-separated values")]
    [InlineData("text pixel", "x" + ",0" + ",0", "line 2: pixel 1 is 'x'")]
    [InlineData("pixel above 16", "17", "line 2: pixel 1 is '17'")]
    [InlineData("negative pixel", "-1", "line 2: pixel 1 is '-1'")]
    public void A_malformed_pixel_line_gets_its_line_and_problem(string what, string firstFields, string message)
    {
        string bad = firstFields.Split(',').Length == 3 && what == "short line"
            ? firstFields
            : firstFields + string.Concat(Enumerable.Repeat(",0", 64 - firstFields.Split(',').Length)) + ",3";
        string path = Gzip(GoodLine(1) + "\n" + bad + "\n");
        var e = Assert.Throws<InvalidDataException>(() => DigitsData.Load(path));
        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData("10")]
    [InlineData("-1")]
    [InlineData("3.5")]
    [InlineData("")]
    public void A_bad_label_gets_its_line(string label)
    {
        string path = Gzip(GoodLine(1) + "\n" + string.Join(",", Enumerable.Repeat("0", 64)) + "," + label + "\n");
        var e = Assert.Throws<InvalidDataException>(() => DigitsData.Load(path));
        Assert.Contains("line 2: the label is", e.Message);
    }

    [Fact]
    public void An_empty_file_is_rejected()
    {
        var e = Assert.Throws<InvalidDataException>(() => DigitsData.Load(Gzip("")));
        Assert.Contains("no images", e.Message);
    }

    internal static string GoodLine(int label) => string.Join(",", Enumerable.Range(0, 64).Select(k => (k % 17).ToString(System.Globalization.CultureInfo.InvariantCulture))) + "," + label.ToString(System.Globalization.CultureInfo.InvariantCulture);

    internal static string Gzip(string text)
    {
        using var buffer = new MemoryStream();
        using (var gzip = new GZipStream(buffer, CompressionLevel.Fastest, leaveOpen: true))
        {
            gzip.Write(Encoding.UTF8.GetBytes(text));
        }

        return TempFile(buffer.ToArray());
    }

    private static string TempFile(byte[] content)
    {
        string path = Path.Combine(Path.GetTempPath(), $"digits-test-{Guid.NewGuid():N}.csv.gz");
        File.WriteAllBytes(path, content);
        return path;
    }
}
