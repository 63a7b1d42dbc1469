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
    /// <returns>The probe of the stored lanes (see <see cref="HasFault(Vector{double})"/>).</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> StoreVector(Vector<double> value, ref T first, nuint index)
    {
        if (typeof(T) == typeof(double))
        {
            value.StoreUnsafe(ref Unsafe.As<T, double>(ref first), index);
            return value - value;
        }

        if (Vector<double>.Count == Vector256<double>.Count)
        {
            return Store256(value.AsVector256(), ref first, index).AsVector();
        }

        if (Vector<double>.Count == Vector128<double>.Count)
        {
            Vector128<double> pair = value.AsVector128();
            Vector128<float> rounded = Vector128.Narrow(pair, pair);
            Unsafe.WriteUnaligned(ref Unsafe.As<T, byte>(ref Unsafe.Add(ref first, index)), rounded.AsDouble().ToScalar());
            return (rounded - rounded).AsDouble().AsVector();
        }

        if (Vector<double>.Count == Vector512<double>.Count)
        {
            Vector512<double> wide = value.AsVector512();
            Vector512<float> rounded = Vector512.Narrow(wide, wide);
            rounded.GetLower().StoreUnsafe(ref Unsafe.As<T, float>(ref first), index);
            return (rounded - rounded).AsDouble().AsVector();
        }

        throw UnsupportedWidth();
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
    /// <returns>The probe of the stored lanes (see <see cref="HasFault(Vector256{double})"/>).</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Store256(Vector256<double> value, ref T first, nuint index)
    {
        if (typeof(T) == typeof(double))
        {
            value.StoreUnsafe(ref Unsafe.As<T, double>(ref first), index);
            return value - value;
        }

        Vector128<float> rounded = Narrow(value);
        rounded.StoreUnsafe(ref Unsafe.As<T, float>(ref first), index);
        return (rounded - rounded).AsDouble().ToVector256();
    }

    /// <summary>
    /// Stores eight lanes, rounded, with non-temporal stores to <paramref name="address"/>, which is aligned to
    /// <see cref="StreamAlignment"/> bytes: the lanes of <paramref name="low"/> and then those of <paramref name="high"/>.
    /// </summary>
    /// <returns>The probe of the stored lanes (see <see cref="HasFault(Vector256{double})"/>).</returns>
    /// <remarks>For float the eight lanes are one store of 32 bytes, as four doubles are: streamed four floats at a
    /// time, columns of 16 KiB of floats were measured to write more slowly than the same columns of doubles.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<double> Stream256(Vector256<double> low, Vector256<double> high, T* address)
    {
        if (typeof(T) == typeof(double))
        {
            Vector256.StoreAlignedNonTemporal(low, (double*)address);
            Vector256.StoreAlignedNonTemporal(high, (double*)address + Vector256<double>.Count);
            return (low - low) | (high - high);
        }

        Vector256<float> rounded = Vector256.Create(Narrow(low), Narrow(high));
        Vector256.StoreAlignedNonTemporal(rounded, (float*)address);
        return (rounded - rounded).AsDouble();
    }

    /// <summary>
    /// Gets whether a probe, or the bitwise or of probes, shows a stored value that is not finite. A store's probe is the
    /// stored value minus itself, as bits: 0 (all bits clear) where the value is finite as stored, NaN (some bit set)
    /// where it is NaN or ±∞, which for float includes a finite double that rounded to ±∞. So the check costs a
    /// subtraction and an or per stored vector, in registers, and no comparison.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool HasFault(Vector<double> probe) => !Vector.EqualsAll(Vector.AsVectorUInt64(probe), Vector<ulong>.Zero);

    /// <inheritdoc cref="HasFault(Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool HasFault(Vector256<double> probe) => !Vector256.EqualsAll(probe.AsUInt64(), Vector256<ulong>.Zero);

    /// <summary>
    /// The probe of a normalization's two stored outputs, x̂ and y: y's, and with float also x̂'s. In training x̂ is
    /// bounded (by √N), but with the running statistics of inference it is not, and a float x̂ beyond float's range would
    /// be cached as ∞ while y, scaled by a small γ, stays finite.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> Outputs(Vector<double> normalized, Vector<double> output)
        => typeof(T) == typeof(double) ? output : normalized | output;

    /// <inheritdoc cref="Outputs(Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Outputs(Vector256<double> normalized, Vector256<double> output)
        => typeof(T) == typeof(double) ? output : normalized | output;

    /// <summary>
    /// Stores a map's results at <paramref name="index"/>: <paramref name="first"/>, and with <paramref name="hasSecond"/>
    /// also <paramref name="second"/> (then the two are a normalization's x̂ and y).
    /// </summary>
    /// <returns>The probe of what was stored (see <see cref="HasFault(Vector{double})"/> and <see cref="Outputs(Vector{double}, Vector{double})"/>).</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> StoreResults(bool hasSecond, Vector<double> first, ref T firstDestination, Vector<double> second, ref T secondDestination, nuint index)
    {
        Vector<double> stored = StoreVector(first, ref firstDestination, index);
        return hasSecond ? Outputs(stored, StoreVector(second, ref secondDestination, index)) : stored;
    }

    /// <summary>The scalar <see cref="StoreResults(bool, Vector{double}, ref T, Vector{double}, ref T, nuint)"/>.</summary>
    /// <returns>The probe of what was stored (see <see cref="Probe(double)"/>).</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SetResults(bool hasSecond, double first, ref T firstDestination, double second, ref T secondDestination, nint index)
    {
        Set(ref firstDestination, index, first);
        if (!hasSecond)
        {
            return Probe(first);
        }

        Set(ref secondDestination, index, second);
        return Probe(first, second);
    }

    /// <summary>
    /// The finiteness probe of a scalar result about to be stored: 0 where it is finite once rounded to
    /// <typeparamref name="T"/>, NaN where it is not (NaN, ±∞, or for float a finite double that rounds to ±∞). Added up
    /// over a loop, the probes are NaN exactly when some stored value is not finite.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Probe(double value)
    {
        // The value as stored minus itself, as the vector stores' probes are: one rule for what "finite as stored" means.
        double stored = ToDouble(FromDouble(value));
        return stored - stored;
    }

    /// <summary>The probe of a normalization's two scalar outputs, x̂ and y, as <see cref="Outputs(Vector{double}, Vector{double})"/> combines them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Probe(double normalized, double output)
        => typeof(T) == typeof(double) ? Probe(output) : Probe(normalized) + Probe(output);

    /// <summary>
    /// Gets how close to the mean the center of one pass of shifted sums must lie for that pass to suffice: within σ/4
    /// for double, within 16σ for float (see <see cref="ColumnKernels.ShiftedMoments{T}"/>). Stated as the weight w of
    /// the test w·offset² ≤ σ², 16 or 2⁻⁸: powers of two, so that multiplying by w is exact.
    /// </summary>
    /// <remarks>
    /// The pass around c computes σ² = (Σd² − Σd·offset)/n from d = x − c, with δ = μ − c. Rounding errors in Σd² are
    /// relative to Σd² = n(σ² + δ²), and those in Σd, relative to Σ|d| ≤ n·√(σ² + δ²), come into σ² multiplied by 2|δ|:
    /// relative to σ², the pass magnifies the sums' rounding errors by (1 + δ²/σ²) + 2(|δ|/σ)·√(1 + δ²/σ²), at most 1.6
    /// for double's σ/4 and 770 (under 10 of double's 53 bits) for float's 16σ. For float data the terms d of a float
    /// center are moreover exact (x − c of two floats is a double, but for exponents 29 apart), so a float's statistics
    /// keep far more digits than float holds. A second pass, which reads the data again, is then left to the rare center
    /// more than 16σ from the mean; for float data that read is most of the cost of the statistics.
    /// </remarks>
    public static double CenterWeight => typeof(T) == typeof(float) ? 1.0 / 256 : 16;

    /// <summary>Gets the alignment in bytes of the store of eight elements (<see cref="Stream256"/>).</summary>
    public static int StreamAlignment => 8 * Size;

    /// <summary>The four lanes rounded to float: vcvtpd2ps where AVX is there.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Narrow(Vector256<double> value)
        => Avx.IsSupported ? Avx.ConvertToVector128Single(value) : Vector128.Narrow(value.GetLower(), value.GetUpper());

    private static NotSupportedException Unsupported() => new($"The element type {typeof(T).Name} is not supported: use double or float.");

    /// <summary>Vector&lt;double&gt; is 128, 256 or 512 bits wide on every runtime .NET 8 to 10 knows.</summary>
    private static PlatformNotSupportedException UnsupportedWidth() => new($"Vector<double> of {Vector<double>.Count} lanes is not supported.");
}
