#!/usr/bin/env python3
"""Makes the PyTorch fixtures of tests/BatchNorm.Tests/Fixtures (run once with a real PyTorch; CI does not run it).

    /usr/bin/python3 tools/make_torch_fixture.py [output directory]

Trains torch.nn.BatchNorm1d (momentum 0.2, and momentum=None), GroupNorm and LayerNorm for a few SGD steps in
float64 from a fixed seed, then writes, as safetensors (written here with struct and json, not with the library):

  torch_state.safetensors      their state_dicts under the prefixes bn., bn_cma., gn., ln. (F64), and in the metadata
                               each module's constructor call under "module:" + prefix
  torch_state_f32.safetensors  the same state_dicts in float32 (num_batches_tracked stays int64)
  torch_outputs.safetensors    a batch x (8 x 6) and an upstream gradient dy; for each prefix p, from the state above:
                               p + "eval.y" (eval mode), p + "train.y", "train.dx", "train.dweight", "train.dbias"
                               (one training-mode forward and backward), and for batch norm the running statistics
                               and num_batches_tracked after that step: p + "train.running_mean" and so on

and the same for inputs of shape (N, C, S) = (6, 4, 5), BatchNorm1d, GroupNorm and InstanceNorm1d (with affine and
running statistics) over channels and positions, under the prefixes bn., gn. and in.:

  torch_spatial_state.safetensors, torch_spatial_outputs.safetensors   (x and dy of shape [6, 4, 5]; flattened
                               row-major they are the N x (C*S) channel-major layout of issue 12)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_safetensors  # noqa: E402

FEATURES = 6


def modules():
    return {
        "bn.": torch.nn.BatchNorm1d(FEATURES, eps=1e-3, momentum=0.2),
        "bn_cma.": torch.nn.BatchNorm1d(FEATURES, eps=1e-5, momentum=None),
        "gn.": torch.nn.GroupNorm(3, FEATURES, eps=1e-4),
        "ln.": torch.nn.LayerNorm(FEATURES, eps=1e-5),
    }


def spatial_modules():
    return {
        "bn.": torch.nn.BatchNorm1d(4, eps=1e-5, momentum=0.1),
        "gn.": torch.nn.GroupNorm(2, 4, eps=1e-5),
        "in.": torch.nn.InstanceNorm1d(4, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True),
    }


def constructor_call(module):
    """The call that makes the module, as the metadata records it (and the library writes it)."""
    if isinstance(module, torch.nn.BatchNorm1d):
        return f"torch.nn.BatchNorm1d({module.num_features}, eps={module.eps!r}, momentum={module.momentum!r})"
    if isinstance(module, torch.nn.InstanceNorm1d):
        return (f"torch.nn.InstanceNorm1d({module.num_features}, eps={module.eps!r}, momentum={module.momentum!r}, "
                f"affine={module.affine!r}, track_running_stats={module.track_running_stats!r})")
    if isinstance(module, torch.nn.GroupNorm):
        return f"torch.nn.GroupNorm({module.num_groups}, {module.num_channels}, eps={module.eps!r})"
    (features,) = module.normalized_shape
    return f"torch.nn.LayerNorm({features}, eps={module.eps!r})"


def batch(generator, shape, offsets, scales):
    """Features (dimension 1) with their own mean and spread, so that every statistic is non-trivial."""
    view = [1, -1] + [1] * (len(shape) - 2)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x * torch.tensor(scales, dtype=torch.float64).view(view) + torch.tensor(offsets, dtype=torch.float64).view(view)


def train(module, generator, shape, offsets, scales, steps=5):
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.train()
    for _ in range(steps):
        x = batch(generator, shape, offsets, scales)
        target = torch.randn(shape, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        loss = ((module(x) - target) ** 2).mean()
        loss.backward()
        optimizer.step()


def make(directory, name, table, train_shape, test_shape, offsets, scales, seed, with_f32):
    generator = torch.Generator().manual_seed(seed)
    state, state32, metadata = {}, {}, {"format": "pt", "torch": torch.__version__, "generator": "tools/make_torch_fixture.py"}
    trained = {}
    for prefix, module in table.items():
        module.double()
        train(module, generator, train_shape, offsets, scales)
        trained[prefix] = module
        metadata["module:" + prefix] = constructor_call(module)
        for key, value in module.state_dict().items():
            state[prefix + key] = value.clone()
            state32[prefix + key] = value.float() if value.is_floating_point() else value.clone()

    x = batch(generator, test_shape, offsets, scales)
    dy = torch.randn(test_shape, generator=generator, dtype=torch.float64)
    outputs = {"x": x, "dy": dy}
    for prefix, module in trained.items():
        module.eval()
        with torch.no_grad():
            outputs[prefix + "eval.y"] = module(x)
        module.train()
        module.zero_grad()
        xg = x.clone().requires_grad_(True)
        y = module(xg)
        y.backward(dy)
        outputs[prefix + "train.y"] = y.detach()
        outputs[prefix + "train.dx"] = xg.grad
        outputs[prefix + "train.dweight"] = module.weight.grad
        outputs[prefix + "train.dbias"] = module.bias.grad
        if getattr(module, "running_mean", None) is not None:
            outputs[prefix + "train.running_mean"] = module.running_mean.clone()
            outputs[prefix + "train.running_var"] = module.running_var.clone()
            outputs[prefix + "train.num_batches_tracked"] = module.num_batches_tracked.clone()

    torch_safetensors.write(os.path.join(directory, name + "_state.safetensors"), state, metadata)
    if with_f32:
        torch_safetensors.write(os.path.join(directory, name + "_state_f32.safetensors"), state32, metadata)
    torch_safetensors.write(os.path.join(directory, name + "_outputs.safetensors"), outputs, metadata)


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "BatchNorm.Tests", "Fixtures")
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    make(directory, "torch", modules(), (16, FEATURES), (8, FEATURES),
         [0.0, 3.0, -2.0, 10.0, 0.5, 100.0], [1.0, 2.0, 0.5, 3.0, 0.1, 5.0], seed=12, with_f32=True)
    make(directory, "torch_spatial", spatial_modules(), (6, 4, 5), (6, 4, 5),
         [1.0, -3.0, 20.0, 0.0], [1.0, 0.5, 4.0, 2.0], seed=13, with_f32=False)
    for file in sorted(os.listdir(directory)):
        if file.startswith("torch"):
            print(f"{file}: {os.path.getsize(os.path.join(directory, file))} bytes")


if __name__ == "__main__":
    main()
