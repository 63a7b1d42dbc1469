using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Unicode;

namespace BatchNorm;

/// <summary>
/// The safetensors container (huggingface/safetensors): an 8-byte little-endian unsigned header length N, N bytes of
/// UTF-8 JSON mapping each tensor's name to its dtype, shape and data_offsets [begin, end) (relative to the end of the
/// header), with an optional "__metadata__" map of strings, then the tensors' little-endian bytes, row-major.
/// <see cref="Read"/> checks everything the format promises before any value is used.
/// </summary>
internal static class Safetensors
{
    /// <summary>The longest header read, as in the reference implementation: a longer one is not a safetensors file.</summary>
    public const ulong MaxHeaderLength = 100_000_000;

    private const string MetadataKey = "__metadata__";

    /// <summary>The bits per element of every dtype the format defines, so that any valid file can be checked in full.</summary>
    private static readonly Dictionary<string, int> Bits = new(StringComparer.Ordinal)
    {
        ["BOOL"] = 8, ["F4"] = 4, ["F6_E2M3"] = 6, ["F6_E3M2"] = 6, ["U8"] = 8, ["I8"] = 8, ["F8_E5M2"] = 8, ["F8_E4M3"] = 8,
        ["F8_E8M0"] = 8, ["F8_E4M3FNUZ"] = 8, ["F8_E5M2FNUZ"] = 8, ["I16"] = 16, ["U16"] = 16, ["F16"] = 16, ["BF16"] = 16,
        ["I32"] = 32, ["U32"] = 32, ["F32"] = 32, ["C64"] = 64, ["F64"] = 64, ["I64"] = 64, ["U64"] = 64,
    };

    /// <summary>Reads and checks a file's header and the layout of its data; reads no values.</summary>
    /// <exception cref="FormatException">The file breaks the format; the message names the problem and the tensor.</exception>
    public static Contents Read(ReadOnlySpan<byte> file)
    {
        if (file.Length < sizeof(ulong))
        {
            throw Malformed($"it has {file.Length} bytes, fewer than the 8 of the header length that starts the format");
        }

        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(file);
        if (headerLength > MaxHeaderLength)
        {
            throw Malformed($"the header length is {headerLength} bytes, more than the {MaxHeaderLength} the format allows (is it a safetensors file?)");
        }

        if (headerLength > (ulong)(file.Length - sizeof(ulong)))
        {
            throw Malformed($"the header length is {headerLength} bytes, but only {file.Length - sizeof(ulong)} bytes follow it (is the file truncated?)");
        }

        int dataStart = sizeof(ulong) + (int)headerLength;
        ReadOnlySpan<byte> header = file[sizeof(ulong)..dataStart];
        if (header.IsEmpty || header[0] != (byte)'{')
        {
            throw Malformed("the header must be a JSON object, starting with '{'");
        }

        if (!Utf8.IsValid(header))
        {
            throw Malformed("the header is not valid UTF-8");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header.ToArray());
        }
        catch (JsonException e)
        {
            throw Malformed($"the header is not valid JSON: {e.Message}", e);
        }

        using (document)
        {
            var names = new HashSet<string>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var tensors = new Dictionary<string, Entry>(StringComparer.Ordinal);
            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                if (!names.Add(property.Name))
                {
                    throw Malformed($"the header names '{Quote(property.Name)}' more than once");
                }

                if (property.NameEquals(MetadataKey))
                {
                    ReadMetadata(property.Value, metadata);
                }
                else
                {
                    tensors.Add(property.Name, ReadEntry(property.Name, property.Value));
                }
            }

