"""Small float64 models of every kind the empirical-kernel tests run on.

Each builder returns ``(model, example_shape)``; the models are tiny so that brute-force
Jacobians (one backward pass per output unit) stay fast.
"""

from __future__ import annotations

import torch
from torch import nn

import ntkit as nk


class ResidualBlock(nn.Module):
    """x + W2 relu(W1 x), with W1 applied twice (a module called more than once)."""

    def __init__(self, width):
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)

    def forward(self, x):
        h = torch.relu(self.inner(x))
        h = torch.tanh(self.inner(h))  # the same weights again: cross terms between calls
        return x + self.outer(h)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(5, 6)
        self.blocks = nn.Sequential(ResidualBlock(6), ResidualBlock(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.blocks(self.stem(x))))


class Custom(nn.Module):
    """A module with its own parameters, used outside any Linear, and a tied weight."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.shift = nn.Parameter(torch.linspace(-0.2, 0.3, 6))
        self.readout = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.sin(self.embed(x)) * self.scale + self.shift
        h = self.readout(h)
        # the embedding's weight read again, outside its module: tied weights
        return h + 0.3 * torch.tanh(nn.functional.linear(x, self.embed.weight[:3]))


class TiedInList(nn.Module):
    """A Linear whose bias is also read outside it, only inside a list argument (``torch.cat``):
    discovery must see that use, so the layer falls back to autodiff."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 3)
        self.readout = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.tanh(self.inner(x)) + 0.5 * torch.cat([self.inner.bias, self.inner.bias])[:3]
        return self.readout(h)


class ConvResidual(nn.Module):
    """A small residual CNN with BatchNorm (evaluated in eval mode: its buffers are used)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + self.conv(h)
        return self.head(h.mean(dim=(2, 3)))


def mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.ReLU(), nn.Linear(7, 3)), (5,)


def cnn():
    """Strides, asymmetric 'same' padding, circular and reflect padding, dilation, groups, pooling."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, (2, 3), padding="same", padding_mode="circular", groups=2), nn.Tanh(),
        nn.Conv2d(4, 3, 3, padding=2, dilation=2, padding_mode="reflect"), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 3),
    ), (2, 8, 8)


def wide_conv():
    """A convolution over few positions with many weights: its Jacobian is larger than its
    inputs and cotangents, so it is kept only when the budget allows (else Gram or explicit
    per block)."""
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(72, 3),
    ), (2, 5, 5)


def cnn_maxpool_1d():
    return nn.Sequential(
        nn.Conv1d(3, 4, 3, stride=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 2, 2), nn.Flatten(1), nn.Linear(4, 2),
    ), (3, 14)


def cnn_3d():
    return nn.Sequential(nn.Conv3d(1, 2, 2, stride=(1, 2, 1)), nn.ELU(), nn.Flatten(), nn.LazyLinear(2)), (1, 3, 4, 3)


def residual():
    return Residual(), (5,)


def layer_norm():
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 2)), (5,)


def tied_in_list():
    return TiedInList(), (4,)


def custom():
    return Custom(), (4,)


def conv_residual_batchnorm():
    model = ConvResidual()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval(), (2, 5, 5)


class Normalizations(nn.Module):
    """BatchNorm (eval) on vectors and sequences, GroupNorm, and LayerNorm over several axes,
    with non-trivial affine parameters and running statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.bn_sequence = nn.BatchNorm1d(4)
        self.group = nn.GroupNorm(2, 4)
        self.layer = nn.LayerNorm((4, 5))
        self.dense = nn.Linear(20, 6)
        self.bn_vector = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # x: (N, 2, 5)
        h = torch.tanh(self.bn_sequence(self.conv(x)))
        h = self.layer(torch.relu(self.group(h)))
        return self.head(torch.sin(self.bn_vector(self.dense(h.flatten(1)))))


def normalizations():
    model = Normalizations()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval(), (2, 5)


def ntkit_network():
    net = nk.serial(
        nk.Dense(6, W_std=1.5, b_std=0.1), nk.ReLU(), nk.Dense(6, W_std=1.2, b_std=0.05, parameterization="standard"),
        nk.Erf(), nk.LayerNorm(), nk.Dense(3, W_std=0.9),
    )
    return net, (5,)


def transformer():
    layer = nn.TransformerEncoderLayer(d_model=4, nhead=2, dim_feedforward=6, dropout=0.0, batch_first=True)
    return nn.Sequential(layer, nn.Linear(4, 2)).eval(), (3, 4)


class Embedding(nn.Module):
    """Integer inputs: token embeddings, averaged, then a readout."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.readout = nn.Linear(4, 2)

    def forward(self, tokens):
        return self.readout(torch.tanh(self.embed(tokens)).mean(dim=1))


class TimeMajor(nn.Module):
    """A Linear applied to (positions, batch, features): the example axis is not the leading
    one inside the model, so the batched structured path must not be used."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(3, 4)
        self.readout = nn.Linear(2 * 4, 2)

    def forward(self, x):  # x: (N, 2, 3)
        h = torch.tanh(self.mix(x.transpose(0, 1)))  # (2, N, 4)
        return self.readout(h.transpose(0, 1).flatten(1))


def time_major():
    return TimeMajor(), (2, 3)


def embedding():
    return Embedding(), (5,)


MODELS = {
    "mlp": mlp, "cnn": cnn, "wide_conv": wide_conv, "cnn_maxpool_1d": cnn_maxpool_1d, "cnn_3d": cnn_3d, "residual": residual,
    "layer_norm": layer_norm, "custom": custom, "tied_in_list": tied_in_list, "conv_residual_batchnorm": conv_residual_batchnorm,
    "normalizations": normalizations, "ntkit_network": ntkit_network, "transformer": transformer, "embedding": embedding,
    "time_major": time_major,
}


def build(name: str, seed: int = 0, dtype=torch.float64):
    """The named model in ``dtype``, materialized, with inputs x1 (4 examples) and x2 (3)."""
    torch.manual_seed(seed)
    model, shape = MODELS[name]()
    model = model.to(dtype)
    if name == "embedding":
        x1, x2 = torch.randint(0, 7, (4, *shape)), torch.randint(0, 7, (3, *shape))
    else:
        x1, x2 = torch.randn(4, *shape, dtype=dtype), torch.randn(3, *shape, dtype=dtype)
    with torch.no_grad():
        model(x1[:1])  # materialize lazy modules
    return model, x1, x2
