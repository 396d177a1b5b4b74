"""The empirical-NTK benchmark networks, in plain torch.nn, and their inputs.

Both networks use the standard parameterization of torch.nn (weights drawn with variance
W_std**2 / fan_in, biases with variance b_std**2), which neural-tangents reproduces with
``parameterization="standard"``; the peers load these exact weights (``save_weights``), so
that their kernels can be compared entry by entry.

- MLP: 784 -> 512 -> 512 -> 10, ReLU, on 16 standard-normal inputs of dimension 784.
- CNN: two 3x3 "same" convolutions of 64 channels, each followed by ReLU, global average
  pooling and Dense(10), on 16 standard-normal images 3x32x32 (NCHW; NHWC for JAX).
- ResNet-18: the CIFAR variant (3x3 stem, no max-pool; BatchNorm in eval mode), 64 images.
"""

import math

import numpy as np
import torch
from torch import nn

W_STD, B_STD = 1.5, 0.05
SEED = 0
N_EXAMPLES = {"mlp": 16, "cnn": 16, "resnet18": 64}


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, W_STD / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.0, B_STD)


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(classes: int = 10) -> nn.Module:
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, GlobalAvgPool(), nn.Linear(512, classes))


def build(name: str, dtype: str):
    """(model in eval mode, inputs) for the named benchmark, from a fixed seed."""
    torch.manual_seed(SEED)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        shape = (784,)
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            GlobalAvgPool(), nn.Linear(64, 10),
        )
        shape = (3, 32, 32)
    elif name == "resnet18":
        model, shape = resnet18(), (3, 32, 32)
    else:
        raise ValueError(name)
    _init(model)
    x = np.random.default_rng(SEED).standard_normal((N_EXAMPLES[name], *shape))
    torch_dtype = getattr(torch, dtype)
    return model.to(torch_dtype).eval(), torch.from_numpy(x).to(torch_dtype)


def save_weights(model: nn.Module, x: torch.Tensor, directory) -> None:
    """The parameters (torch layout, by name) and inputs, for the peers to load."""
    arrays = {name: p.detach().double().numpy() for name, p in model.named_parameters()}
    np.savez(directory / "weights.npz", **arrays)
    np.save(directory / "x.npy", x.double().numpy())
