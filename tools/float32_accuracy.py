"""PyTorch's float32 BatchNorm1d against exact arithmetic on the hard cases of single precision.

Writes tests/BatchNorm.Tests/Fixtures/float32_hard_cases.csv (the float32 batches and their exact outputs, which
SinglePrecisionLayerTests reads to check the library's float layer) and prints PyTorch's normwise error in y,
max|y - y_exact| / max|y_exact| per case. Run with /usr/bin/python3 (Debian's python3-torch, PyTorch 1.13):

    /usr/bin/python3 tools/float32_accuracy.py
"""
import csv
import os
from decimal import Decimal, getcontext
from fractions import Fraction

import torch

getcontext().prec = 60
CASES = [("mean 1e4 spread 1e-2", 1e4, 1e-2), ("mean 100 spread 1", 100.0, 1.0)]
ROWS, FEATURES, EPS = 256, 4, 1e-5


def exact_outputs(column):
    """y = (x - mean) / sqrt(var + eps) of one column, from its float32 values taken exactly (gamma 1, beta 0)."""
    values = [Fraction(float(v)) for v in column]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    s = Decimal(var.numerator) / Decimal(var.denominator) + Decimal(EPS)
    inv = 1 / s.sqrt()
    return [float(Decimal((v - mean).numerator) / Decimal((v - mean).denominator) * inv) for v in values]


def main():
    torch.manual_seed(14)
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "tests", "BatchNorm.Tests", "Fixtures", "float32_hard_cases.csv")
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["case", "row", "feature", "x", "y_exact", "y_torch"])
        for name, mean, spread in CASES:
            x = (mean + spread * torch.randn(ROWS, FEATURES, dtype=torch.float64)).to(torch.float32)
            bn = torch.nn.BatchNorm1d(FEATURES, eps=EPS).float().train()
            with torch.no_grad():
                y = bn(x)
            exact = [exact_outputs(x[:, j].tolist()) for j in range(FEATURES)]
            worst = max(abs(float(y[i, j]) - exact[j][i]) for i in range(ROWS) for j in range(FEATURES))
            size = max(abs(exact[j][i]) for i in range(ROWS) for j in range(FEATURES))
            print(f"{name}: PyTorch {torch.__version__} float32 BatchNorm1d, normwise error in y {worst / size:.1e}")
            for i in range(ROWS):
                for j in range(FEATURES):
                    out.writerow([name, i, j, repr(float(x[i, j])), repr(exact[j][i]), repr(float(y[i, j]))])


if __name__ == "__main__":
    main()
