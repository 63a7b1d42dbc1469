using System;
using System.Collections.Generic;
using System.Diagnostics.CodeAnalysis;
using System.Linq;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.Statistics;

namespace BatchNorm;

/// <summary>
/// Numerical gradients by central differences, and the relative error CS231n uses to compare them with
/// analytic ones. Works on any layer: pass a function that runs the forward pass and returns a scalar loss.
/// </summary>
/// <remarks>
/// A typical check uses the loss L = Σᵢⱼ yᵢⱼ·gᵢⱼ for a fixed, non-uniform upstream gradient g, so that the
/// analytic dL/dx is exactly what Backward(g) returns. Relative errors below about 1e-7 mean the analytic
/// gradient is right; above 1e-3 it is almost certainly wrong.
/// Every method allocates its result and, through the function it probes, whatever that allocates. The methods
/// keep no state: they are safe to call from several threads as long as the threads do not share arguments.
/// </remarks>
[SuppressMessage(
    "ApiDesign",
    "RS0026:Do not add multiple public overloads with optional parameters",
    Justification = "The NumericalGradient overloads differ in the type of function they probe, never only in the optional step, so no call is ambiguous.")]
public static class GradientCheck
{
    /// <summary>The default step h of the central difference.</summary>
    public const double DefaultStep = 1e-5;

    /// <summary>
    /// The floor, as a fraction of the gradient's size, under each element's denominator in the errors <see cref="Check(INormalizationLayer, Matrix{double}, Matrix{double}, double)"/>
    /// reports; see <see cref="RelativeError(Matrix{double}, Matrix{double}, double)"/>.
    /// </summary>
    public const double DefaultRelativeFloor = 1e-4;

    /// <summary>
    /// Effectively computes g[i,j] = (f(x + h·eᵢⱼ) − f(x − h·eᵢⱼ)) / (2h) for every element of <paramref name="x"/>.
    /// </summary>
    /// <param name="f">The scalar function; it is called with <paramref name="x"/> itself, perturbed in one element.</param>
    /// <param name="x">The point. Each element is changed in place while it is probed and restored afterwards.</param>
    /// <param name="step">h, positive and finite.</param>
    /// <returns>A new matrix of the shape of <paramref name="x"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="f"/> or <paramref name="x"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="step"/> is not positive and finite.</exception>
    /// <remarks>Calls <paramref name="f"/> twice per element. Not thread-safe with respect to <paramref name="x"/>.</remarks>
    public static Matrix<double> NumericalGradient(Func<Matrix<double>, double> f, Matrix<double> x, double step = DefaultStep)
    {
        Guard.NotNull(f, nameof(f));
        Guard.NotNull(x, nameof(x));
        CheckStep(step);
        return EachElement(x, (get, set) => CentralDifference(() => f(x), get, set, step));
    }

    /// <summary>
    /// Effectively computes g[i] = (f(x + h·eᵢ) − f(x − h·eᵢ)) / (2h) for every element of <paramref name="x"/>.
    /// </summary>
    /// <param name="f">The scalar function; it is called with <paramref name="x"/> itself, perturbed in one element.</param>
    /// <param name="x">The point, for example a layer's γ. Each element is changed in place while probed and restored afterwards.</param>
    /// <param name="step">h, positive and finite.</param>
    /// <returns>A new vector of the length of <paramref name="x"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="f"/> or <paramref name="x"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="step"/> is not positive and finite.</exception>
    public static Vector<double> NumericalGradient(Func<Vector<double>, double> f, Vector<double> x, double step = DefaultStep)
    {
        Guard.NotNull(f, nameof(f));
        Guard.NotNull(x, nameof(x));
        CheckStep(step);
        return EachElement(x, (get, set) => CentralDifference(() => f(x), get, set, step));
    }

