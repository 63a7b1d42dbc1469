using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BatchNorm.Tests;

/// <summary>
/// Safetensors files as the tests see them, independently of the library's reader and writer: a builder that puts any
/// header (even a broken one) in front of any data, and a lenient decoder for tests that need the values a file holds.
/// </summary>
internal static class SafetensorsFiles
{
    /// <summary>A fixture file's bytes, from tests/BatchNorm.Tests/Fixtures (made by tools/make_torch_fixture.py).</summary>
    public static byte[] Fixture(string name) => File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Fixtures", name));

    /// <summary>The 8-byte length, the header text as given, then the data.</summary>
    public static byte[] Build(string header, byte[] data) => Build(Encoding.UTF8.GetBytes(header), data);

    /// <summary>The 8-byte length, the header bytes as given, then the data.</summary>
    public static byte[] Build(byte[] header, byte[] data)
    {
        byte[] file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    /// <summary>A file of the given tensors, laid out one after the other in the order given.</summary>
    public static byte[] Build(params Tensor[] tensors)
    {
        (JsonObject header, byte[] data) = Layout(tensors);
        return Build(header.ToJsonString(), data);
    }

    /// <summary>The header and data of the given tensors, for a test to change before it builds the file.</summary>
    public static (JsonObject Header, byte[] Data) Layout(IEnumerable<Tensor> tensors)
    {
        var header = new JsonObject();
        var data = new List<byte>();
        foreach (Tensor t in tensors)
        {
            header[t.Name] = new JsonObject
            {
                ["dtype"] = t.DType,
                ["shape"] = new JsonArray([.. t.Shape.Select(d => (JsonNode?)JsonValue.Create(d))]),
                ["data_offsets"] = new JsonArray(data.Count, data.Count + t.Data.Length),
            };
            data.AddRange(t.Data);
        }

        return (header, [.. data]);
    }

    /// <summary>Every tensor of a file whose header parses: its dtype, shape, and values as doubles (F64, F32) or longs (I64).</summary>
    public static Dictionary<string, Decoded> Decode(byte[] file)
    {
        int headerLength = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        using JsonDocument header = JsonDocument.Parse(file.AsMemory(8, headerLength));
        var tensors = new Dictionary<string, Decoded>(StringComparer.Ordinal);
        foreach (JsonProperty p in header.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__"))
        {
            string dtype = p.Value.GetProperty("dtype").GetString()!;
            long[] shape = [.. p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64())];
            int begin = p.Value.GetProperty("data_offsets")[0].GetInt32(), end = p.Value.GetProperty("data_offsets")[1].GetInt32();
            ReadOnlySpan<byte> bytes = file.AsSpan(8 + headerLength + begin, end - begin);
            tensors[p.Name] = dtype switch
            {
                "F64" => new Decoded(dtype, shape, [.. Enumerable.Range(0, bytes.Length / 8).Select(i => BitConverter.ToDouble(file, 8 + headerLength + begin + (8 * i)))], []),
                "F32" => new Decoded(dtype, shape, [.. Enumerable.Range(0, bytes.Length / 4).Select(i => (double)BitConverter.ToSingle(file, 8 + headerLength + begin + (4 * i)))], []),
                "I64" => new Decoded(dtype, shape, [], [.. Enumerable.Range(0, bytes.Length / 8).Select(i => BitConverter.ToInt64(file, 8 + headerLength + begin + (8 * i)))]),
                _ => new Decoded(dtype, shape, [], []),
            };
        }

        return tensors;
    }

    /// <summary>The "__metadata__" map of a file.</summary>
    public static Dictionary<string, string> Metadata(byte[] file)
    {
        int headerLength = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        using JsonDocument header = JsonDocument.Parse(file.AsMemory(8, headerLength));
        return header.RootElement.GetProperty("__metadata__").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
    }

    public static Tensor F64(string name, params double[] values) => new(name, "F64", [values.Length], [.. values.SelectMany(BitConverter.GetBytes)]);

    public static Tensor F32(string name, params float[] values) => new(name, "F32", [values.Length], [.. values.SelectMany(BitConverter.GetBytes)]);

    public static Tensor I64(string name, long value) => new(name, "I64", [], BitConverter.GetBytes(value));

    /// <summary>A tensor to put in a file: its bytes as they are (little-endian on the machines the tests run on).</summary>
    public sealed record Tensor(string Name, string DType, long[] Shape, byte[] Data);

    /// <summary>A tensor read back.</summary>
    public sealed record Decoded(string DType, long[] Shape, double[] Floats, long[] Integers);
}
