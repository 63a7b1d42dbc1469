using System;
using System.Collections.Generic;
using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// The contract every normalization layer keeps, so that a network can hold any of them in the same slot and swap one
/// for another by changing only the constructor call: forward and backward passes in allocating and destination
/// forms, the parameters with their gradients, the mode, the backward strategy, and saved state.
/// </summary>
/// <remarks>
/// <para>A mini-batch is an N×D matrix whose rows are samples and whose columns are features. Forward caches what
/// Backward needs; Backward returns dL/dx and overwrites the gradients in <see cref="Parameters"/>.</para>
/// <para>The library's layers derive from <see cref="NormalizationLayer"/>. Implement this interface yourself to
/// drop a layer of your own into the same network, or to check its gradients with
/// <see cref="GradientCheck.Check(INormalizationLayer, Matrix{double}, Matrix{double}, double)"/>.</para>
/// </remarks>
public interface INormalizationLayer
{
    /// <summary>Gets D, the number of features (columns) of every input.</summary>
    int Features { get; }

    /// <summary>Gets ε, added to the variance before the square root.</summary>
    double Epsilon { get; }

    /// <summary>
    /// Gets or sets whether the layer is in training mode. Layers with running statistics normalize with the batch's
    /// statistics in training and with the running ones in inference; layers without (layer and group norm) use each
    /// input's own statistics either way, so for them the mode only records what the caller intends.
    /// </summary>
    bool IsTraining { get; set; }

    /// <summary>Gets or sets how Backward computes the gradients.</summary>
    BackwardStrategy BackwardStrategy { get; set; }

    /// <summary>Gets the learnable vectors with their gradients, for an optimizer that loops over any layer's parameters.</summary>
    IReadOnlyList<LayerParameter> Parameters { get; }

    /// <summary>Gets what the last Forward kept for Backward, or null before the first Forward (or for a layer that keeps no such cache).</summary>
    NormalizationCache? Cache { get; }

    /// <summary>Normalizes a mini-batch and returns the result in a new matrix.</summary>
    /// <param name="input">x, N×D.</param>
    /// <returns>y, N×D.</returns>
    Matrix<double> Forward(Matrix<double> input);

    /// <summary>Normalizes a mini-batch into a matrix the caller owns, which may be the input itself.</summary>
    /// <param name="input">x, N×D.</param>
    /// <param name="output">Receives y, N×D.</param>
    void Forward(Matrix<double> input, Matrix<double> output);

    /// <summary>Back-propagates dL/dy through the last Forward; returns dL/dx in a new matrix and overwrites the parameter gradients.</summary>
    /// <param name="outputGradient">dL/dy, of the last Forward's shape.</param>
    /// <returns>dL/dx.</returns>
    Matrix<double> Backward(Matrix<double> outputGradient);

    /// <summary>Back-propagates dL/dy through the last Forward into a matrix the caller owns, which may be dL/dy itself.</summary>
    /// <param name="outputGradient">dL/dy, of the last Forward's shape.</param>
    /// <param name="inputGradient">Receives dL/dx.</param>
    void Backward(Matrix<double> outputGradient, Matrix<double> inputGradient);

    /// <summary>
    /// Normalizes a mini-batch of floats and returns the result in a new matrix (single precision: the statistics and
    /// every sum in double, each output rounded to float once; the parameters stay double).
    /// </summary>
    /// <param name="input">x, N×D.</param>
    /// <returns>y, N×D.</returns>
    /// <exception cref="NotSupportedException">The layer takes only doubles: the default for a layer of your own that does not implement it.</exception>
    Matrix<float> Forward(Matrix<float> input) => throw SingleNotSupported();

    /// <summary>Normalizes a mini-batch of floats into a matrix the caller owns, which may be the input itself.</summary>
    /// <param name="input">x, N×D.</param>
    /// <param name="output">Receives y, N×D.</param>
    /// <exception cref="NotSupportedException">The layer takes only doubles.</exception>
    void Forward(Matrix<float> input, Matrix<float> output) => throw SingleNotSupported();

    /// <summary>Back-propagates dL/dy of floats through the last Forward, which was over floats; returns dL/dx in a new matrix and overwrites the parameter gradients.</summary>
    /// <param name="outputGradient">dL/dy, of the last Forward's shape.</param>
    /// <returns>dL/dx.</returns>
    /// <exception cref="NotSupportedException">The layer takes only doubles.</exception>
    Matrix<float> Backward(Matrix<float> outputGradient) => throw SingleNotSupported();

    /// <summary>Back-propagates dL/dy of floats through the last Forward into a matrix the caller owns, which may be dL/dy itself.</summary>
    /// <param name="outputGradient">dL/dy, of the last Forward's shape.</param>
    /// <param name="inputGradient">Receives dL/dx.</param>
    /// <exception cref="NotSupportedException">The layer takes only doubles.</exception>
    void Backward(Matrix<float> outputGradient, Matrix<float> inputGradient) => throw SingleNotSupported();

    /// <summary>Sets the parameters to their initial values (γ = 1, β = 0).</summary>
    void ResetParameters();

    /// <summary>Writes everything the layer needs to resume (parameters, settings, running statistics) as JSON.</summary>
    /// <returns>The JSON text.</returns>
    string ExportState();

    /// <summary>Restores a state written by <see cref="ExportState"/> of a layer of the same type and shape.</summary>
    /// <param name="json">The JSON text.</param>
    /// <exception cref="FormatException">The text is not a valid state for this layer.</exception>
    void ImportState(string json);

    private NotSupportedException SingleNotSupported()
        => new($"{GetType().Name} takes only Matrix<double>: it does not implement the single-precision members of INormalizationLayer.");
}