    /// <summary>
    /// The numerical gradient of a matrix-valued layer function contracted with an upstream gradient:
    /// effectively g[i,j] = Σₖ dyₖ·(f(x + h·eᵢⱼ)ₖ − f(x − h·eᵢⱼ)ₖ) / (2h), as CS231n's <c>eval_numerical_gradient_array</c>.
    /// </summary>
    /// <param name="f">The layer function, for example a Forward; it is called with <paramref name="x"/> itself, perturbed in one element.</param>
    /// <param name="x">The point. Each element is changed in place while it is probed and restored afterwards.</param>
    /// <param name="outputGradient">dy, the shape of f's result.</param>
    /// <param name="step">h, positive and finite.</param>
    /// <returns>A new matrix of the shape of <paramref name="x"/>: dL/dx for L = Σ f(x)·dy.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="step"/> is not positive and finite.</exception>
    /// <exception cref="ArgumentException">f returns a matrix of another shape than <paramref name="outputGradient"/>.</exception>
    /// <remarks>
    /// More accurate than differencing the scalar loss: outputs that the probe leaves unchanged cancel exactly,
    /// instead of adding the rounding error of a large sum to a small difference.
    /// </remarks>
    public static Matrix<double> NumericalGradient(Func<Matrix<double>, Matrix<double>> f, Matrix<double> x, Matrix<double> outputGradient, double step = DefaultStep)
    {
        Guard.NotNull(f, nameof(f));
        Guard.NotNull(x, nameof(x));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        CheckStep(step);
        return EachElement(x, (get, set) => CentralDifference(() => f(x), get, set, step, outputGradient));
    }

    /// <summary>
    /// The numerical gradient of a matrix-valued layer function contracted with an upstream gradient, with a step of
    /// its own for each element: g[i,j] = Σₖ dyₖ·(f(x + hᵢⱼ·eᵢⱼ)ₖ − f(x − hᵢⱼ·eᵢⱼ)ₖ) / (2hᵢⱼ).
    /// </summary>
    /// <param name="f">The layer function, for example a Forward; it is called with <paramref name="x"/> itself, perturbed in one element.</param>
    /// <param name="x">The point. Each element is changed in place while it is probed and restored afterwards.</param>
    /// <param name="outputGradient">dy, the shape of f's result.</param>
    /// <param name="steps">hᵢⱼ, the shape of <paramref name="x"/>, each positive and finite.</param>
    /// <returns>A new matrix of the shape of <paramref name="x"/>: dL/dx for L = Σ f(x)·dy.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A step is not positive and finite.</exception>
    /// <exception cref="ArgumentException"><paramref name="steps"/> is not the shape of <paramref name="x"/>, or f returns a matrix of another shape than <paramref name="outputGradient"/>.</exception>
    /// <remarks>
    /// A layer that normalizes is invariant to each group's offset and scale, so the step that resolves a derivative
    /// best is a fixed fraction of the spread of the values the element is normalized with, for example of its
    /// column for batch norm. One step for all elements is too coarse for the column with the smallest spread or too
    /// fine, and noisy, for the one with the largest.
    /// </remarks>
    public static Matrix<double> NumericalGradient(Func<Matrix<double>, Matrix<double>> f, Matrix<double> x, Matrix<double> outputGradient, Matrix<double> steps)
    {
        Guard.NotNull(f, nameof(f));
        Guard.NotNull(x, nameof(x));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        Guard.NotNull(steps, nameof(steps));
        Guard.SameShape(steps, x.RowCount, x.ColumnCount, nameof(steps), nameof(x));
        foreach (double step in steps.Enumerate())
        {
            CheckStep(step, nameof(steps));
        }

        return EachElement(x, (get, set, i, j) => CentralDifference(() => f(x), get, set, steps[i, j], outputGradient));
    }

