using System.Linq;

namespace BatchNorm.Tests;

/// <summary>Everything a layer holds, copied, so a test can check that a failed call changed none of it.</summary>
internal sealed class LayerSnapshot
{
    private readonly BatchNormLayer _layer;
    private readonly double[] _runningMean, _runningVariance, _gamma, _beta, _gammaGradient, _betaGradient;
    private readonly long _batches;
    private readonly bool _training;
    private readonly BackwardStrategy _strategy;
    private readonly NormalizationCache? _cache;
    private readonly double[]? _xHat, _mean, _variance, _inverseStd;
    private readonly bool? _cacheTraining;

    public LayerSnapshot(BatchNormLayer layer)
    {
        _layer = layer;
        _runningMean = layer.RunningMean.ToArray();
        _runningVariance = layer.RunningVariance.ToArray();
        _gamma = layer.Gamma.ToArray();
        _beta = layer.Beta.ToArray();
        _gammaGradient = layer.GammaGradient.ToArray();
        _betaGradient = layer.BetaGradient.ToArray();
        _batches = layer.BatchesTracked;
        _training = layer.IsTraining;
        _strategy = layer.BackwardStrategy;
        _cache = layer.Cache;
        if (_cache is not null)
        {
            _xHat = _cache.NormalizedInput.ToArray();
            _mean = _cache.Mean.ToArray();
            _variance = _cache.Variance.ToArray();
            _inverseStd = _cache.InverseStandardDeviation.ToArray();
            _cacheTraining = _cache.IsTraining;
        }
    }

    public void AssertUnchanged()
    {
        Assert.Equal(_runningMean, _layer.RunningMean.ToArray());
        Assert.Equal(_runningVariance, _layer.RunningVariance.ToArray());
        Assert.Equal(_gamma, _layer.Gamma.ToArray());
        Assert.Equal(_beta, _layer.Beta.ToArray());
        Assert.Equal(_gammaGradient, _layer.GammaGradient.ToArray());
        Assert.Equal(_betaGradient, _layer.BetaGradient.ToArray());
        Assert.Equal(_batches, _layer.BatchesTracked);
        Assert.Equal(_training, _layer.IsTraining);
        Assert.Same(_strategy, _layer.BackwardStrategy);
        Assert.Same(_cache, _layer.Cache);
        if (_cache is not null)
        {
            Assert.Equal(_xHat, _cache.NormalizedInput.ToArray());
            Assert.Equal(_mean, _cache.Mean.ToArray());
            Assert.Equal(_variance, _cache.Variance.ToArray());
            Assert.Equal(_inverseStd, _cache.InverseStandardDeviation.ToArray());
            Assert.Equal(_cacheTraining, _cache.IsTraining);
        }
    }
}
