using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace BatchNorm;

/// <summary>
/// How the kernels read and write data of element type <typeparamref name="T"/>, <see cref="double"/> or
/// <see cref="float"/>: every value is widened to double as it is loaded (exactly), all arithmetic and every sum is in
/// double, and a result is rounded to <typeparamref name="T"/> only as it is stored. So one kernel skeleton serves both
/// precisions, and a float result is the double result rounded once.
/// </summary>
/// <typeparam name="T">The element type of the data: <see cref="double"/> or <see cref="float"/>.</typeparam>
/// <remarks>
/// The branches on <c>typeof(T)</c> are constants to the JIT, which compiles a separate body per value type: the double
/// instantiation is the plain load and store, the float one a 16-byte load and a widening conversion (vcvtps2pd on x86),
/// or a narrowing conversion (vcvtpd2ps, round to nearest even) and a 16-byte store. A vector of doubles
/// (<see cref="Vector{T}"/> or <see cref="Vector256{T}"/>) therefore always covers as many elements as it has lanes,
/// whatever <typeparamref name="T"/>.
/// </remarks>
internal static class Elements<T>
    where T : unmanaged
{
    /// <summary>Gets the size of one element in bytes.</summary>
    public static int Size => Unsafe.SizeOf<T>();

    /// <summary>Widens one element to double, exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double ToDouble(T value)
    {
        if (typeof(T) == typeof(double))
        {
            return Unsafe.As<T, double>(ref value);
        }

        if (typeof(T) == typeof(float))
        {
            return Unsafe.As<T, float>(ref value);
        }

        throw Unsupported();
    }

    /// <summary>Rounds a double to the element type (to nearest, ties to even).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T FromDouble(double value)
    {
        if (typeof(T) == typeof(double))
        {
            return Unsafe.As<double, T>(ref value);
        }

        if (typeof(T) == typeof(float))
        {
            float single = (float)value;
            return Unsafe.As<float, T>(ref single);
        }

        throw Unsupported();
    }

    /// <summary>The element at <paramref name="index"/> from <paramref name="first"/>, widened to double.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Get(ref T first, nint index) => ToDouble(Unsafe.Add(ref first, index));

    /// <summary>Stores <paramref name="value"/>, rounded, at <paramref name="index"/> from <paramref name="first"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Set(ref T first, nint index, double value) => Unsafe.Add(ref first, index) = FromDouble(value);

    /// <summary>Widens every element of <paramref name="source"/> into <paramref name="destination"/>, exactly.</summary>
    public static void Widen(ReadOnlySpan<T> source, Span<double> destination)
    {
        if (typeof(T) == typeof(double))
        {
            MemoryMarshal.Cast<T, double>(source).CopyTo(destination);
        }
        else
        {
            for (int i = 0; i < source.Length; i++)
            {
                destination[i] = ToDouble(source[i]);
            }
        }
    }

    /// <summary>Gets whether every value stays finite once rounded to <typeparamref name="T"/> (see <see cref="Probe(double)"/>).</summary>
    public static bool AllFinite(ReadOnlySpan<double> values)
    {
        foreach (double value in values)
        {
            if (double.IsNaN(Probe(value)))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Rounds every value of <paramref name="source"/> into <paramref name="destination"/>.</summary>
    public static void Narrow(ReadOnlySpan<double> source, Span<T> destination)
    {
        if (typeof(T) == typeof(double))
        {
            source.CopyTo(MemoryMarshal.Cast<T, double>(destination));
        }
        else
        {
            for (int i = 0; i < source.Length; i++)
            {
                destination[i] = FromDouble(source[i]);
            }
        }
    }

    /// <summary>Loads <see cref="Vector{T}.Count"/> elements of double from <paramref name="index"/> on, widened to double.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> LoadVector(ref T first, nuint index)
    {
        if (typeof(T) == typeof(double))
        {
            return Vector.LoadUnsafe(ref Unsafe.As<T, double>(ref first), index);
        }

        if (Vector<double>.Count == Vector256<double>.Count)
        {
            return Load256(ref first, index).AsVector();
        }

        if (Vector<double>.Count == Vector128<double>.Count)
        {
            // Two floats, read as the eight bytes they are.
            double pair = Unsafe.ReadUnaligned<double>(ref Unsafe.As<T, byte>(ref Unsafe.Add(ref first, index)));
            return Vector128.WidenLower(Vector128.CreateScalarUnsafe(pair).AsSingle()).AsVector();
        }

        if (Vector<double>.Count == Vector512<double>.Count)
        {
            return Vector512.WidenLower(Vector256.LoadUnsafe(ref Unsafe.As<T, float>(ref first), index).ToVector512Unsafe()).AsVector();
        }

        throw UnsupportedWidth();
    }

    /// <summary>Stores the lanes of <paramref name="value"/>, rounded, from <paramref name="index"/> on.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreVector(Vector<double> value, ref T first, nuint index)
    {
        if (typeof(T) == typeof(double))
        {
            value.StoreUnsafe(ref Unsafe.As<T, double>(ref first), index);
        }
        else if (Vector<double>.Count == Vector256<double>.Count)
        {
            Store256(value.AsVector256(), ref first, index);
        }
        else if (Vector<double>.Count == Vector128<double>.Count)
        {
            Vector128<double> pair = value.AsVector128();
            Unsafe.WriteUnaligned(ref Unsafe.As<T, byte>(ref Unsafe.Add(ref first, index)), Vector128.Narrow(pair, pair).AsDouble().ToScalar());
        }
        else if (Vector<double>.Count == Vector512<double>.Count)
        {
            Vector512<double> wide = value.AsVector512();
            Vector512.Narrow(wide, wide).GetLower().StoreUnsafe(ref Unsafe.As<T, float>(ref first), index);
        }
        else
        {
            throw UnsupportedWidth();
        }
    }

    /// <summary>Loads four elements from <paramref name="index"/> on, widened to double.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Load256(ref T first, nuint index)
    {
        if (typeof(T) == typeof(double))
        {
            return Vector256.LoadUnsafe(ref Unsafe.As<T, double>(ref first), index);
        }

        Vector128<float> four = Vector128.LoadUnsafe(ref Unsafe.As<T, float>(ref first), index);
        return Avx.IsSupported ? Avx.ConvertToVector256Double(four) : Vector256.Create(Vector128.WidenLower(four), Vector128.WidenUpper(four));
    }

    /// <summary>Stores four lanes, rounded, from <paramref name="index"/> on.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store256(Vector256<double> value, ref T first, nuint index)
    {
        if (typeof(T) == typeof(double))
        {
            value.StoreUnsafe(ref Unsafe.As<T, double>(ref first), index);
            return;
        }

        Narrow(value).StoreUnsafe(ref Unsafe.As<T, float>(ref first), index);
    }

    /// <summary>
    /// Stores four lanes, rounded, with a non-temporal store to <paramref name="address"/>, which is aligned to
    /// <see cref="StreamAlignment"/> bytes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void Stream256(Vector256<double> value, T* address)
    {
        if (typeof(T) == typeof(double))
        {
            Vector256.StoreAlignedNonTemporal(value, (double*)address);
            return;
        }

        Vector128.StoreAlignedNonTemporal(Narrow(value), (float*)address);
    }

    /// <summary>
    /// The finiteness probe of a result about to be stored: 0 where it is finite once rounded to
    /// <typeparamref name="T"/>, NaN where it is not (NaN, ±∞, or for float a finite double that rounds to ±∞). Added up
    /// over a loop, the probes are NaN exactly when some stored value is not finite.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> Probe(Vector<double> value)
    {
        if (typeof(T) == typeof(double))
        {
            // v − v is 0 for a finite v and NaN for NaN or ±∞.
            return value - value;
        }

        // Not less than the limit (or NaN): the value rounds to ±∞ or is NaN.
        return Vector.ConditionalSelect(Vector.LessThan(Vector.Abs(value), new Vector<double>(FloatLimit)), Vector<double>.Zero, new Vector<double>(double.NaN));
    }

    /// <inheritdoc cref="Probe(Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Probe(Vector256<double> value)
    {
        if (typeof(T) == typeof(double))
        {
            return value - value;
        }

        return Vector256.ConditionalSelect(Vector256.LessThan(Vector256.Abs(value), Vector256.Create(FloatLimit)), Vector256<double>.Zero, Vector256.Create(double.NaN));
    }

    /// <inheritdoc cref="Probe(Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Probe(double value)
    {
        if (typeof(T) == typeof(double))
        {
            return value - value;
        }

        return Math.Abs(value) < FloatLimit ? 0 : double.NaN;
    }

    /// <summary>
    /// The probe of a normalization's two outputs, x̂ and y: y's, and with float also x̂'s. In training x̂ is bounded (by
    /// √N), but with the running statistics of inference it is not, and a float x̂ beyond float's range would be cached
    /// as ∞ while y, scaled by a small γ, stays finite.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> Probe(Vector<double> normalized, Vector<double> output)
        => typeof(T) == typeof(double) ? Probe(output) : Probe(normalized) + Probe(output);

    /// <inheritdoc cref="Probe(Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Probe(Vector256<double> normalized, Vector256<double> output)
        => typeof(T) == typeof(double) ? Probe(output) : Probe(normalized) + Probe(output);

    /// <inheritdoc cref="Probe(Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Probe(double normalized, double output)
        => typeof(T) == typeof(double) ? Probe(output) : Probe(normalized) + Probe(output);

    /// <summary>
    /// The least double that rounds to float +∞: the largest float plus half its spacing, 2¹²⁸ − 2¹⁰³ (a tie, which rounds
    /// to the even neighbour, ∞).
    /// </summary>
    internal const double FloatLimit = 3.4028235677973366E+38;

    /// <summary>Gets the alignment in bytes of the store of four elements (<see cref="Stream256"/>).</summary>
    public static int StreamAlignment => 4 * Size;

    /// <summary>The four lanes rounded to float: vcvtpd2ps where AVX is there.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Narrow(Vector256<double> value)
        => Avx.IsSupported ? Avx.ConvertToVector128Single(value) : Vector128.Narrow(value.GetLower(), value.GetUpper());

    private static NotSupportedException Unsupported() => new($"The element type {typeof(T).Name} is not supported: use double or float.");

    /// <summary>Vector&lt;double&gt; is 128, 256 or 512 bits wide on every runtime .NET 8 to 10 knows.</summary>
    private static PlatformNotSupportedException UnsupportedWidth() => new($"Vector<double> of {Vector<double>.Count} lanes is not supported.");
}