    /// <summary>
    /// The numerical gradient of a matrix-valued function of a vector (such as a layer's γ) contracted with an
    /// upstream gradient: g[i] = Σₖ dyₖ·(f(x + h·eᵢ)ₖ − f(x − h·eᵢ)ₖ) / (2h).
    /// </summary>
    /// <param name="f">The layer function; it is called with <paramref name="x"/> itself, perturbed in one element.</param>
    /// <param name="x">The point, for example a layer's γ. Each element is changed in place while probed and restored afterwards.</param>
    /// <param name="outputGradient">dy, the shape of f's result.</param>
    /// <param name="step">h, positive and finite.</param>
    /// <returns>A new vector of the length of <paramref name="x"/>.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="step"/> is not positive and finite.</exception>
    /// <exception cref="ArgumentException">f returns a matrix of another shape than <paramref name="outputGradient"/>.</exception>
    public static Vector<double> NumericalGradient(Func<Vector<double>, Matrix<double>> f, Vector<double> x, Matrix<double> outputGradient, double step = DefaultStep)
    {
        Guard.NotNull(f, nameof(f));
        Guard.NotNull(x, nameof(x));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        CheckStep(step);
        return EachElement(x, (get, set) => CentralDifference(() => f(x), get, set, step, outputGradient));
    }

    /// <summary>
    /// The largest element-wise relative error, max |a − b| / max(1e-8, |a| + |b|), as in CS231n's <c>rel_error</c>.
    /// </summary>
    /// <param name="analytic">One gradient, for example from Backward.</param>
    /// <param name="numerical">The other, for example from <see cref="NumericalGradient(Func{Matrix{double}, double}, Matrix{double}, double)"/>.</param>
    /// <returns>0 for identical matrices; NaN if either holds NaN.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The shapes differ.</exception>
    public static double RelativeError(Matrix<double> analytic, Matrix<double> numerical)
        => RelativeError(analytic, numerical, relativeFloor: 0);

    /// <summary>The largest element-wise relative error of two vectors; see <see cref="RelativeError(Matrix{double}, Matrix{double})"/>.</summary>
    /// <param name="analytic">One gradient.</param>
    /// <param name="numerical">The other.</param>
    /// <returns>0 for identical vectors; NaN if either holds NaN.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public static double RelativeError(Vector<double> analytic, Vector<double> numerical)
        => RelativeError(analytic, numerical, relativeFloor: 0);

    /// <summary>
    /// The largest element-wise relative error, with a floor under each denominator set by the size of the whole
    /// gradient: max |a − b| / max(1e-8, |a| + |b|, relativeFloor·m), where m is the largest |aₖ| + |bₖ| of the matrix.
    /// </summary>
    /// <param name="analytic">One gradient, for example from Backward.</param>
    /// <param name="numerical">The other, for example from a central difference.</param>
    /// <param name="relativeFloor">
    /// The floor as a fraction of the gradient's size, in [0, 1]; <see cref="Check(INormalizationLayer, Matrix{double}, Matrix{double}, double)"/> uses <see cref="DefaultRelativeFloor"/>.
    /// 0 gives CS231n's error, the same as <see cref="RelativeError(Matrix{double}, Matrix{double})"/>.
    /// </param>
    /// <returns>0 for identical matrices; NaN if either holds NaN.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The shapes differ.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="relativeFloor"/> is not in [0, 1].</exception>
    /// <remarks>
    /// Use this when some elements of the true gradient cancel to nearly zero. A central difference cannot resolve
    /// an element to better than about (machine epsilon ÷ relative step) times the size of the gradient, so an
    /// element a million times smaller than its neighbours can show an element-wise error of 1e-6 even when the
    /// analytic gradient is exact. CS231n's absolute floor of 1e-8, kept here for a gradient that is zero as a whole,
    /// fits gradients of order one only. This is the
    /// mixed absolute and relative test of numpy's <c>allclose</c> and PyTorch's <c>gradcheck</c>, with the absolute
    /// part scaled to the gradient. A wrong term shows up in the large elements too, so it is still caught.
    /// </remarks>
    public static double RelativeError(Matrix<double> analytic, Matrix<double> numerical, double relativeFloor)
    {
        Guard.NotNull(analytic, nameof(analytic));
        Guard.NotNull(numerical, nameof(numerical));
        Guard.SameShape(numerical, analytic.RowCount, analytic.ColumnCount, nameof(numerical), nameof(analytic));
        return ScaledRelativeError(analytic.Enumerate(), numerical.Enumerate(), relativeFloor);
    }

