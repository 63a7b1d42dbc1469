using MathNet.Numerics.LinearAlgebra;

namespace BatchNorm;

/// <summary>
/// One learnable vector of a layer with its gradient, so that an optimizer can loop over any layer's
/// parameters without knowing its type: <c>p.Value.Subtract(p.Gradient * rate, p.Value)</c>.
/// </summary>
/// <param name="Name">The parameter's name within its layer, such as "gamma".</param>
/// <param name="Value">The layer's own vector; update it in place.</param>
/// <param name="Gradient">The layer's gradient vector, overwritten by each Backward.</param>
public sealed record LayerParameter(string Name, Vector<double> Value, Vector<double> Gradient);
