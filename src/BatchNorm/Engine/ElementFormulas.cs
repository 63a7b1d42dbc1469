using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace BatchNorm;

/// <summary>
/// The element-wise formulas of the engine, each written once for vectors and once for scalars. The kernels of both
/// geometries (<see cref="ColumnKernels"/> down a segment, <see cref="LaneKernels"/> across segments held as SIMD lanes)
/// call these, so a formula lives in one place. The scalar form rounds exactly as the vector form does, so a result
/// never depends on which elements a loop handles as scalars.
/// </summary>
internal static class ElementFormulas
{
    /// <summary>x̂ = ((x − center) − correction)·inverseStd: the batch mean is center + correction (see <see cref="ColumnKernels.Moments{T}"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> Normalized(Vector<double> x, Vector<double> center, Vector<double> correction, Vector<double> inverseStd)
        => (x - center - correction) * inverseStd;

    /// <inheritdoc cref="Normalized(Vector{double}, Vector{double}, Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Normalized(Vector256<double> x, Vector256<double> center, Vector256<double> correction, Vector256<double> inverseStd)
        => (x - center - correction) * inverseStd;

    /// <inheritdoc cref="Normalized(Vector{double}, Vector{double}, Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Normalized(double x, double center, double correction, double inverseStd)
        => (x - center - correction) * inverseStd;

    /// <summary>1/√(σ² + ε), also where σ² + ε overflows the range of double (then both are scaled by ¼ first, exactly).</summary>
    public static double InverseStandardDeviation(double variance, double epsilon)
    {
        double sum = variance + epsilon;
        return double.IsFinite(sum) ? 1.0 / Math.Sqrt(sum) : 0.5 / Math.Sqrt((0.25 * variance) + (0.25 * epsilon));
    }

    /// <summary>The closed-form input gradient, dx = scale·(dy − mean(dy) − x̂·mean(dy·x̂)), with scale = γ/√(σ² + ε).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> ClosedFormInputGradient(Vector<double> dy, Vector<double> xHat, Vector<double> meanDy, Vector<double> meanDyXHat, Vector<double> scale)
        => scale * MultiplyAdd(xHat, -meanDyXHat, dy - meanDy);

    /// <inheritdoc cref="ClosedFormInputGradient(Vector{double}, Vector{double}, Vector{double}, Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> ClosedFormInputGradient(Vector256<double> dy, Vector256<double> xHat, Vector256<double> meanDy, Vector256<double> meanDyXHat, Vector256<double> scale)
        => scale * MultiplyAdd(xHat, -meanDyXHat, dy - meanDy);

    /// <inheritdoc cref="ClosedFormInputGradient(Vector{double}, Vector{double}, Vector{double}, Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double ClosedFormInputGradient(double dy, double xHat, double meanDy, double meanDyXHat, double scale)
        => scale * MultiplyAdd(xHat, -meanDyXHat, dy - meanDy);

    /// <summary>a·b + c, fused where the runtime offers it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<double> MultiplyAdd(Vector<double> a, Vector<double> b, Vector<double> c)
#if NET9_0_OR_GREATER
        => Vector.FusedMultiplyAdd(a, b, c);
#else
        => (a * b) + c;
#endif

    /// <inheritdoc cref="MultiplyAdd(Vector{double}, Vector{double}, Vector{double})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> MultiplyAdd(Vector256<double> a, Vector256<double> b, Vector256<double> c)
#if NET9_0_OR_GREATER
        => Vector256.FusedMultiplyAdd(a, b, c);
#else
        => (a * b) + c;
#endif

    /// <summary>a·b + c, rounded exactly as the vector <see cref="MultiplyAdd(Vector{double}, Vector{double}, Vector{double})"/> rounds it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double MultiplyAdd(double a, double b, double c)
#if NET9_0_OR_GREATER
        => Math.FusedMultiplyAdd(a, b, c);
#else
        => (a * b) + c;
#endif

    /// <summary>One step of Neumaier's compensated sum, lane by lane: sum ← sum + value, the rounding error carried in compensation.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void CompensatedAdd(ref Vector<double> sum, ref Vector<double> compensation, Vector<double> value)
    {
        Vector<double> t = sum + value;
        Vector<long> sumIsLarger = Vector.GreaterThanOrEqual(Vector.Abs(sum), Vector.Abs(value));
        compensation += Vector.ConditionalSelect(sumIsLarger, (sum - t) + value, (value - t) + sum);
        sum = t;
    }

    /// <inheritdoc cref="CompensatedAdd(ref Vector{double}, ref Vector{double}, Vector{double})"/>
    /// <remarks>
    /// The error is found by Knuth's TwoSum, exactly, whichever of sum and value is larger: the same bits as Neumaier's
    /// branch on |sum| ≥ |value| (both are exact), without that branch on the data, which the processor often
    /// mispredicts for a sum of values of either sign. TwoSum's intermediate t − sum can overflow where t does not, and
    /// only where |value| > |sum| (both near the largest double): there, a branch that finite sums of ordinary size
    /// never take falls back to Neumaier's formula for that order, (value − t) + sum. (With data that are not finite,
    /// any of the formulas makes the total non-finite.) The vector step selects between Neumaier's two formulas, which
    /// has no branch to mispredict.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void CompensatedAdd(ref double sum, ref double compensation, double value)
    {
        double t = sum + value;
        double z = t - sum;
        double error = (sum - (t - z)) + (value - z);
        if (!double.IsFinite(error))
        {
            error = (value - t) + sum;
        }

        compensation += error;
        sum = t;
    }
}