    /// <summary>
    /// The largest element-wise relative error of two vectors with a floor set by the size of the whole gradient; see
    /// <see cref="RelativeError(Matrix{double}, Matrix{double}, double)"/>.
    /// </summary>
    /// <param name="analytic">One gradient.</param>
    /// <param name="numerical">The other.</param>
    /// <param name="relativeFloor">The floor as a fraction of the gradient's size, in [0, 1].</param>
    /// <returns>0 for identical vectors; NaN if either holds NaN.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="relativeFloor"/> is not in [0, 1].</exception>
    public static double RelativeError(Vector<double> analytic, Vector<double> numerical, double relativeFloor)
    {
        Guard.NotNull(analytic, nameof(analytic));
        Guard.NotNull(numerical, nameof(numerical));
        Guard.Length(numerical, analytic.Count, nameof(numerical));
        return ScaledRelativeError(analytic.Enumerate(), numerical.Enumerate(), relativeFloor);
    }

    /// <summary>The relative error of two numbers, |a − b| / max(1e-8, |a| + |b|).</summary>
    /// <param name="analytic">One value.</param>
    /// <param name="numerical">The other.</param>
    /// <returns>A value in [0, 1], or NaN if either is NaN.</returns>
    public static double RelativeError(double analytic, double numerical)
        => Math.Abs(analytic - numerical) / Math.Max(1e-8, Math.Abs(analytic) + Math.Abs(numerical));

    /// <summary>
    /// Checks a layer's Backward against fourth-order central differences of L = Σ y·g, in its current mode and with its
    /// current backward strategy: dL/dx and the gradient of every parameter in <see cref="INormalizationLayer.Parameters"/>.
    /// </summary>
    /// <param name="layer">Any layer of the contract: the library's, or one of your own.</param>
    /// <param name="input">x, N×D.</param>
    /// <param name="outputGradient">g = dL/dy, N×D; choose it non-uniform, since Σx̂ = 0 lets a uniform one pass trivially.</param>
    /// <param name="relativeStep">
    /// The step as a fraction of the scale of what is probed: each element of x moves by relativeStep·√(σ² + ε) of the
    /// segment it is normalized with, the scale the layer divides by (read from the layer's <see cref="INormalizationLayer.Cache"/>
    /// after a Forward: the batch's σ² in training, the running one in inference; for a layer without a cache, each
    /// column's variance), and each parameter element by relativeStep·max(1, |value|). A normalization is invariant to
    /// each segment's offset and scale, so a step relative to that scale keeps the difference quotient equally accurate
    /// for every segment, a nearly constant one included.
    /// </param>
    /// <returns>
    /// The relative errors of dL/dx and of each parameter's gradient, each with a floor of <see cref="DefaultRelativeFloor"/>
    /// times the gradient's size, so that elements which cancel to nearly zero do not report the central difference's rounding noise.
    /// </returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="relativeStep"/> is not positive and finite.</exception>
    /// <exception cref="ArgumentException">A shape does not fit the layer, as Forward and Backward would report.</exception>
    /// <remarks>
    /// <para>Calls Forward four times per element of x and of the parameters, then once more and Backward once for the
    /// analytic gradients, which the layer's cache and gradients hold afterwards. The mode, every probed value and, for the
    /// library's layers, the running statistics and batch count are restored, whatever happens; a layer of your own is
    /// restored through its <see cref="INormalizationLayer.ExportState"/> and <see cref="INormalizationLayer.ImportState"/>.</para>
    /// <para>Batch renormalization's Backward holds r and d constant, as Ioffe prescribes; in training that is the true
    /// gradient only where r and d are clipped at their limits, so check it there (or with rmax = 1 and dmax = 0).</para>
    /// </remarks>
    public static GradientCheckResult Check(INormalizationLayer layer, Matrix<double> input, Matrix<double> outputGradient, double relativeStep = 1e-3)
    {
        Guard.NotNull(layer, nameof(layer));
        Guard.NotNull(input, nameof(input));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        CheckStep(relativeStep, nameof(relativeStep));
        return CheckCore(layer, input, outputGradient, relativeStep, layer.Forward, layer.Backward, single: false);
    }