            CheckLayout(tensors.Values, file.Length - dataStart);
            return new Contents(tensors, metadata, dataStart);
        }
    }

    /// <summary>The values of an F64 or F32 tensor as doubles (F32 widened, which is exact), row-major.</summary>
    public static double[] Floats(ReadOnlySpan<byte> file, Contents contents, Entry entry)
    {
        ReadOnlySpan<byte> bytes = contents.Bytes(file, entry);
        int size = entry.DType == "F64" ? sizeof(double)
            : entry.DType == "F32" ? sizeof(float)
            : throw new ArgumentException($"{entry.DType} is not a floating-point dtype this library reads.", nameof(entry));
        var values = new double[bytes.Length / size];
        for (int i = 0; i < values.Length; i++)
        {
            ReadOnlySpan<byte> element = bytes.Slice(i * size, size);
            values[i] = size == sizeof(double) ? BinaryPrimitives.ReadDoubleLittleEndian(element) : BinaryPrimitives.ReadSingleLittleEndian(element);
        }

        return values;
    }

    /// <summary>The values of an I64 tensor, row-major.</summary>
    public static long[] Integers(ReadOnlySpan<byte> file, Contents contents, Entry entry)
    {
        if (entry.DType != "I64")
        {
            throw new ArgumentException($"{entry.DType} is not I64.", nameof(entry));
        }

        ReadOnlySpan<byte> bytes = contents.Bytes(file, entry);
        var values = new long[bytes.Length / sizeof(long)];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadInt64LittleEndian(bytes[(i * sizeof(long))..]);
        }

        return values;
    }

    /// <summary>
    /// Writes a file: the metadata, then the tensors in the order given, each right after the one before. The header is
    /// padded with spaces to a multiple of 8 bytes, as the reference writer does, so that every tensor starts aligned.
    /// </summary>
    public static byte[] Write(IReadOnlyList<Tensor> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        using var headerBuffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(headerBuffer))
        {
            json.WriteStartObject();
            if (metadata.Count > 0)
            {
                json.WriteStartObject(MetadataKey);
                foreach (KeyValuePair<string, string> item in metadata)
                {
                    json.WriteString(item.Key, item.Value);
                }

                json.WriteEndObject();
            }

            long offset = 0;
            foreach (Tensor tensor in tensors)
            {
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", tensor.DType);
                json.WriteStartArray("shape");
                foreach (long dimension in tensor.Shape)
                {
                    json.WriteNumberValue(dimension);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset += tensor.Data.Length);
                json.WriteEndArray();
                json.WriteEndObject();
            }

            json.WriteEndObject();
        }

        int headerLength = (int)((headerBuffer.Length + 7) / 8 * 8);
        byte[] file = new byte[sizeof(ulong) + headerLength + tensors.Sum(t => t.Data.Length)];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)headerLength);
        headerBuffer.ToArray().CopyTo(file, sizeof(ulong));
        file.AsSpan(sizeof(ulong) + (int)headerBuffer.Length, headerLength - (int)headerBuffer.Length).Fill((byte)' ');
        int position = sizeof(ulong) + headerLength;
        foreach (Tensor tensor in tensors)
        {
            tensor.Data.CopyTo(file, position);
            position += tensor.Data.Length;
        }

        return file;
    }

    /// <summary>A tensor's name quoted in a message, at most 40 characters of it.</summary>
    public static string Quote(string name) => LayerState.Quote(name);

    /// <summary>A shape as the format writes it, such as [3] or [].</summary>
    public static string ShapeText(IEnumerable<long> shape) => $"[{string.Join(", ", shape.Select(d => d.ToString(CultureInfo.InvariantCulture)))}]";

    private static FormatException Malformed(string problem, Exception? inner = null) => new($"Not a valid safetensors file: {problem}.", inner);

    private static void ReadMetadata(JsonElement element, Dictionary<string, string> metadata)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw Malformed($"'{MetadataKey}' must be an object of strings, not {Kind(element)}");
        }

        foreach (JsonProperty item in element.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw Malformed($"'{MetadataKey}' must map names to strings, but '{Quote(item.Name)}' is {Kind(item.Value)}");
            }

            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
            {
                throw Malformed($"'{MetadataKey}' names '{Quote(item.Name)}' more than once");
            }
        }
    }

    private static Entry ReadEntry(string name, JsonElement element)
    {
        string tensor = $"tensor '{Quote(name)}'";
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw Malformed($"{tensor} must be described by an object with dtype, shape and data_offsets, not {Kind(element)}");
        }

        string dtype = element.TryGetProperty("dtype", out JsonElement d) && d.ValueKind == JsonValueKind.String
            ? d.GetString()!
            : throw Malformed($"{tensor} has no dtype string");
        if (!Bits.TryGetValue(dtype, out int bits))
        {
            throw Malformed($"{tensor} has the dtype '{Quote(dtype)}', which the format does not define");
        }

        long[] shape = IntegerList(element, "shape", tensor, length: null);
        long[] offsets = IntegerList(element, "data_offsets", tensor, length: 2);
        long elements = 1, bytes;
        try
        {
            foreach (long dimension in shape)
            {
                elements = checked(elements * dimension);
            }

            long totalBits = checked(elements * bits);
            bytes = totalBits % 8 == 0 ? totalBits / 8 : throw Malformed($"{tensor} of {elements} {dtype} values does not fill a whole number of bytes");
        }
        catch (OverflowException)
        {
            throw Malformed($"{tensor} has the shape {ShapeText(shape)}, too large for any file");
        }

        return new Entry(name, dtype, shape, offsets[0], offsets[1], bytes);
    }

    private static long[] IntegerList(JsonElement element, string field, string tensor, int? length)
    {
        if (!element.TryGetProperty(field, out JsonElement array) || array.ValueKind != JsonValueKind.Array
            || (length is int n && array.GetArrayLength() != n))
        {
            throw Malformed($"{tensor} needs '{field}' as a list of {(length is int count ? $"{count} " : string.Empty)}non-negative integers");
        }

        var values = new long[array.GetArrayLength()];
        int i = 0;
        foreach (JsonElement item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out values[i]) || values[i] < 0)
            {
                throw Malformed($"{tensor} has '{field}' [{Quote(array.GetRawText()[1..^1])}], but each must be a non-negative integer");
            }

            i++;
        }

        return values;
    }

    /// <summary>
    /// The data must be covered exactly: taken in order of their offsets, each tensor starts where the one before ended,
    /// holds the bytes its dtype and shape need, and the last ends at the end of the file.
    /// </summary>
    private static void CheckLayout(IEnumerable<Entry> entries, long dataLength)
    {
        long position = 0;
        Entry? previous = null;
        foreach (Entry entry in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            string tensor = $"tensor '{Quote(entry.Name)}'";
            if (entry.End < entry.Begin)
            {
                throw Malformed($"{tensor} has data_offsets [{entry.Begin}, {entry.End}], which end before they begin");
            }

            if (entry.End > dataLength)
            {
                throw Malformed($"{tensor} has data_offsets [{entry.Begin}, {entry.End}], beyond the {dataLength} bytes of data after the header (is the file truncated?)");
            }

            if (entry.Begin < position)
            {
                throw Malformed($"{tensor} has data_offsets [{entry.Begin}, {entry.End}], which overlap those of tensor '{Quote(previous!.Name)}', ending at {position}");
            }

            if (entry.Begin > position)
            {
                throw Malformed($"bytes [{position}, {entry.Begin}) of the data belong to no tensor (a hole before tensor '{Quote(entry.Name)}')");
            }

            if (entry.End - entry.Begin != entry.Length)
            {
                throw Malformed($"{tensor} has {entry.End - entry.Begin} bytes of data, but {entry.DType} of shape {ShapeText(entry.Shape)} needs {entry.Length}");
            }

            position = entry.End;
            previous = entry;
        }

        if (position != dataLength)
        {
            throw Malformed($"bytes [{position}, {dataLength}) of the data, at its end, belong to no tensor");
        }
    }

    private static string Kind(JsonElement element) => element.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.Null => "null",
        _ => "a boolean",
    };

    /// <summary>One tensor described by the header.</summary>
    /// <param name="Name">Its name.</param>
    /// <param name="DType">Its dtype, one the format defines.</param>
    /// <param name="Shape">Its shape, outermost first; [] for a scalar.</param>
    /// <param name="Begin">The first byte of its data, counted from the end of the header.</param>
    /// <param name="End">One past its last byte.</param>
    /// <param name="Length">The bytes its dtype and shape need, which the layout check has matched against the offsets.</param>
    internal sealed record Entry(string Name, string DType, long[] Shape, long Begin, long End, long Length);

    /// <summary>A checked header: the tensors by name and the metadata.</summary>
    internal sealed class Contents(IReadOnlyDictionary<string, Entry> tensors, IReadOnlyDictionary<string, string> metadata, int dataStart)
    {
        /// <summary>Gets the tensors, by name.</summary>
        public IReadOnlyDictionary<string, Entry> Tensors { get; } = tensors;

        /// <summary>Gets the "__metadata__" map; empty when the file has none.</summary>
        public IReadOnlyDictionary<string, string> Metadata { get; } = metadata;

        /// <summary>The bytes of a tensor of this file.</summary>
        public ReadOnlySpan<byte> Bytes(ReadOnlySpan<byte> file, Entry entry) => file.Slice(dataStart + (int)entry.Begin, (int)entry.Length);
    }

    /// <summary>A tensor to write.</summary>
    /// <param name="Name">Its name.</param>
    /// <param name="DType">Its dtype.</param>
    /// <param name="Shape">Its shape.</param>
    /// <param name="Data">Its little-endian bytes, row-major.</param>
    internal sealed record Tensor(string Name, string DType, long[] Shape, byte[] Data)
    {
        /// <summary>An F64 tensor.</summary>
        public static Tensor Float64(string name, long[] shape, double[] values)
        {
            byte[] data = new byte[values.Length * sizeof(double)];
            for (int i = 0; i < values.Length; i++)
            {
                BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(i * sizeof(double)), values[i]);
            }

            return new Tensor(name, "F64", shape, data);
        }

        /// <summary>An F32 tensor of values that are floats already (the caller has rounded and checked them).</summary>
        public static Tensor Float32(string name, long[] shape, double[] values)
        {
            byte[] data = new byte[values.Length * sizeof(float)];
            for (int i = 0; i < values.Length; i++)
            {
                BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(i * sizeof(float)), (float)values[i]);
            }

            return new Tensor(name, "F32", shape, data);
        }

        /// <summary>An I64 scalar, shape [].</summary>
        public static Tensor Int64Scalar(string name, long value)
        {
            byte[] data = new byte[sizeof(long)];
            BinaryPrimitives.WriteInt64LittleEndian(data, value);
            return new Tensor(name, "I64", [], data);
        }
    }
}
