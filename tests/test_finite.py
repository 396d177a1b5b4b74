"""The finite face: ntkit networks are ordinary, trainable torch modules."""

from __future__ import annotations

import math

import pytest
import torch

import ntkit as nk


def _mlp(parameterization="ntk", b_std=0.1):
    return nk.serial(
        nk.Dense(64, W_std=1.5, b_std=b_std, parameterization=parameterization),
        nk.ReLU(),
        nk.Dense(3, W_std=1.5, b_std=b_std, parameterization=parameterization),
    )


def test_lazy_input_size_and_parameter_shapes():
    net = _mlp()
    out = net(torch.randn(7, 5))
    assert out.shape == (7, 3)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "layers.0.weight": (64, 5), "layers.0.bias": (64,), "layers.2.weight": (3, 64), "layers.2.bias": (3,)
    }


def test_no_bias_means_no_bias_parameter():
    net = _mlp(b_std=None)
    net(torch.randn(2, 4))
    assert [name for name, _ in net.named_parameters()] == ["layers.0.weight", "layers.2.weight"]


def test_explicit_in_features_needs_no_forward():
    layer = nk.Dense(8, in_features=3)
    assert layer.weight.shape == (8, 3)
    assert torch.optim.SGD(layer.parameters(), lr=0.1)  # materialised parameters


def test_parameters_follow_the_input_dtype():
    net = _mlp()
    out = net(torch.randn(2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64 and all(p.dtype == torch.float64 for p in net.parameters())


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_initialisation_matches_the_parameterization(parameterization):
    """Weights ~ N(0, 1) (ntk) or N(0, W_std^2 / fan_in) (standard); the output variance agrees.

    With 256 x 4096 weights the sample std has relative error ~ 1/sqrt(2 * 1e6) ~ 7e-4; 1% is
    over ten standard errors.
    """
    layer = nk.Dense(256, W_std=1.5, b_std=0.5, parameterization=parameterization, in_features=4096)
    expected = 1.0 if parameterization == "ntk" else 1.5 / math.sqrt(4096)
    assert abs(float(layer.weight.detach().std()) / expected - 1) < 0.01
    # Both parameterizations compute the same function distribution: Var z = W_std^2 |x|^2/d + b_std^2.
    x = torch.ones(1, 4096)
    z = layer(x).detach().flatten()
    assert abs(float(z.var()) / (1.5**2 + 0.5**2) - 1) < 0.3  # 256 samples: std error ~ 9%


def test_trainable_with_a_torch_optimizer():
    torch.manual_seed(0)
    net = _mlp()
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    net(x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_forward_of_combinators():
    torch.manual_seed(0)
    block = nk.serial(nk.ReLU(), nk.Dense(6))
    net = nk.serial(nk.Dense(6), nk.FanOut(3), nk.parallel(block, nk.Identity(), nk.Erf()), nk.FanInSum())
    x = torch.randn(4, 5)
    h = net[0](x)
    expected = block(h) + h + torch.erf(h)
    torch.testing.assert_close(net(x), expected)
    concat = nk.serial(nk.Dense(6), nk.FanOut(2), nk.parallel(nk.Dense(2), nk.Dense(3)), nk.FanInConcat())
    assert concat(x).shape == (4, 5)
    product = nk.serial(nk.Dense(6), nk.FanOut(2), nk.parallel(nk.Sin(), nk.Cos()), nk.FanInProd())
    h = product[0](x)
    torch.testing.assert_close(product(x), torch.sin(h) * torch.cos(h))


def test_dropout_train_and_eval():
    torch.manual_seed(0)
    drop = nk.Dropout(0.25)
    x = torch.ones(2000, 50)
    out = drop(x)
    kept = (out != 0).float().mean()
    assert abs(float(kept) - 0.75) < 0.01  # 1e5 Bernoulli(0.75): std error 1.4e-3
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.75))
    drop.eval()
    assert torch.equal(drop(x), x)
    # In eval mode the kernel map is the identity too.
    net = nk.serial(nk.Dense(8, b_std=0.1), drop)
    plain = nk.serial(nk.Dense(8, b_std=0.1))
    x = torch.randn(5, 3)
    assert torch.equal(net.kernel(x).nngp, plain.kernel(x).nngp)


def test_layer_norm_forward_normalises_each_example():
    x = torch.randn(4, 10, dtype=torch.float64) * 3 + 1
    out = nk.LayerNorm()(x)
    torch.testing.assert_close(out.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(4, dtype=torch.float64))