    /// <summary>
    /// Checks a layer's single-precision Backward (<see cref="INormalizationLayer.Backward(Matrix{float})"/>) against
    /// central differences of its single-precision Forward, as <see cref="Check(INormalizationLayer, Matrix{double}, Matrix{double}, double)"/>
    /// checks the double ones. The differences are taken in double, over steps such that every probed input is a float
    /// (x + step always; x − step too unless the step exceeds |x|, where it is rounded, by at most 2⁻²⁴ of the step).
    /// </summary>
    /// <param name="layer">The layer; its mode decides what is checked.</param>
    /// <param name="input">x, N×D.</param>
    /// <param name="outputGradient">dL/dy, N×D.</param>
    /// <param name="relativeStep">
    /// The step as a fraction of the scale of what is probed, as for the double check. Float outputs carry a rounding error
    /// of up to 2⁻²⁴ of their size, which a difference quotient divides by the step, so the step is larger than for
    /// doubles: the default 3e-2 was the best of 1e-2, 3e-2 and 1e-1 over every layer kind (at 1e-1 the fourth-order
    /// difference's own error takes over). Expect errors up to about 2⁻²⁴/(step·<see cref="DefaultRelativeFloor"/>)/2,
    /// 1e-2, where elements near the floor meet the rounding noise; a wrong gradient shows far above that.
    /// </param>
    /// <returns>The relative errors of dL/dx and of each parameter's gradient, floored as for the double check.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="relativeStep"/> is not positive and finite.</exception>
    /// <exception cref="ArgumentException">A shape does not fit the layer, as Forward and Backward would report.</exception>
    /// <exception cref="NotSupportedException">The layer takes only doubles.</exception>
    /// <remarks>Calls and restores as the double check does.</remarks>
    public static GradientCheckResult Check(INormalizationLayer layer, Matrix<float> input, Matrix<float> outputGradient, double relativeStep = 3e-2)
    {
        Guard.NotNull(layer, nameof(layer));
        Guard.NotNull(input, nameof(input));
        Guard.NotNull(outputGradient, nameof(outputGradient));
        CheckStep(relativeStep, nameof(relativeStep));
        return CheckCore(
            layer,
            Widen(input),
            Widen(outputGradient),
            relativeStep,
            x => Widen(layer.Forward(x.Map(v => (float)v))),
            dy => Widen(layer.Backward(dy.Map(v => (float)v))),
            single: true);
    }

    private static Matrix<double> Widen(Matrix<float> matrix) => matrix.Map(v => (double)v);

    /// <summary>
    /// The check over a layer's Forward and Backward in one precision, seen through doubles: with <paramref name="single"/>
    /// set every probed input is a float, as the layer reads it.
    /// </summary>
    private static GradientCheckResult CheckCore(
        INormalizationLayer layer, Matrix<double> input, Matrix<double> outputGradient, double relativeStep, Func<Matrix<double>, Matrix<double>> forward, Func<Matrix<double>, Matrix<double>> backward, bool single)
    {
        bool training = layer.IsTraining;
        SavedState running = SavedState.Of(layer);
        try
        {
            // Every probe starts from the running statistics as they were: a training Forward updates them, and a layer
            // may read them in training (batch renormalization does).
            Matrix<double> Forward(Matrix<double> x)
            {
                running.RestoreRunningStatistics();
                return forward(x);
            }

            Matrix<double> probe = input.Clone();
            Matrix<double> steps = InputSteps(layer, probe, relativeStep, forward);
            Matrix<double> numericalInput = EachElement(probe, (get, set, row, column) => FourthOrderDifference(() => Forward(probe), get, set, steps[row, column], outputGradient, single));
            Vector<double>[] numericalParameters = layer.Parameters
                .Select(p => EachElement(p.Value, (get, set) => FourthOrderDifference(() => Forward(input), get, set, relativeStep * Math.Max(1, Math.Abs(get())), outputGradient)))
                .ToArray();
            running.Restore();
            Forward(input);
            Matrix<double> analyticInput = backward(outputGradient);
            return new GradientCheckResult(
                RelativeError(analyticInput, numericalInput, DefaultRelativeFloor),
                layer.Parameters.Select((p, k) => (p.Name, RelativeError(p.Gradient, numericalParameters[k], DefaultRelativeFloor))).ToArray());
        }
        finally
        {
            layer.IsTraining = training;
            running.Restore();
        }
    }

