#!/usr/bin/env python3
"""Loads a safetensors file written by the library (PyTorchState.ExportSafetensors) into PyTorch modules and checks
them against the library's own outputs (run once with a real PyTorch; CI does not run it):

    dotnet run tools/ExportForTorch.cs -- /tmp/torch-check
    /usr/bin/python3 tools/load_in_torch.py /tmp/torch-check

Each layer's module is built from the file's metadata ("module:" + prefix holds its constructor call, such as
torch.nn.BatchNorm1d(6, eps=0.001, momentum=0.2)), in float64, and its state_dict loaded with strict=True. Then, from
library_outputs.json, PyTorch's eval-mode output, one training step's output, input and parameter gradients and running
statistics must match the library's to 1e-12. To load your own file, only the first part is needed:

    tensors, metadata = torch_safetensors.read("model.safetensors")
    bn1 = torch.nn.BatchNorm1d(64, eps=1e-05, momentum=0.1).double()
    bn1.load_state_dict({k[len("bn1."):]: v for k, v in tensors.items() if k.startswith("bn1.")})
"""
import ast
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_safetensors  # noqa: E402

MODULES = {
    "torch.nn.BatchNorm1d": torch.nn.BatchNorm1d,
    "torch.nn.InstanceNorm1d": torch.nn.InstanceNorm1d,
    "torch.nn.GroupNorm": torch.nn.GroupNorm,
    "torch.nn.LayerNorm": torch.nn.LayerNorm,
}
TOLERANCE = 1e-12


def construct(call):
    """The module a constructor call names, built from literal arguments only (nothing in the file is evaluated)."""
    node = ast.parse(call, mode="eval").body
    name = ast.unparse(node.func)
    if not isinstance(node, ast.Call) or name not in MODULES:
        raise ValueError(f"not a module this script knows: {call}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return MODULES[name](*args, **kwargs).double()


def shaped(module, batch):
    """The N x D batch as the module takes it: (N, C, D/C) for a module over C channels of several positions (the
    library's rows are channel-major, which is what a row-major reshape gives), else as it is."""
    channels = getattr(module, "num_features", None) or getattr(module, "num_channels", None)
    if channels is None or channels == batch.shape[1] and not isinstance(module, torch.nn.InstanceNorm1d):
        return batch
    return batch.reshape(batch.shape[0], channels, batch.shape[1] // channels)


def compare(name, ours, theirs, report):
    ours = torch.tensor(ours, dtype=torch.float64).reshape(theirs.shape)
    scale = torch.clamp(theirs.abs(), min=1.0)
    worst = ((theirs - ours).abs() / scale).max().item()
    report.append((name, worst))
    if worst > TOLERANCE:
        raise AssertionError(f"{name}: PyTorch differs from the library by {worst:.3e}")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    tensors, metadata = torch_safetensors.read(os.path.join(directory, "library_state.safetensors"))
    with open(os.path.join(directory, "library_outputs.json")) as f:
        library = json.load(f)
    x = torch.tensor(library["x"], dtype=torch.float64)
    dy = torch.tensor(library["dy"], dtype=torch.float64)
    report = []
    for key, call in sorted(metadata.items()):
        if not key.startswith("module:"):
            continue
        prefix = key[len("module:"):]
        module = construct(call)
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
        print(f"{prefix:8} {call}: loaded {sorted(state)}")

        module.eval()
        with torch.no_grad():
            compare(prefix + "eval.y", library[prefix + "eval.y"], module(shaped(module, x)), report)
        module.train()
        xg = shaped(module, x).clone().requires_grad_(True)
        y = module(xg)
        y.backward(shaped(module, dy))
        compare(prefix + "train.y", library[prefix + "train.y"], y.detach(), report)
        compare(prefix + "train.dx", library[prefix + "train.dx"], xg.grad, report)
        if module.weight is not None:
            compare(prefix + "train.dweight", library[prefix + "train.dweight"], module.weight.grad, report)
            compare(prefix + "train.dbias", library[prefix + "train.dbias"], module.bias.grad, report)
        if getattr(module, "running_mean", None) is not None:
            compare(prefix + "train.running_mean", library[prefix + "train.running_mean"], module.running_mean, report)
            compare(prefix + "train.running_var", library[prefix + "train.running_var"], module.running_var, report)
            if module.num_batches_tracked.item() != library[prefix + "train.num_batches_tracked"]:
                raise AssertionError(f"{prefix}num_batches_tracked: PyTorch {module.num_batches_tracked.item()}, library {library[prefix + 'train.num_batches_tracked']}")

    for name, worst in report:
        print(f"  {name:28} largest difference {worst:.2e}")
    print(f"PyTorch {torch.__version__} loaded the library's file and matches its outputs to {TOLERANCE:g} ({len(report)} comparisons).")


if __name__ == "__main__":
    main()