    /// <summary>Each element's step: relativeStep·√(σ² + ε) of its segment, read from the cache of a Forward of x.</summary>
    private static Matrix<double> InputSteps(INormalizationLayer layer, Matrix<double> x, double relativeStep, Func<Matrix<double>, Matrix<double>> forward)
    {
        forward(x);
        if (layer.Cache is { } cache && cache.BatchSize == x.RowCount && cache.Features == x.ColumnCount)
        {
            return Matrix<double>.Build.Dense(x.RowCount, x.ColumnCount, (i, j) => relativeStep * Math.Sqrt(cache.Variance[cache.SegmentOf(i, j)] + layer.Epsilon));
        }

        Vector<double> scale = Vector<double>.Build.Dense(x.ColumnCount, j => relativeStep * Math.Sqrt(x.Column(j).PopulationVariance() + layer.Epsilon));
        return Matrix<double>.Build.Dense(x.RowCount, x.ColumnCount, (_, j) => scale[j]);
    }

    /// <summary>A new matrix whose element (i, j) is <paramref name="derivative"/> given a getter and a setter of x[i, j].</summary>
    private static Matrix<double> EachElement(Matrix<double> x, Func<Func<double>, Action<double>, int, int, double> derivative)
        => Matrix<double>.Build.Dense(x.RowCount, x.ColumnCount, (i, j) => derivative(() => x[i, j], v => x[i, j] = v, i, j));

    private static Matrix<double> EachElement(Matrix<double> x, Func<Func<double>, Action<double>, double> derivative)
        => EachElement(x, (get, set, _, _) => derivative(get, set));

    /// <summary>A new vector whose element i is <paramref name="derivative"/> given a getter and a setter of x[i].</summary>
    private static Vector<double> EachElement(Vector<double> x, Func<Func<double>, Action<double>, double> derivative)
        => Vector<double>.Build.Dense(x.Count, i => derivative(() => x[i], v => x[i] = v));

    private static double CentralDifference(Func<double> f, Func<double> get, Action<double> set, double step)
    {
        double old = get(), offset = Offset(old, step);
        try
        {
            set(old + offset);
            double plus = f();
            set(old - offset);
            double minus = f();
            return (plus - minus) / (2 * offset);
        }
        finally
        {
            set(old);
        }
    }

    private static double CentralDifference(Func<Matrix<double>> f, Func<double> get, Action<double> set, double step, Matrix<double> outputGradient)
    {
        double old = get(), offset = Offset(old, step);
        try
        {
            return ProbeDifference(f, set, old + offset, old - offset, outputGradient) / (2 * offset);
        }
        finally
        {
            set(old);
        }
    }

    /// <summary>
    /// The fourth-order central difference: with D(h) = (f(x+h) − f(x−h))/(2h), Richardson's (4·D(h) − D(2h))/3, whose
    /// truncation error is O(h⁴) rather than O(h²), so elements of the gradient far smaller than their neighbours stay
    /// accurate. Each step is the offset actually representable at x (see <see cref="Offset(double, double)"/>), so the two steps need
    /// not be in the ratio 2 exactly, and the extrapolation weighs them by what they are: (D₁·h₂² − D₂·h₁²)/(h₂² − h₁²).
    /// </summary>
    private static double FourthOrderDifference(Func<Matrix<double>> f, Func<double> get, Action<double> set, double step, Matrix<double> outputGradient, bool single = false)
    {
        double old = get(), near = Offset(old, step, single), far = Offset(old, 2 * step, single);
        try
        {
            double nearQuotient = ProbeDifference(f, set, old + near, old - near, outputGradient) / (2 * near);
            double farQuotient = ProbeDifference(f, set, old + far, old - far, outputGradient) / (2 * far);
            return ((nearQuotient * far * far) - (farQuotient * near * near)) / ((far * far) - (near * near));
        }
        finally
        {
            set(old);
        }
    }

    /// <summary>
    /// The step actually taken at x: (x + h) − x as represented, which is exact, so that x + offset and x − offset are
    /// both representable and lie symmetrically around x, and the quotient divides by the distance actually moved; at
    /// least one unit in the last place of x. Far from zero, x ± h rounds: at x = 1e12 the doubles are 1.2e-4 apart, so
    /// a nominal step of 1e-3 would be off by up to 6%, and asymmetric.
    /// </summary>
    private static double Offset(double x, double step)
    {
        double offset = (x + step) - x;
        return offset > 0 ? offset : Math.BitIncrement(Math.Abs(x)) - Math.Abs(x);
    }

    /// <summary>
    /// The step actually taken from x, so that x ± offset are exact; with <paramref name="single"/>, exact as floats (x
    /// being one): a whole number of float spacings at |x|, so that |x| + offset is a float, and |x| − offset too while the
    /// offset does not exceed |x| (beyond, the probe's float rounds it, by at most 2⁻²⁴ of the offset).
    /// </summary>
    private static double Offset(double x, double step, bool single)
    {
        if (!single)
        {
            return Offset(x, step);
        }

        float magnitude = MathF.Abs((float)x);
        double offset = (double)(float)(magnitude + step) - magnitude;
        return offset > 0 ? offset : (double)MathF.BitIncrement(magnitude) - magnitude;
    }

    /// <summary>Σₖ dyₖ·(f at up − f at down)ₖ, element by element so that unchanged outputs cancel exactly.</summary>
    private static double ProbeDifference(Func<Matrix<double>> f, Action<double> set, double up, double down, Matrix<double> outputGradient)
    {
        set(up);
        Matrix<double> plus = Result(f(), outputGradient).Clone();
        set(down);
        Matrix<double> minus = Result(f(), outputGradient);
        double sum = 0;
        for (int j = 0; j < plus.ColumnCount; j++)
        {
            for (int i = 0; i < plus.RowCount; i++)
            {
                sum += outputGradient[i, j] * (plus[i, j] - minus[i, j]);
            }
        }

        return sum;
    }

    /// <summary>What the probed function f returned, checked against the upstream gradient's shape.</summary>
    private static Matrix<double> Result(Matrix<double>? f, Matrix<double> outputGradient)
    {
        if (f is null)
        {
            throw new ArgumentException("The probed function returned null instead of a matrix of the upstream gradient's shape.", nameof(f));
        }

        if (f.RowCount != outputGradient.RowCount || f.ColumnCount != outputGradient.ColumnCount)
        {
            throw new ArgumentException(
                $"Matrix dimensions must agree: the probed function returned {Guard.Shape(f)}, but the upstream gradient is {Guard.Shape(outputGradient)}.", nameof(f));
        }

        return f;
    }

    private static double ScaledRelativeError(IEnumerable<double> analytic, IEnumerable<double> numerical, double relativeFloor)
    {
        if (!(relativeFloor >= 0 && relativeFloor <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(relativeFloor), relativeFloor, "The relative floor must lie in [0, 1].");
        }

        (double A, double B)[] pairs = analytic.Zip(numerical).ToArray();
        double size = 0;
        foreach ((double a, double b) in pairs)
        {
            size = Math.Max(size, Math.Abs(a) + Math.Abs(b));
        }

        double worst = 0;
        foreach ((double a, double b) in pairs)
        {
            double difference = Math.Abs(a - b);
            worst = Worse(worst, difference / Math.Max(1e-8, Math.Max(Math.Abs(a) + Math.Abs(b), relativeFloor * size)));
        }

        return worst;
    }

    private static double Worse(double worst, double error) => double.IsNaN(error) || error > worst ? error : worst;

    private static void CheckStep(double step, string name = "step")
    {
        if (!(step > 0) || double.IsInfinity(step))
        {
            throw new ArgumentOutOfRangeException(name, step, "The step must be positive and finite.");
        }
    }

    /// <summary>
    /// What a check puts back. For the library's layers with running statistics: the running statistics and the batch
    /// count, cheaply, before every probe (a training Forward moves them, and renorm reads them) and at the end, keeping
    /// the cache. For a layer of your own: its saved state, through the contract, before the analytic step and at the end.
    /// </summary>
    private sealed class SavedState
    {
        private readonly RunningStatisticsLayer? _running;
        private readonly Vector<double>? _mean, _variance;
        private readonly long _batches;
        private readonly INormalizationLayer? _foreign;
        private readonly string? _json;

        private SavedState(INormalizationLayer layer)
        {
            if (layer is RunningStatisticsLayer running)
            {
                (_running, _mean, _variance, _batches) = (running, running.RunningMean.Clone(), running.RunningVariance.Clone(), running.BatchesTracked);
            }
            else if (layer is not NormalizationLayer)
            {
                (_foreign, _json) = (layer, layer.ExportState());
            }
        }

        public static SavedState Of(INormalizationLayer layer) => new(layer);

        public void RestoreRunningStatistics()
        {
            if (_running is not null)
            {
                _mean!.CopyTo(_running.RunningMean);
                _variance!.CopyTo(_running.RunningVariance);
                _running.RestoreBatchesTracked(_batches);
            }
        }

        public void Restore()
        {
            RestoreRunningStatistics();
            _foreign?.ImportState(_json!);
        }
    }
}

/// <summary>
/// The relative errors of one gradient check, as defined by
/// <see cref="GradientCheck.RelativeError(Matrix{double}, Matrix{double}, double)"/> with <see cref="GradientCheck.DefaultRelativeFloor"/>.
/// </summary>
public sealed class GradientCheckResult
{
    private readonly (string Name, double Error)[] _parameters;

    /// <summary>Creates a result.</summary>
    /// <param name="input">The error of dL/dx.</param>
    /// <param name="parameters">The error of each parameter's gradient, by the parameter's name.</param>
    public GradientCheckResult(double input, IReadOnlyList<(string Name, double Error)> parameters)
    {
        Guard.NotNull(parameters, nameof(parameters));
        Input = input;
        _parameters = [.. parameters];
    }

    /// <summary>Gets the error of dL/dx.</summary>
    public double Input { get; }

    /// <summary>Gets the error of each parameter's gradient, in the order of the layer's <see cref="INormalizationLayer.Parameters"/>.</summary>
    public IReadOnlyList<(string Name, double Error)> Parameters => _parameters;

    /// <summary>Gets the error of dL/dγ, or 0 for a layer without a parameter named "gamma".</summary>
    public double Gamma => ErrorOf("gamma");

    /// <summary>Gets the error of dL/dβ, or 0 for a layer without a parameter named "beta".</summary>
    public double Beta => ErrorOf("beta");

    /// <summary>Gets the largest of the errors; NaN if any is NaN.</summary>
    public double Max => _parameters.Aggregate(Input, (worst, p) => double.IsNaN(p.Error) || p.Error > worst ? p.Error : worst);

    /// <summary>Gets the error of the parameter with the given name, or 0 when the layer has none of that name.</summary>
    /// <param name="name">The parameter's name, such as "gamma".</param>
    /// <returns>Its error.</returns>
    public double ErrorOf(string name)
    {
        foreach ((string n, double error) in _parameters)
        {
            if (n == name)
            {
                return error;
            }
        }

        return 0;
    }

    /// <summary>Lists the errors.</summary>
    /// <returns>For example "dx 1.2E-010, gamma 3.4E-011, beta 5.6E-012".</returns>
    public override string ToString()
        => string.Join(", ", new[] { $"dx {Input:E2}" }.Concat(_parameters.Select(p => $"{p.Name} {p.Error:E2}")));
}
